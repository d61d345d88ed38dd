"""A tiny LLaVA-NeXT (CLIP vision tower + Llama), written as a Hub-like folder, built offline.

Geometry: views of 48 x 48 px, 8-px patches -> a 6 x 6 base view; tiles from the best of the
`image_grid_pinpoints` 48x96, 96x48, 96x96 (so 2 or 4 tiles), each unpadded, with newline tokens.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_models import llava_parts, random_model, save_folder

IMAGE_SIZE = 48
PATCH = 8


def build_llava_next(folder: Path, image_size: int = IMAGE_SIZE, patch_size: int = PATCH) -> Path:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    _, processor_settings, config_settings = llava_parts(image_size, patch_size)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(image_processor=image_processor, **processor_settings)
    config = LlavaNextConfig(**config_settings, image_grid_pinpoints=pinpoints)
    return save_folder(folder, random_model(LlavaNextForConditionalGeneration, config), processor)
