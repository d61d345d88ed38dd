"""LLaVA-NeXT: a base view, then high-resolution tiles with image_newline tokens; every image token on the image.

The processor turns an image into `pixel_values` (1, 1 + tiles, 3, S, S): element 0 is the base
view, the whole image resized to S x S ignoring its aspect ratio (then the CLIP center crop, a
no-op when crop size = S); the rest are tiles of the image resized and padded to the best
`image_grid_pinpoints` resolution. `LlavaNextModel.pack_image_features` puts the base view's
features first, (image_size / patch_size)^2 of them row-major with no newline token, then the
tiles stitched and unpadded (the padding cut off again), row by row, one `image_newline` after each
row, all at `<image>` positions (LLaVA-OneVision shrinks that grid bilinearly above its
`anyres_max_N` budget first).

Where each token lands (`view_layout`): the unpadded tile grid, rows x cols, is the finest grid and covers
the image; its tokens are one cell each. Which `<image>` token is which is read from the model's own
`pack_image_features`, run on placeholder features (a newline marked 1, every patch 0), so the rows, the
unpadding and any shrinking are exactly the model's. A base-view token covers 1/side of the image's
height and width: it is spread over the cells it overlaps, by the area they share (`combined`, the
default). The newline tokens cover no area: a view of their own ("row ends"), counted, never placed.
`global` scores the base view alone on its side x side grid (as before every token counted), `tiles`
the tile grid alone. The mask: the base view's through the processor (`global`), else area-averaged
from the image onto the tile grid (the unpadded grid is the resized image, up to a patch of rounding).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import cv2
import numpy as np
import torch

from ..base.errors import InputError
from .base import FamilyAdapter, ImageLayout, View, block_mean, processed_mask, token_positions
from .llava import patch_grid_side


def overlaps(parts: int, cells: int) -> np.ndarray:
    """(parts, cells): the share of each of `parts` equal spans of [0, 1] that falls in each of `cells` equal spans."""
    edges = np.linspace(0.0, 1.0, parts + 1), np.linspace(0.0, 1.0, cells + 1)
    low = np.maximum(edges[0][:-1, None], edges[1][None, :-1])
    high = np.minimum(edges[0][1:, None], edges[1][None, 1:])
    return np.clip(high - low, 0.0, None) * parts


class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)

    def pack(self, model: Any, inputs: dict[str, torch.Tensor], side: int) -> torch.Tensor:
        """The model's own packing of one image's features, on placeholders: (tokens,) 1.0 at each newline."""
        config = model.config
        module = importlib.import_module(type(model.model).__module__)
        tall, wide = module.get_anyres_image_grid_shape(
            inputs["image_sizes"][0], config.image_grid_pinpoints, config.vision_config.image_size
        )
        placeholders = [torch.zeros(1 + int(tall) * int(wide), side * side, 1)]
        newline = torch.ones(1)
        if "vision_aspect_ratio" in inspect.signature(model.model.pack_image_features).parameters:  # OneVision
            packed, _ = model.model.pack_image_features(
                placeholders,
                inputs["image_sizes"],
                image_newline=newline,
                vision_aspect_ratio=config.vision_aspect_ratio,
            )
        else:
            packed, _ = model.model.pack_image_features(
                placeholders, inputs["image_sizes"], config.vision_feature_select_strategy, image_newline=newline
            )
        return packed[0][:, 0]

    def view_layout(
        self,
        model: Any,
        processor: Any,
        inputs: dict[str, torch.Tensor],
        view: str = "combined",
        image_size: tuple[int, int] | None = None,
    ) -> ImageLayout:
        base = self.image_layout(model, inputs)
        _, side = patch_grid_side(model)
        positions = base.keys
        packed = self.pack(model, inputs, side)
        if packed.numel() != positions.size:
            raise InputError(
                f"the model packs {packed.numel()} image features but the sequence has {positions.size} "
                "image tokens: the processor and the model disagree on the tiles"
            )
        tile_part = packed[side * side :].numpy() > 0.5  # True at the newlines
        rows = int(tile_part.sum())
        cols = (tile_part.size - rows) // rows if rows else 0
        if not rows or not np.array_equal(np.flatnonzero(tile_part), np.arange(1, rows + 1) * (cols + 1) - 1):
            raise InputError("the tiles' image tokens do not form rows closed by a newline token")
        tiles, newlines = positions[side * side :][~tile_part], positions[side * side :][tile_part]
        keys = np.concatenate([positions[: side * side], tiles, newlines])
        start = side * side
        views = (
            View("base view", 0, start, (side, side)),
            View("tiles", start, start + tiles.size, (rows, cols)),
            View("row ends", start + tiles.size, int(keys.size), None),
        )
        if view == "global":
            return ImageLayout.one_view(keys, views, "base view", base.valid)
        key_index, cell_index, weights = (
            [start + np.arange(tiles.size)],
            [np.arange(tiles.size)],
            [np.ones(tiles.size, np.float32)],
        )
        if view == "combined":
            down, across = (
                overlaps(side, rows),
                overlaps(side, cols),
            )  # (side, rows), (side, cols): shares of a token's extent
            share = down[:, None, :, None] * across[None, :, None, :]  # (a, b, i, j)
            a, b, i, j = np.nonzero(share)
            key_index.append(a * side + b)
            cell_index.append(i * cols + j)
            weights.append(share[a, b, i, j].astype(np.float32))
        placement = (np.concatenate(key_index), np.concatenate(cell_index), np.concatenate(weights))
        scored = "tiles" + (" + base view" if view == "combined" else "")
        return ImageLayout(
            keys=keys, placement=placement, valid=np.ones((rows, cols), dtype=bool), view=scored, views=views
        )

    def view_mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor], layout: ImageLayout
    ) -> np.ndarray:
        if layout.view == "base view":
            return self.mask_fractions(model, processor, mask, inputs)
        rows, cols = layout.grid
        coverage = np.asarray(mask, dtype=np.float32)
        return cv2.resize(coverage, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float64)

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
