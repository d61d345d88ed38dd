"""Tiny LLaVA-OneVision models (SigLIP vision tower + Qwen2), written as Hub-like folders, built offline.

The processor owns a video processor, which needs torchvision (absent), so the folder gets what a
Hub checkpoint has: the tokenizer, the image processor (`LlavaOnevisionImageProcessorPil`),
`processor_config.json` (the processor's own settings) and `chat_template.jinja`; `hi_core.model.loading`
assembles the processor without its video processor.

Geometry of `build_llava_onevision`: views of 48 x 48 px, 8-px patches, no CLS token (SigLIP,
`vision_feature_select_strategy="full"`) -> a 6 x 6 base view; tiles from the best of the
`image_grid_pinpoints` 48x96, 96x48, 96x96, unpadded, one newline token per row.
`build_tester_llava_onevision` takes its model config from transformers' own model tester.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tiny_models import CHAT_TEMPLATE, random_model, save_folder, tiny_siglip_vision_config, tiny_text_config, word_tokenizer

IMAGE_SIZE = 48
PATCH = 8

# tests/models/llava_onevision/test_modeling_llava_onevision.py (transformers), the model tester's
# config as it is, but for the image token id, which must be our tokenizer's.
TESTER_TEXT_CONFIG = {
    "model_type": "qwen2", "seq_length": 7, "is_training": True, "use_input_mask": True,
    "use_token_type_ids": False, "use_labels": True, "vocab_size": 99, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 37,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 580, "type_vocab_size": 16, "type_sequence_label_size": 2,
    "initializer_range": 0.02, "num_labels": 3, "num_choices": 4, "pad_token_id": 0,
}
TESTER_VISION_CONFIG = {
    "image_size": 16, "patch_size": 8, "num_channels": 3, "is_training": True, "hidden_size": 32,
    "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
    "dropout": 0.1, "attention_dropout": 0.1, "initializer_range": 0.02,
}
TESTER_SETTINGS = dict(
    projector_hidden_act="gelu",
    vision_feature_select_strategy="full",
    vision_feature_layer=-1,
    image_grid_pinpoints=[[16, 16]],
)


def _tokenizer():
    return word_tokenizer(["<image>", "<video>"], extra_special={"image_token": "<image>", "video_token": "<video>"})


def _write(folder: Path, model, tokenizer, image_processor, num_image_tokens: int, strategy: str) -> Path:
    settings = {
        "processor_class": "LlavaOnevisionProcessor",
        "image_token": "<image>",
        "video_token": "<video>",
        "num_image_tokens": num_image_tokens,
        "vision_feature_select_strategy": strategy,
        "vision_aspect_ratio": model.config.vision_aspect_ratio,
    }
    return save_folder(folder, model, tokenizer, image_processor,
                       files={"processor_config.json": json.dumps(settings, indent=2), "chat_template.jinja": CHAT_TEMPLATE})


def _image_processor(side: int, pinpoints: list[list[int]]):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    return LlavaOnevisionImageProcessorPil(size={"height": side, "width": side}, image_grid_pinpoints=pinpoints)


def build_llava_onevision(folder: Path, image_size: int = IMAGE_SIZE, patch_size: int = PATCH) -> Path:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )

    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    tokenizer = _tokenizer()
    config = LlavaOnevisionConfig(
        vision_config=tiny_siglip_vision_config(image_size, patch_size),
        text_config=tiny_text_config(len(tokenizer), model_type="qwen2"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    model = random_model(LlavaOnevisionForConditionalGeneration, config)
    side = image_size // patch_size
    return _write(folder, model, tokenizer, _image_processor(image_size, pinpoints), side * side, "full")


def build_tester_llava_onevision(folder: Path) -> Path:
    """The model tester's config: SigLIP 16-px views of 8-px patches (a 2 x 2 base view), one 16x16
    pinpoint (one tile), a Qwen2 of hidden 32 with 4 heads and 4 KV heads, vocabulary 99."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )

    tokenizer = _tokenizer()
    config = LlavaOnevisionConfig(
        text_config=dict(TESTER_TEXT_CONFIG),
        vision_config=dict(TESTER_VISION_CONFIG),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        **TESTER_SETTINGS,
    )
    model = random_model(LlavaOnevisionForConditionalGeneration, config, seed=1)
    side = TESTER_VISION_CONFIG["image_size"] // TESTER_VISION_CONFIG["patch_size"]
    image_processor = _image_processor(TESTER_VISION_CONFIG["image_size"], TESTER_SETTINGS["image_grid_pinpoints"])
    return _write(folder, model, tokenizer, image_processor, side * side, "full")
