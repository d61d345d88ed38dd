"""LLaVA-NeXT: a base view, then high-resolution tiles with image_newline tokens; the base view is scored.

The processor turns an image into `pixel_values` (1, 1 + tiles, 3, S, S): element 0 is the base
view, the whole image resized to S x S ignoring its aspect ratio (then the CLIP center crop, a
no-op when crop size = S); the rest are tiles of the image resized and padded to the best
`image_grid_pinpoints` resolution. `LlavaNextModel.pack_image_features` puts the base view's
features first, (image_size / patch_size)^2 of them row-major with no newline token, then the
unpadded tiles with one `image_newline` per row, all at `<image>` positions. So the base view is
the first (image_size / patch_size)^2 image tokens, a fixed square grid like LLaVA 1.5's.

Only the base view is scored (`ImageLayout.view = "base view"`): it sees the whole image on one
grid, the same for every image size; the tiles' grid changes with the image and is cut by
unpadding. The mask goes through the processor and its base view (element 0) is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .base import FamilyAdapter, ImageLayout, View, block_mean, processed_mask, token_positions
from .llava import patch_grid_side


class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, side = patch_grid_side(model)
        positions = token_positions(inputs["input_ids"], model.config.image_token_id)
        if positions.size <= side * side:
            raise InputError(
                f"expected a {side}x{side} base view followed by tiles, found only {positions.size} image tokens"
            )
        views = (View("base view", 0, side * side, (side, side)), View("tiles", side * side, int(positions.size), None))
        return ImageLayout.one_view(positions, views, "base view", np.ones((side, side), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        patch, _ = patch_grid_side(model)
        base_view = processed_mask(processor, mask)[0, 0].mean(axis=0)  # image 0, view 0: (S, S)
        return block_mean(base_view, patch, patch)
