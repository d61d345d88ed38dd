"""Tiny Mistral 3 models (Pixtral vision tower + Mistral), written as Hub-like folders, built offline.

transformers' `PixtralProcessor` cannot be built without torchvision, so the folder is written by
`hi_core.model.pixtral_inputs.PixtralImageTextProcessor.save_pretrained`: the tokenizer,
`preprocessor_config.json` (`PixtralImageProcessorPil`), `processor_config.json` (patch size,
spatial merge, token strings; `processor_class` PixtralProcessor) and `chat_template.jinja`, the
layout of a Hub checkpoint.

Geometry of `build_mistral3`: 8-px patches merged 2 x 2, so one language-model token covers
16 x 16 px of the resized image; images are shrunk to fit a longest edge of 96 px, then each side
is rounded up to a multiple of 16 (at most 6 x 6 tokens). `build_tester_mistral3` takes its model
config from transformers' own model tester (6-px patches merged 2 x 2: 12-px tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hi_core.model.pixtral_inputs import PixtralImageTextProcessor

from .tiny_models import random_model, save_folder, tiny_text_config, tiny_vision_config, word_tokenizer

PATCH = 8
MERGE = 2
LONGEST_EDGE = 96
VISION_ATTENTION_SCALE = 0.2
SPECIAL = ["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"]

# Mistral's chat template, shortened (user turns of images and text).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}[IMG]"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}[/INST]{% endif %}{% endfor %}"
)

# tests/models/mistral3/test_modeling_mistral3.py (transformers), the model tester's config as it is,
# but for the image token id, which must be our tokenizer's.
TESTER_TEXT_CONFIG = {
    "model_type": "mistral", "vocab_size": 99, "attention_dropout": 0.0, "hidden_act": "silu",
    "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 37, "max_position_embeddings": 512,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000000.0, "sliding_window": None, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 4,
}
TESTER_VISION_CONFIG = {
    "model_type": "pixtral", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 37, "image_size": 30, "patch_size": 6, "num_channels": 3, "hidden_act": "gelu",
}
TESTER_SETTINGS = dict(bos_token_id=2, eos_token_id=3, pad_token_id=4, image_seq_length=4, vision_feature_layer=-1)


def _processor(patch: int, merge: int, longest_edge: int) -> PixtralImageTextProcessor:
    from transformers.models.pixtral.image_processing_pil_pixtral import (
        PixtralImageProcessorPil,
    )

    tokenizer = word_tokenizer(SPECIAL)
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest_edge}, patch_size={"height": patch, "width": patch}
    )
    return PixtralImageTextProcessor(
        image_processor, tokenizer, patch_size=patch, spatial_merge_size=merge, chat_template=CHAT_TEMPLATE
    )


def _write(folder: Path, model, processor) -> Path:
    # Random ViT attention mixes all patches about evenly at this scale, so a changed region would
    # move every token; damp its output so each token stays mostly its own patches (as in trained
    # towers) and the region check can tell cells apart. Token order is untouched.
    with torch.no_grad():
        for layer in model.model.vision_tower.transformer.layers:
            layer.attention.o_proj.weight.mul_(VISION_ATTENTION_SCALE)
    return save_folder(folder, model, processor)


def build_mistral3(folder: Path) -> Path:
    """Pixtral (1 layer, 2-D rope) over 8-px patches, 2 x 2 patch merger, a Mistral of hidden 64."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    processor = _processor(PATCH, MERGE, LONGEST_EDGE)
    tokenizer = processor.tokenizer
    config = Mistral3Config(
        vision_config=tiny_vision_config(LONGEST_EDGE, PATCH, model_type="pixtral"),
        text_config=tiny_text_config(len(tokenizer), model_type="mistral"),
        image_token_index=processor.image_token_id,
        spatial_merge_size=MERGE,
        vision_feature_layer=-1,
    )
    return _write(folder, random_model(Mistral3ForConditionalGeneration, config), processor)


def build_tester_mistral3(folder: Path) -> Path:
    """The model tester's config: Pixtral of 6-px patches (images up to 30 px), the default 2 x 2 merge,
    a Mistral of hidden 32 with 4 heads and 2 KV heads, vocabulary 99."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    processor = _processor(TESTER_VISION_CONFIG["patch_size"], 2, TESTER_VISION_CONFIG["image_size"])
    config = Mistral3Config(
        text_config=dict(TESTER_TEXT_CONFIG),
        vision_config=dict(TESTER_VISION_CONFIG),
        image_token_index=processor.image_token_id,
        **TESTER_SETTINGS,
    )
    return _write(folder, random_model(Mistral3ForConditionalGeneration, config, seed=1), processor)
