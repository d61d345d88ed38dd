"""Tiny Qwen3.5 models (dense and MoE): a hybrid language model, Hub-like folders, offline.

Qwen3.5's text decoder mixes Gated DeltaNet layers (linear attention, `layer.linear_attn`) with
softmax-attention layers (`layer.self_attn`), as `text_config.layer_types` says; its image layout
is Qwen3-VL's (`<|image_pad|>` tokens, grid `image_grid_thw[1:] // merge`). The folder is written
as for Qwen2-VL / Qwen3-VL (tests/tiny_qwen2_vl.py: tokenizer, `Qwen2VLImageProcessorPil` and the
chat template saved apart; no torchvision), with the same geometry: 8-px patches merged 2x2, one
image token per 16x16 px, images smart-resized to multiples of 16 within 64*64..128*128 pixels.

`LAYER_TYPES`: 4 text layers, linear / full / linear / full, so layers 1 and 3 are scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_qwen2_vl import _image_processor, _text_config, _token_ids, _tokenizer, _write

PATCH = 8
MERGE = 2
LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
FULL_ATTENTION_LAYERS = (1, 3)


def _vision_config(model_type: str) -> dict:
    return dict(
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
    )


def _hybrid_text_config(tokenizer, model_type: str, **overrides) -> dict:
    config = _text_config(tokenizer, model_type)
    config.update(
        num_hidden_layers=len(LAYER_TYPES),
        layer_types=list(LAYER_TYPES),
        head_dim=16,
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
    )
    config.update(overrides)
    return config


def build_qwen3_5(folder: Path) -> Path:
    """Qwen3.5: Qwen3-VL-style vision tower (8-px patches, 2x2 merger), hybrid text model."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3_5Config(
        vision_config=_vision_config("qwen3_5_vision"),
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
        vision_config=_vision_config("qwen3_5_moe_vision"),
        text_config=_hybrid_text_config(
            tokenizer, "qwen3_5_moe_text", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen3_5MoeForConditionalGeneration(config), tokenizer, _image_processor(PATCH, MERGE))
