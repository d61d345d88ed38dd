"""Tiny Qwen3.5 models (dense and MoE): a hybrid language model, Hub-like folders, offline.

Qwen3.5's text decoder mixes Gated DeltaNet layers (linear attention, `layer.linear_attn`) with
softmax-attention layers (`layer.self_attn`), as `text_config.layer_types` says; its image layout
is Qwen3-VL's (`<|image_pad|>` tokens, grid `image_grid_thw[1:] // merge`). The folder is written
as for Qwen2-VL / Qwen3-VL (tests/tiny_qwen2_vl.py: tokenizer, `Qwen2VLImageProcessorPil` and the
chat template saved apart; no torchvision), with the same geometry: 8-px patches merged 2x2, one
image token per 16x16 px, images smart-resized to multiples of 16 within 64*64..128*128 pixels.

`LAYER_TYPES`: 4 text layers, linear / full / linear / full, so layers 1 and 3 are scored.

`build_qwen3_5_tester` writes the exact config of transformers' own Qwen3.5 model tester (settings
nobody here chose: 2 text layers, full then linear attention, so only layer 0 is scored; head_dim 32
with a partial rotary factor of 0.25; 16-px patches, merge 1; a 99-token vocabulary with the image
token at id 3), with a tokenizer numbering the special tokens as the tester does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_qwen2_vl import _image_processor, _token_ids, _tokenizer, _write, numbered_tokenizer
from .tiny_qwen3_vl import TESTER_TOKENS, qwen3_text_config, qwen3_vision_config

PATCH = 8
MERGE = 2
LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
FULL_ATTENTION_LAYERS = (1, 3)


def _hybrid_text_config(tokenizer, model_type: str, **overrides) -> dict:
    """Qwen3-VL's tiny text config with the layers mixed and Gated DeltaNet's settings."""
    return qwen3_text_config(
        tokenizer,
        model_type,
        num_hidden_layers=len(LAYER_TYPES),
        layer_types=list(LAYER_TYPES),
        # Gated DeltaNet: 2 key heads, 4 value heads of 16 dims, a 4-tap causal convolution
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],  # partial rotary factor 1: sums to head_dim / 2
            "mrope_interleaved": True,
            "partial_rotary_factor": 1.0,
        },
        **overrides,
    )


def build_qwen3_5(folder: Path) -> Path:
    """Qwen3.5: Qwen3-VL-style vision tower (8-px patches, 2x2 merger), hybrid text model."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3_5Config(
        vision_config=qwen3_vision_config("qwen3_5_vision", deepstack_visual_indexes=None),
        text_config=_hybrid_text_config(tokenizer, "qwen3_5_text"),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen3_5ForConditionalGeneration(config), tokenizer, _image_processor(PATCH, MERGE))


def build_qwen3_5_moe(folder: Path) -> Path:
    """Qwen3.5-MoE: as `build_qwen3_5`, with a mixture-of-experts MLP (4 experts, top 2) in every text layer."""
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3_5MoeConfig(
        vision_config=qwen3_vision_config("qwen3_5_moe_vision", deepstack_visual_indexes=None),
        text_config=_hybrid_text_config(
            tokenizer, "qwen3_5_moe_text", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen3_5MoeForConditionalGeneration(config), tokenizer, _image_processor(PATCH, MERGE))


# transformers' Qwen3.5 model tester (`Qwen3_5VisionText2TextModelTester` in
# tests/models/qwen3_5/test_modeling_qwen3_5.py, huggingface/transformers), its `text_config`,
# `vision_config` and token ids verbatim.
QWEN3_5_TESTER = dict(
    text_config={
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "head_dim": 32,
        "hidden_size": 32,
        "vocab_size": 99,
        "intermediate_size": 37,
        "max_position_embeddings": 512,
        "model_type": "qwen3_5_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "layer_types": ["full_attention", "linear_attention"],
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        "linear_conv_kernel_dim": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_key_heads": 4,
        "linear_num_value_heads": 8,
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
    },
    image_token_id=3,
    video_token_id=4,
    vision_start_token_id=5,
    vision_end_token_id=6,
    tie_word_embeddings=True,
)
TESTER_FULL_ATTENTION_LAYERS = (0,)


def build_qwen3_5_tester(folder: Path) -> Path:
    """The exact config of transformers' Qwen3.5 tester; its image processor (not part of the tester)
    cuts 16-px patches, merge 1: one token = 16x16 px, as in the other builders."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    config = Qwen3_5Config(**QWEN3_5_TESTER)
    torch.manual_seed(0)
    return _write(folder, Qwen3_5ForConditionalGeneration(config), numbered_tokenizer(TESTER_TOKENS), _image_processor(16, 1))
