"""Tiny Qwen2-VL and Qwen2.5-VL models, written as Hub-like folders, built offline.

The processor owns a video processor, which cannot be built without torchvision, so its
`save_pretrained` fails here: the folder gets the tokenizer, the image processor
(`Qwen2VLImageProcessorPil`) and `chat_template.jinja` saved separately, the layout of a Hub
checkpoint, and `hi_core.model.loading` has to assemble the processor itself.

Geometry: 8-px patches merged 2x2, so one language-model image token covers 16x16 px; images are
smart-resized to multiples of 16 with 64*64 <= pixels <= 128*128, i.e. 4 to 8 tokens per side.

`build_qwen2_vl_tester` writes the exact config of transformers' own Qwen2-VL model tester
(settings nobody here chose: 14-px patches, merge 1, 99-token vocabulary, `vision_end_token_id`
left at its default 151653, outside that vocabulary), with a tokenizer numbering the tester's
special tokens as the tester does (`<|vision_end|>` then gets id 6, not the config's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from .tiny_models import WORDS, _randomize, save_folder, special_token_ids, tiny_text_config, word_level_tokenizer, word_tokenizer

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


def numbered_tokenizer(tokens_in_id_order: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids 0, 1, ... are `tokens_in_id_order` (the special tokens
    numbered as a tester config numbers them), then the words; `<s>`, `</s>`, `<pad>`, `<unk>`
    and Qwen's special tokens must be among the listed tokens."""
    words = [w for w in WORDS if w.strip() and w not in tokens_in_id_order] + ["\n"]
    vocab = {token: i for i, token in enumerate(list(tokens_in_id_order) + words)}
    tokenizer = word_level_tokenizer(vocab, QWEN_SPECIAL, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    if [tokenizer.convert_tokens_to_ids(token) for token in tokens_in_id_order] != list(range(len(tokens_in_id_order))):
        raise RuntimeError("the tokenizer did not keep the given ids")
    return tokenizer


def _image_processor(patch: int = PATCH, merge: int = MERGE, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=merge, temporal_patch_size=2
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
        **special_token_ids(tokenizer),
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
    return save_folder(folder, model, tokenizer, image_processor, files={"chat_template.jinja": CHAT_TEMPLATE})


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


# transformers' Qwen2-VL model tester (tests/models/qwen2_vl/test_modeling_qwen2_vl.py), its
# `get_config()` arguments verbatim: flat text settings, legacy `rope_scaling`, 4 text layers.
QWEN2_VL_TESTER = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=512,
    vision_config={
        "depth": 2,
        "embed_dim": 32,
        "hidden_act": "quick_gelu",
        "hidden_size": 32,
        "mlp_ratio": 4,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 1,
        "temporal_patch_size": 2,
    },
    model_type="qwen2_vl",
    max_window_layers=3,
    rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    vision_start_token_id=3,
    image_token_id=4,
    video_token_id=5,
    vocab_size=99,
)
TESTER_PATCH = 14
TESTER_MIN_PIXELS = 56 * 56
TESTER_MAX_PIXELS = 112 * 112


def build_qwen2_vl_tester(folder: Path, image_token_matches: bool = True) -> Path:
    """The exact config of transformers' Qwen2-VL tester, with a tokenizer that numbers `<s>`,
    `</s>`, `<pad>`, `<|vision_start|>`, `<|image_pad|>`, `<|video_pad|>` 0..5 as the config does
    and `<|vision_end|>` 6 (the config's `vision_end_token_id` stays 151653). With
    `image_token_matches=False` the tokenizer's `<|image_pad|>` and `<|vision_end|>` swap ids, so
    the processor's image token is not the config's `image_token_id` (4): a model to refuse.
    The image processor (not part of the tester) cuts 14-px patches, merge 1: one token = 14x14 px.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    image_pad, vision_end = ("<|image_pad|>", "<|vision_end|>") if image_token_matches else ("<|vision_end|>", "<|image_pad|>")
    tokenizer = numbered_tokenizer(
        ["<s>", "</s>", "<pad>", "<|vision_start|>", image_pad, "<|video_pad|>", vision_end, "<|im_start|>", "<|im_end|>", "<unk>"]
    )
    config = Qwen2VLConfig(**QWEN2_VL_TESTER)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = _image_processor(TESTER_PATCH, 1, TESTER_MIN_PIXELS, TESTER_MAX_PIXELS)
    return _write(folder, model, tokenizer, image_processor)
