"""Qwen2-VL and Qwen2.5-VL: `<|image_pad|>` tokens on a dynamic, aspect-preserving grid.

The processor smart-resizes the image to multiples of patch * merge pixels (28 for the released
models) keeping its aspect ratio within a pixel budget, cuts it into patches, and the vision
tower's patch merger joins each merge x merge block (2x2) of neighbouring patches into one
language-model token, to cut the number of image tokens fourfold. So the grid is
`image_grid_thw[1:] // spatial_merge_size`, and the `<|image_pad|>` run between
`<|vision_start|>` and `<|vision_end|>` fills it row-major (the same order as the model's 3-D
rope positions). Both versions share this logic; 2.5 only changes the vision tower.

`pixel_values` are flattened patches ordered block by block (the merge x merge patches of one
token are consecutive), so the mask's per-token coverage is the mean over each block's rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import FamilyAdapter, ImageLayout, processed_mask, size_value, token_positions


def merged_grid(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(merge, gh, gw): the merge size and the token grid of the one image in `inputs`."""
    grid_thw = inputs["image_grid_thw"]
    if grid_thw.shape[0] != 1:
        raise RuntimeError(f"expected one image, found {grid_thw.shape[0]} in image_grid_thw")
    temporal, height, width = (int(n) for n in grid_thw[0])
    merge = int(model.config.vision_config.spatial_merge_size)
    if temporal != 1 or height % merge or width % merge:
        raise RuntimeError(f"unexpected image grid (t, h, w) = {(temporal, height, width)} for merge size {merge}")
    return merge, height // merge, width // merge


class Qwen2VLAdapter(FamilyAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def view_side(self, processor: Any) -> int | None:
        """The side of a square of the pixel budget: `size["longest_edge"]` is max_pixels here.

        Any aspect ratio keeps at most that many pixels, so its shorter side is at most this
        side and a pre-downscale to 2x it (`images.fit_size`) leaves the processor 2x to shrink.
        """
        image_processor = processor.image_processor
        max_pixels = getattr(image_processor, "max_pixels", None) or size_value(image_processor.size, "longest_edge")
        return math.isqrt(int(max_pixels)) if max_pixels else None

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, gh, gw = merged_grid(model, inputs)
        ids = inputs["input_ids"].reshape(-1)
        positions = token_positions(ids, model.config.image_token_id)
        if positions.size != gh * gw:
            raise RuntimeError(f"expected {gh * gw} image tokens for a {gh}x{gw} grid, found {positions.size}")
        first, last = int(positions[0]), int(positions[-1])
        if (
            last - first + 1 != positions.size
            or first == 0
            or int(ids[first - 1]) != model.config.vision_start_token_id
            or last + 1 >= ids.numel()
            or int(ids[last + 1]) != model.config.vision_end_token_id
        ):
            raise RuntimeError("the image tokens are not one run between <|vision_start|> and <|vision_end|>")
        return ImageLayout(positions=positions.reshape(gh, gw), valid=np.ones((gh, gw), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        merge, gh, gw = merged_grid(model, inputs)
        patches = processed_mask(processor, mask)  # (gh * gw * merge^2, C * temporal * P * P)
        if patches.shape[0] != gh * gw * merge * merge:
            raise RuntimeError(f"the mask gave {patches.shape[0]} patches, the image {gh * gw * merge * merge}")
        # Every patch has P*P pixels, so a token's coverage is the plain mean over its block's rows.
        return patches.reshape(gh, gw, -1).mean(axis=-1)
