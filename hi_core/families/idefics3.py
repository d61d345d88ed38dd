"""Idefics3 and SmolVLM: image tiles plus a global view; every image token is put on the image.

With image splitting on, the processor resizes the image (longest edge to `size`, then each side up to
whole tiles of `max_image_size` px), cuts it into rows x cols tiles, each written as
`<fake_token_around_image><row_r_col_c>` + s*s `<image>` (a newline after each row), and ends with the
global view, `<fake_token_around_image><global-img>` + s*s `<image>` + `<fake_token_around_image>`: the
whole image resized to one tile. With splitting off, or an image that fits one tile, only the global view
is there. `pixel_values` are (1, frames, 3, S, S), the tiles row by row, the global view last. Each
view's s x s tokens are row-major: the connector's pixel shuffle folds each scale x scale block of
vision patches into one token, in row-major block order (transformers 5 `Idefics3Connector.pixel_shuffle`).
Rows and cols are read from the `<row_r_col_c>` token before each tile's run.

Where each token lands (DESIGN 1.2, `view_layout`): the tiles stitched side by side are the finest grid,
(rows * s) x (cols * s) cells, one tile token per cell; a global-view token covers rows x cols of those
cells exactly (the global view is the same whole image, squashed to a square, never letterboxed), and its
attention is spread evenly over them. `combined` (default) scores both views there; `tiles` the tiles
alone; `global` the global view alone on its own s x s grid (what was scored before every token counted).
`valid` follows `pixel_attention_mask` (real pixels) should a processor pad. The mask goes through the
same image processor (the same splitting): its tiles stitched (combined, tiles) or its last frame (global)
are area-averaged onto the cells.

The language model is `model.model.text_model` (sub-config `text_config`). SmolVLM's processor
overrides `apply_chat_template` to read its video processor, absent without torchvision, so the
prompt is rendered by the generic `ProcessorMixin` code (the same text for image-only chats).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.processing_utils import ProcessorMixin

from ..base.errors import InputError
from .base import (
    FamilyAdapter,
    ImageLayout,
    View,
    block_mean,
    chat_prompt,
    processed_mask,
    stitched_layout,
    token_positions,
)


def tile_geometry(model: Any) -> tuple[int, int, int]:
    """(tile side in pixels, pixels per grid cell, grid cells per side) of the vision tower."""
    vision = model.config.vision_config
    tile, patch, scale = int(vision.image_size), int(vision.patch_size), int(model.config.scale_factor)
    if tile % (patch * scale):
        raise InputError(
            f"the vision tower's tile of {tile} px is not a multiple of its patch ({patch} px) x the "
            f"pixel-shuffle scale_factor ({scale}): no grid of image tokens fits it"
        )
    return tile, patch * scale, tile // (patch * scale)


def tile_rows_cols(processor: Any, input_ids: torch.Tensor, runs: list[np.ndarray]) -> tuple[int, int]:
    """(rows, cols) of the tiles before the global view (the last run), read from the `<row_r_col_c>` token
    that opens each tile's run; (0, 0) for the global view alone."""
    ids = input_ids.reshape(-1)
    markers = processor.tokenizer.convert_ids_to_tokens([int(ids[run[0] - 1]) for run in runs[:-1]])
    places = [re.fullmatch(r"<row_(\d+)_col_(\d+)>", str(marker)) for marker in markers]
    cells = [(int(place.group(1)), int(place.group(2))) for place in places if place is not None]
    if len(cells) < len(places):
        raise InputError(f"expected each tile's image tokens after a <row_r_col_c> token, found {markers}")
    rows, cols = (max(cell[0] for cell in cells), max(cell[1] for cell in cells)) if cells else (0, 0)
    if cells != [(row, col) for row in range(1, rows + 1) for col in range(1, cols + 1)]:
        raise InputError(f"the tiles' <row_r_col_c> tokens do not form a grid, row by row: {markers}")
    return rows, cols


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
        text = chat_prompt(processor, prompt, ProcessorMixin.apply_chat_template)
        return dict(processor(text=text, images=[image], return_tensors="pt"))

    def check_loaded(self, model: Any, processor: Any) -> None:
        tile_geometry(model)

    def limit_view(self, processor: Any, max_pixels: int) -> str | None:
        """The longest edge the processor resizes to (`size`), lowered to whole tiles within `max_pixels` (a
        square of that edge): fewer tiles. At least one tile (the global view alone)."""
        image_processor = processor.image_processor
        tile = int(image_processor.max_image_size["longest_edge"])
        current = int(image_processor.size["longest_edge"])
        edge = min(current, max(tile, math.isqrt(int(max_pixels)) // tile * tile))
        image_processor.size = {"longest_edge": edge}
        return f"longest edge {edge} px (at most {(edge // tile) ** 2} tiles of {tile} px + the global view)"

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        """The global view alone (where the tiles are needs the tokenizer: `view_layout`)."""
        return self.view_layout(model, None, inputs, "global")

    def view_layout(
        self,
        model: Any,
        processor: Any,
        inputs: dict[str, torch.Tensor],
        view: str = "combined",
        image_size: tuple[int, int] | None = None,
    ) -> ImageLayout:
        _, cell, side = tile_geometry(model)
        runs = image_token_runs(inputs["input_ids"], model.config.image_token_id, side * side)
        pixels = tuple(inputs["pixel_values"].shape)
        if pixels[0] != 1 or pixels[1] != len(runs):
            raise InputError(
                f"expected one run of image tokens per tile of one image (pixel_values {pixels}), "
                f"found {len(runs)} runs"
            )
        keys = np.concatenate(runs)
        tiles = (len(runs) - 1) * side * side
        pixel_mask = inputs.get("pixel_attention_mask")
        frames = [
            np.ones((side, side), dtype=bool)
            if pixel_mask is None  # a cell is image if any of its pixels is real
            else block_mean(pixel_mask[0, frame].float().numpy(), cell, cell) > 0
            for frame in range(len(runs))
        ]
        rows, cols = tile_rows_cols(processor, inputs["input_ids"], runs) if tiles and processor is not None else (0, 0)
        fine = (rows * side, cols * side)
        if not tiles or view == "global":
            views: tuple[View, ...] = (View("tiles", 0, tiles, fine if rows else None),) if tiles else ()
            views += (View("global view", tiles, int(keys.size), (side, side)),)
            return ImageLayout.one_view(keys, views, "global view", frames[-1])
        valid = np.block([[frames[r * cols + c] for c in range(cols)] for r in range(rows)])
        return stitched_layout(keys, rows, cols, side, view == "combined", "global view", valid)

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        return self.view_mask_fractions(model, processor, mask, inputs, self.view_layout(model, processor, inputs))

    def view_mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor], layout: ImageLayout
    ) -> np.ndarray:
        tile, cell, side = tile_geometry(model)
        views = processed_mask(processor, mask)  # (1, frames, 3, tile, tile), tiles row by row, global view last
        pixels = tuple(inputs["pixel_values"].shape)
        if views.shape[1] != pixels[1] or views.shape[-1] != tile:
            raise RuntimeError(f"the mask's frames {views.shape[1:]} differ from the image's {pixels[1:]}")
        frames = [block_mean(frame.mean(axis=0), cell, cell) for frame in views[0]]
        if layout.grid == (side, side) and layout.view == "global view":
            return frames[-1]
        rows, cols = layout.grid[0] // side, layout.grid[1] // side
        return np.block([[frames[r * cols + c] for c in range(cols)] for r in range(rows)])

    def decoder_layers(self, model: Any) -> torch.nn.ModuleList:
        # Explicit: get_decoder() only reaches the text model through a generic fallback chain.
        return model.model.text_model.layers


class SmolVLMAdapter(Idefics3Adapter):
    name = "smolvlm"
    model_types = ("smolvlm",)
