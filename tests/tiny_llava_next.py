"""A tiny LLaVA-NeXT (CLIP vision tower + Llama), written as a Hub-like folder, built offline.

Geometry: views of 48 x 48 px, 8-px patches -> a 6 x 6 base view; tiles from the best of the
`image_grid_pinpoints` 48x96, 96x48, 96x96 (so 2 or 4 tiles), each unpadded, with newline tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import CHAT_TEMPLATE, _randomize, tiny_clip_vision_config, tiny_text_config, word_tokenizer

IMAGE_SIZE = 48
PATCH = 8


def build_llava_next(folder: Path, image_size: int = IMAGE_SIZE, patch_size: int = PATCH) -> Path:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=tiny_clip_vision_config(image_size, patch_size),
        text_config=tiny_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    _randomize(model, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
