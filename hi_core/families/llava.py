"""LLaVA 1.5: `<image>` expands to one token per CLIP patch, row-major over a square grid.

The processor resizes (shortest edge), center-crops, and optionally pads to a square first; the
mask follows the same pipeline (see `FamilyAdapter.mask_fractions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..base.errors import InputError
from .base import FamilyAdapter, ImageLayout, block_mean, processed_mask, token_positions


def patch_grid_side(model: Any) -> tuple[int, int]:
    """(patch size in pixels, patches per side) of the CLIP-style vision tower."""
    vision = model.config.vision_config
    return int(vision.patch_size), int(vision.image_size) // int(vision.patch_size)


class LlavaAdapter(FamilyAdapter):
    name = "llava"
    model_types = ("llava",)

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, side = patch_grid_side(model)
        positions = token_positions(inputs["input_ids"], model.config.image_token_id)
        if positions.size != side * side:
            raise InputError(
                f"expected {side * side} image tokens for the vision tower's {side}x{side} grid, found "
                f"{positions.size}: the processor's image token count does not match the model"
            )
        return ImageLayout.cells(positions.reshape(side, side), np.ones((side, side), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        patch, _ = patch_grid_side(model)
        view = processed_mask(processor, mask)[0].mean(axis=0)  # (S, S): channels averaged
        return block_mean(view, patch, patch)
