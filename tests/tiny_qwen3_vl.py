"""Tiny Qwen3-VL models (dense, MoE, and transformers' own tester config), Hub-like folders, offline.

As for Qwen2-VL (tests/tiny_qwen2_vl.py), the processor owns a video processor that needs
torchvision, so the folder gets the tokenizer, the image processor (`Qwen2VLImageProcessorPil`,
which Qwen3-VL uses) and `chat_template.jinja` saved separately, and `hi_core.model.loading` assembles
a `Qwen3VLProcessor` without the video processor.

Geometry, the same for all three: one language-model image token covers 16x16 px, images are
smart-resized to multiples of 16 with 64*64 <= pixels <= 128*128.
- `build_qwen3_vl` / `build_qwen3_vl_moe`: 8-px patches merged 2x2 (as released models merge),
  DeepStack from vision layer 0, interleaved M-RoPE;
- `build_qwen3_vl_tester`: the exact config of transformers' Qwen3-VL model tester (16-px patches,
  merge 1, a 4x4 learned position grid, DeepStack from both vision layers, a 99-token vocabulary
  with the image token at id 3), with a tokenizer numbering the special tokens as the tester does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_qwen2_vl import _image_processor, _text_config, _token_ids, _tokenizer, _write, numbered_tokenizer

PATCH = 8
MERGE = 2


def qwen3_vision_config(model_type: str, **overrides) -> dict:
    """The tiny Qwen3-VL vision tower (also Qwen3.5's, which has no DeepStack: `deepstack_visual_indexes=None`
    drops the key)."""
    config = dict(
        model_type=model_type,
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=64,  # the merger's output = the language model's hidden size
        num_heads=2,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def qwen3_text_config(tokenizer, model_type: str, **overrides) -> dict:
    """The tiny Qwen2-VL text config with head_dim 16 and interleaved M-RoPE (Qwen3-VL, Qwen3.5)."""
    config = _text_config(tokenizer, model_type)
    config["head_dim"] = 16
    config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    config.update(overrides)
    return config


def build_qwen3_vl(folder: Path) -> Path:
    """Qwen3-VL: ViT over 8-px patches (learned + 2-D rope positions), 2x2 merger, DeepStack, Qwen3 text."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3VLConfig(
        vision_config=qwen3_vision_config("qwen3_vl_vision"),
        text_config=qwen3_text_config(tokenizer, "qwen3_vl_text"),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen3VLForConditionalGeneration(config), tokenizer, _image_processor(PATCH, MERGE))


def build_qwen3_vl_moe(folder: Path) -> Path:
    """Qwen3-VL-MoE: as `build_qwen3_vl`, with a mixture-of-experts MLP (4 experts, top 2) in every text layer."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3VLMoeConfig(
        vision_config=qwen3_vision_config("qwen3_vl_moe_vision"),
        text_config=qwen3_text_config(
            tokenizer, "qwen3_vl_moe_text", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
        ),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen3VLMoeForConditionalGeneration(config), tokenizer, _image_processor(PATCH, MERGE))


# transformers' Qwen3-VL model tester (tests/models/qwen3_vl/test_modeling_qwen3_vl.py), its
# `text_config`, `vision_config` and token ids verbatim.
QWEN3_VL_TESTER = dict(
    text_config={
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "head_dim": 8,
        "hidden_size": 32,
        "vocab_size": 99,
        "intermediate_size": 37,
        "max_position_embeddings": 512,
        "model_type": "qwen3_vl",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rope_theta": 10000,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 8, 8], "mrope_interleaved": True},
    },
    vision_config={
        "depth": 2,
        "in_chans": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": 32,
        "out_hidden_size": 32,
        "hidden_size": 32,
        "num_heads": 4,
        "patch_size": 16,
        "spatial_merge_size": 1,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0, 1],
    },
    image_token_id=3,
    video_token_id=4,
    vision_start_token_id=5,
    vision_end_token_id=6,
    tie_word_embeddings=True,
)


# A tokenizer numbering the special tokens as the Qwen3-VL and Qwen3.5 testers' token ids do
# (bos 0, eos 1, pad 2, image 3, video 4, vision start 5, vision end 6).
TESTER_TOKENS = ["<s>", "</s>", "<pad>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def build_qwen3_vl_tester(folder: Path) -> Path:
    """The exact config of transformers' Qwen3-VL tester; its image processor (not part of the
    tester) cuts 16-px patches, merge 1: one token = 16x16 px, as in the other two builders."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = numbered_tokenizer(TESTER_TOKENS)
    config = Qwen3VLConfig(**QWEN3_VL_TESTER)
    torch.manual_seed(0)
    return _write(folder, Qwen3VLForConditionalGeneration(config), tokenizer, _image_processor(16, 1))
