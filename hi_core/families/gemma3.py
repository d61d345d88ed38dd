"""Gemma 3: a fixed number of image tokens per image, a square grid made by average pooling.

- Prefix: the chat template; its `<start_of_image>` becomes `\\n\\n<start_of_image>` + n x
  `<image_soft_token>` + `<end_of_image>\\n\\n`, n = the processor's `image_seq_length`.
- Grid: the projector average-pools the SigLIP patch grid (image_size / patch_size per side) with a
  kernel of patches // int(sqrt(mm_tokens_per_image)), to a side x side grid read row-major, so
  soft token i is cell (i // side, i % side). A cell covers kernel x kernel patches.
- Geometry: the image processor squashes the image to its square size (no crop, no pad). Pan and
  scan (extra crops after the main view) is turned off for the scored sequence; the crops'
  tokens would follow the main view's, which stays the scored view either way.
- Attention: `token_type_ids` mark the soft tokens (1); the model's own mask lets an image's
  tokens attend to each other both ways (within a sliding window in sliding layers). Response
  tokens get 0, as text does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..base.errors import InputError
from .base import FamilyAdapter, ImageLayout, View, block_mean, chat_prompt, processed_mask, token_positions


def pooled_grid(model: Any) -> tuple[int, int, int]:
    """(side, kernel, patch): the projector's grid side, its pooling kernel in patches, the patch in pixels."""
    config = model.config
    patch = int(config.vision_config.patch_size)
    patches = int(config.vision_config.image_size) // patch
    side = int(config.mm_tokens_per_image**0.5)
    kernel = patches // side if side else 0
    return side, kernel, patch


class Gemma3Adapter(FamilyAdapter):
    name = "gemma3"
    model_types = ("gemma3",)

    def check_loaded(self, model: Any, processor: Any) -> None:
        """The processor's tokens per image must be the projector's pooled grid, and its image token the model's."""
        config = model.config
        side, kernel, _ = pooled_grid(model)
        patches = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        made = (patches // kernel) ** 2 if kernel else 0
        if side == 0 or made != side * side:
            raise InputError(
                f"Gemma 3 model: mm_tokens_per_image {config.mm_tokens_per_image} cannot pool its {patches}x{patches} "
                "patch grid to a square grid"
            )
        expected = int(getattr(processor, "image_seq_length", -1))
        if expected != made:
            raise InputError(
                f"Gemma 3 model: the processor expands each image to {expected} image tokens, but the projector makes "
                f"{made} ({side}x{side}: int(sqrt(mm_tokens_per_image={config.mm_tokens_per_image})) per side)"
            )
        token_id = getattr(processor.tokenizer, "image_token_id", None)
        if token_id != config.image_token_id:
            raise InputError(
                f"Gemma 3 model: the processor's image token has id {token_id}, the model's image_token_id is "
                f"{config.image_token_id}"
            )

    def prefix_inputs(self, processor: Any, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        inputs = processor(
            text=chat_prompt(processor, prompt), images=[image], return_tensors="pt", do_pan_and_scan=False
        )
        return {key: value for key, value in inputs.items() if key != "num_crops"}

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        side, _, _ = pooled_grid(model)
        positions = token_positions(inputs["input_ids"], model.config.image_token_id)
        if positions.size < side * side:
            raise InputError(
                f"expected {side * side} Gemma 3 image tokens (a {side}x{side} grid), found {positions.size}"
            )
        # The main view comes first (pan-and-scan crops, if any, follow it).
        views: tuple[View, ...] = (View("image", 0, side * side, (side, side)),)
        if positions.size > side * side:
            views += (View("crops", side * side, int(positions.size), None),)
        return ImageLayout.one_view(positions, views, "image", np.ones((side, side), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        side, kernel, patch = pooled_grid(model)
        view = processed_mask(processor, mask, do_pan_and_scan=False)[0].mean(axis=0)  # (S, S): the main view
        cell = kernel * patch
        # The pooling drops the last patches when the kernel does not divide the patch grid.
        return block_mean(view[: side * cell, : side * cell], cell, cell)
