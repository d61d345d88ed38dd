"""Idefics3 and SmolVLM: image tiles plus a global view; HI scores the global view (`view`).

With image splitting on, the processor resizes the image (longest edge to `size`, then up to whole
tiles of `max_image_size` px), cuts it into rows x cols tiles, each written as
`<fake_token_around_image><row_r_col_c>` + s*s `<image>`, and ends with the global view,
`<fake_token_around_image><global-img>` + s*s `<image>` + `<fake_token_around_image>`: the whole
image resized to one tile. With splitting off, or an image that fits one tile, only the global view
is there. `pixel_values` are (1, frames, 3, S, S), the global view last.

Why the global view: it is the one view that covers the whole image on one grid whatever the
tiling, so maps and masks compare across images. Its s x s tokens are row-major: the connector's
pixel shuffle folds each scale x scale block of vision patches into one token, in row-major block
order (transformers 5 `Idefics3Connector.pixel_shuffle`). In transformers 5 the global view is the
image squashed to a square, never letterboxed, so every cell is image; `valid` still follows
`pixel_attention_mask` (real pixels) should a processor pad it. The mask goes through the same
image processor (same splitting) and its last frame is area-averaged onto the cells.

The language model is `model.model.text_model` (sub-config `text_config`). SmolVLM's processor
overrides `apply_chat_template` to read its video processor, absent without torchvision, so the
prompt is rendered by the generic `ProcessorMixin` code (the same text for image-only chats).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.processing_utils import ProcessorMixin

from ..errors import InputError
from .base import FamilyAdapter, ImageLayout, block_mean, processed_mask, token_positions


def tile_geometry(model: Any) -> tuple[int, int, int]:
    """(tile side in pixels, pixels per grid cell, grid cells per side) of the vision tower."""
    vision = model.config.vision_config
    tile, patch, scale = int(vision.image_size), int(vision.patch_size), int(model.config.scale_factor)
    if tile % (patch * scale):
        raise InputError(f"the vision tower's tile of {tile} px is not a multiple of its patch ({patch} px) x the "
                         f"pixel-shuffle scale_factor ({scale}): no grid of image tokens fits it")
    return tile, patch * scale, tile // (patch * scale)


def image_token_runs(input_ids: torch.Tensor, image_token_id: int, run_length: int) -> list[np.ndarray]:
    """The `<image>` positions split into their contiguous runs (one per tile or view), in order."""
    positions = token_positions(input_ids, image_token_id)
    runs = np.split(positions, np.nonzero(np.diff(positions) != 1)[0] + 1) if positions.size else []
    if not runs or any(run.size != run_length for run in runs):
        raise InputError(
            f"expected runs of {run_length} image tokens (one per tile, as the vision tower makes them), found runs of "
            f"{[int(run.size) for run in runs]}: the processor's image_seq_len does not match the model"
        )
    return runs


class Idefics3Adapter(FamilyAdapter):
    name = "idefics3"
    model_types = ("idefics3",)

    def prefix_inputs(self, processor: Any, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = ProcessorMixin.apply_chat_template(processor, messages, add_generation_prompt=True, tokenize=False)
        return dict(processor(text=text, images=[image], return_tensors="pt"))

    def check_loaded(self, model: Any, processor: Any) -> None:
        tile_geometry(model)

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, cell, side = tile_geometry(model)
        runs = image_token_runs(inputs["input_ids"], model.config.image_token_id, side * side)
        pixels = tuple(inputs["pixel_values"].shape)
        if pixels[0] != 1 or pixels[1] != len(runs):
            raise InputError(f"expected one run of image tokens per tile of one image (pixel_values {pixels}), "
                             f"found {len(runs)} runs")
        pixel_mask = inputs.get("pixel_attention_mask")
        if pixel_mask is None:
            valid = np.ones((side, side), dtype=bool)
        else:  # a cell is image if any of its pixels is real (padding is only ever added after them)
            valid = block_mean(pixel_mask[0, -1].float().numpy(), cell, cell) > 0
        return ImageLayout(positions=runs[-1].reshape(side, side), valid=valid, view="global view")

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        tile, cell, _ = tile_geometry(model)
        views = processed_mask(processor, mask)  # (1, frames, 3, tile, tile), global view last
        pixels = tuple(inputs["pixel_values"].shape)
        if views.shape[1] != pixels[1] or views.shape[-1] != tile:
            raise RuntimeError(f"the mask's frames {views.shape[1:]} differ from the image's {pixels[1:]}")
        return block_mean(views[0, -1].mean(axis=0), cell, cell)

    def decoder_layers(self, model: Any) -> torch.nn.ModuleList:
        # Explicit: get_decoder() only reaches the text model through a generic fallback chain.
        return model.model.text_model.layers


class SmolVLMAdapter(Idefics3Adapter):
    name = "smolvlm"
    model_types = ("smolvlm",)
