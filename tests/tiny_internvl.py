"""Tiny InternVL models, written as Hub-like folders, built offline.

Geometry: 48-px tiles, 4-px vision patches (12 x 12 per tile), pixel shuffle with downsample
ratio 0.5, so every tile and the thumbnail hold 6 x 6 = 36 `<IMG_CONTEXT>` tokens. The processor
crops to tiles (`crop_to_patches`, up to `MAX_TILES`): a 120x60 image (aspect 2) becomes 2 x 1
tiles of the image resized to 96x48, plus the thumbnail (the whole image squashed to 48x48), last;
a 72x60 image (aspect 1.2, nearest grid 1 x 1) is one tile, the image squashed to 48x48.

The processor owns a video processor that needs torchvision, so, as on the Hub, the folder holds
the tokenizer, the image processor (`GotOcr2ImageProcessorPil`), `chat_template.jinja` and
`processor_config.json` saved separately, and `hi_core.model.loading` assembles the processor.

`build_internvl_tester` uses the config of transformers' own InternVL model tester
(`InternVLVisionText2TextModelTester` in tests/models/internvl/test_modeling_internvl.py, values
copied, nobody here chose them): 64-px tiles of 4-px patches -> 8 x 8 = 64 tokens per tile, a
4-layer Qwen2 of hidden 128 with a 99-token vocabulary, `<IMG_CONTEXT>` = id 1, pad = bos = eos = 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from .tiny_models import (
    WORDS,
    random_model,
    save_folder,
    special_token_ids,
    tiny_text_config,
    tiny_vision_config,
    word_level_tokenizer,
    word_tokenizer,
)

TILE = 48  # pixels per tile side (vision image_size, processor size)
PATCH = 4
DOWNSAMPLE = 0.5  # pixel shuffle: 2 x 2 vision patches per language-model token
TOKENS_PER_SIDE = int(TILE // PATCH * DOWNSAMPLE)  # 6
IMAGE_SEQ_LENGTH = TOKENS_PER_SIDE**2
MAX_TILES = 6

IMAGE_TOKENS = {
    "context_image_token": "<IMG_CONTEXT>",
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "video_token": "<video>",
}
SPECIAL = list(IMAGE_TOKENS.values()) + ["<|im_start|>", "<|im_end|>"]

# The Qwen2-style chat template of InternVL checkpoints (image placeholder `<IMG_CONTEXT>`).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# transformers' InternVL model tester, verbatim (its `get_config` arguments).
TESTER_TEXT_CONFIG = {
    "model_type": "qwen2",
    "vocab_size": 99,
    "hidden_size": 128,
    "intermediate_size": 37,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "output_channels": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rope_theta": 10000,
    "mlp_ratio": 4,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}
TESTER_VISION_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "image_size": 64,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "use_absolute_position_embeddings": True,
}
TESTER_CONFIG = dict(
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    image_token_id=1,
    image_seq_length=64,
    vision_feature_layer=-1,
)
TESTER_TILE = 64
TESTER_TOKENS_PER_SIDE = 8


def _save(folder: Path, model, tokenizer, image_processor, image_seq_length: int) -> Path:
    """Model, tokenizer, image processor and processor settings in a Hub checkpoint's layout."""
    settings = json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": image_seq_length}) + "\n"
    return save_folder(folder, model, tokenizer, image_processor,
                       files={"chat_template.jinja": CHAT_TEMPLATE, "processor_config.json": settings})


def _weak_vision_attention(model) -> None:
    """Keep the vision tower's attention weak next to its residual stream, so each language-model
    image token depends mostly on its own pixels (the region oracle needs that locality)."""
    with torch.no_grad():
        for layer in model.model.vision_tower.encoder.layer:
            layer.attention.projection_layer.weight.mul_(0.02)


def _image_processor(tile: int):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile}, crop_to_patches=False, min_patches=1, max_patches=MAX_TILES
    )


def build_internvl(folder: Path) -> Path:
    """InternVL: InternViT-style vision tower, pixel-shuffle projector, Qwen2 text model."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    tokenizer = word_tokenizer(SPECIAL, extra_special=IMAGE_TOKENS)
    config = InternVLConfig(
        vision_config=tiny_vision_config(TILE, PATCH),
        text_config=tiny_text_config(len(tokenizer), model_type="qwen2", **special_token_ids(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = random_model(InternVLForConditionalGeneration, config)
    _weak_vision_attention(model)
    return _save(folder, model, tokenizer, _image_processor(TILE), IMAGE_SEQ_LENGTH)


def tester_tokenizer() -> PreTrainedTokenizerFast:
    """A word tokenizer inside the tester's 99-token vocabulary with `<IMG_CONTEXT>` at its id 1
    and `<pad>` at 0 (the tester's pad, bos and eos)."""
    words = [w for w in WORDS if w.strip()]
    tokens = ["<pad>", "<IMG_CONTEXT>", "<unk>", "<s>", "</s>"] + SPECIAL[1:] + words
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    if len(vocab) > TESTER_TEXT_CONFIG["vocab_size"]:
        raise RuntimeError(f"{len(vocab)} tokens do not fit the tester's vocabulary")
    return word_level_tokenizer(vocab, SPECIAL, IMAGE_TOKENS)


def build_internvl_tester(folder: Path) -> Path:
    """InternVL with the config of transformers' own model tester (settings nobody here chose)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    tokenizer = tester_tokenizer()
    config = InternVLConfig(text_config=dict(TESTER_TEXT_CONFIG), vision_config=dict(TESTER_VISION_CONFIG), **TESTER_CONFIG)
    model = random_model(InternVLForConditionalGeneration, config, seed=1)
    _weak_vision_attention(model)
    return _save(folder, model, tokenizer, _image_processor(TESTER_TILE), TESTER_CONFIG["image_seq_length"])
