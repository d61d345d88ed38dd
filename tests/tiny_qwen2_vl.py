"""Tiny Qwen2-VL and Qwen2.5-VL models, written as Hub-like folders, built offline.

The processor owns a video processor, which cannot be built without torchvision, so its
`save_pretrained` fails here: the folder gets the tokenizer, the image processor
(`Qwen2VLImageProcessorPil`) and `chat_template.jinja` saved separately, the layout of a Hub
checkpoint, and `hi_core.loading` has to assemble the processor itself.

Geometry: 8-px patches merged 2x2, so one language-model image token covers 16x16 px; images are
smart-resized to multiples of 16 with 64*64 <= pixels <= 128*128, i.e. 4 to 8 tokens per side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import _randomize, tiny_text_config, word_tokenizer

PATCH = 8
MERGE = 2
MIN_PIXELS = 64 * 64
MAX_PIXELS = 128 * 128
VISION_ATTENTION_SCALE = 0.2

QWEN_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen's chat template, shortened (no system turn, images and text only).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer():
    return word_tokenizer(
        QWEN_SPECIAL, extra_special={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    )


def _image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )


def _token_ids(tokenizer) -> dict:
    """The config's special-token ids, taken from the tokenizer."""
    tokens = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


def _text_config(tokenizer, model_type: str) -> dict:
    # head_dim 16: mrope_section (temporal, height, width) must sum to head_dim / 2 = 8.
    return tiny_text_config(
        len(tokenizer),
        model_type=model_type,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _write(folder: Path, model, tokenizer, image_processor) -> Path:
    torch.manual_seed(0)
    _randomize(model, seed=0)
    # Random ViT attention at this scale mixes all patches about evenly, so a changed region would
    # move every token; damp its output so each token stays mostly its own patches (as in trained
    # towers) and the region check can tell cells apart. Token order is untouched.
    with torch.no_grad():
        for block in model.model.visual.blocks:
            block.attn.proj.weight.mul_(VISION_ATTENTION_SCALE)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (Path(folder) / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return Path(folder)


def build_qwen2_vl(folder: Path) -> Path:
    """Qwen2-VL: ViT over 8-px patches (2-D rope), 2x2 patch merger, Qwen2 text model with M-RoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen2VLConfig(
        vision_config=dict(
            model_type="qwen2_vl_vision",
            depth=2,
            embed_dim=32,
            hidden_size=64,  # the merger's output = the language model's hidden size
            num_heads=2,
            mlp_ratio=2,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
        ),
        text_config=_text_config(tokenizer, "qwen2_vl_text"),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen2VLForConditionalGeneration(config), tokenizer, _image_processor())


def build_qwen2_5_vl(folder: Path) -> Path:
    """Qwen2.5-VL: as Qwen2-VL, plus windowed attention in the vision tower (layer 0 windowed,
    2x2-token windows, so the tower's window reordering is exercised on every image)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            model_type="qwen2_5_vl_vision",
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            window_size=2 * PATCH * MERGE,
            fullatt_block_indexes=[1],
        ),
        text_config=_text_config(tokenizer, "qwen2_5_vl_text"),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(0)
    return _write(folder, Qwen2_5_VLForConditionalGeneration(config), tokenizer, _image_processor())
