"""InternVL: pixel-shuffled tiles plus a thumbnail; HI scores the thumbnail (the single tile if unsplit).

Token layout. The processor (`crop_to_patches`, on by default in `InternVLProcessor`) resizes the
image to the cols x rows grid of S x S tiles whose aspect ratio is nearest the image's (at most
`max_patches` tiles), cuts it row by row, and, when that gives more than one tile, appends a
thumbnail: the whole image squashed to S x S. An image whose nearest grid is 1 x 1 is one tile, the
image squashed to S x S, and no thumbnail. `pixel_values` are (frames, 3, S, S), the thumbnail
last. The prompt's `<IMG_CONTEXT>` becomes `<img>` + frames x n `<IMG_CONTEXT>` + `</img>`: one
contiguous run, tiles in order and the thumbnail last, with nothing between the tiles.

Each frame's vision grid ((S / patch)^2 patches, the CLS token dropped) is pixel-shuffled with
`downsample_ratio` r: every (1/r) x (1/r) block of patches folds into one token, and the blocks
keep row-major order (transformers 5 `InternVLModel.pixel_shuffle` transposes twice, so rows and
columns end where they started), so a frame's n = (S * r / patch)^2 tokens are a square grid,
row-major.

Which view: the thumbnail when the image is split, the single tile otherwise (`ImageLayout.view`
"global view" / "image"): in both cases the whole image squashed to one S x S grid, so maps and
masks compare across images whatever the tiling. The mask goes through the processor's own
image pipeline with the processor's image options (the same tiling), and its last frame is
area-averaged onto the cells.

Checks: `check_loaded` refuses, with what it expected and found, a model or processor whose
image tokens the forward pass would reject (tile geometry, `image_seq_length`, the image token
id, the image processor's tile size, the CLS / feature-layer settings); `image_layout` refuses a
sequence whose image tokens are not the processor's one run (e.g. a description that contains
`<IMG_CONTEXT>` itself), and `prefix_inputs` a prompt that does. All are `InputError`s, raised
before any forward pass.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from ..base.errors import InputError
from .base import (
    FamilyAdapter,
    ImageLayout,
    View,
    block_mean,
    processed_mask,
    size_value,
    stitched_layout,
    token_positions,
)


def _side(value: Any, name: str) -> int:
    """One side of a square `image_size` / `patch_size` (an int or a (height, width) pair)."""
    sides = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 2
    if len(sides) != 2 or sides[0] != sides[1] or sides[0] <= 0:
        raise InputError(f"InternVL needs a square vision {name}; the config has {name} {value!r}")
    return sides[0]


def tile_geometry(config: Any) -> tuple[int, int, int]:
    """(tile side S in pixels, pixels per grid cell, grid cells per side) of an InternVL config."""
    tile = _side(config.vision_config.image_size, "image_size")
    patch = _side(config.vision_config.patch_size, "patch_size")
    ratio = float(config.downsample_ratio)
    fold = round(1 / ratio) if ratio > 0 else 0  # vision patches per token along each axis
    if fold < 1 or abs(fold * ratio - 1) > 1e-6:
        raise InputError(f"InternVL's pixel shuffle needs downsample_ratio = 1/k for a whole k; the config has {ratio}")
    if tile % (patch * fold):
        raise InputError(
            f"InternVL's tile of {tile} px must be a multiple of patch_size {patch} x {fold} "
            f"(1/downsample_ratio) for the pixel shuffle; it is not"
        )
    return tile, patch * fold, tile // (patch * fold)


class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)

    def check_loaded(self, model: Any, processor: Any) -> None:
        config = model.config
        _, _, side = tile_geometry(config)
        tokens = side * side
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise InputError(
                f"InternVL's image tokens are the vision grid without its CLS token (vision_feature_select_strategy "
                f"'default'); the config has {strategy!r}, whose features do not form the grid"
            )
        layer = getattr(config, "vision_feature_layer", -1)
        if not isinstance(layer, int):
            raise InputError(
                "InternVL takes its image features from one vision layer; "
                f"the config's vision_feature_layer is {layer!r}"
            )
        seq_length = getattr(processor, "image_seq_length", None)
        if seq_length != tokens:
            raise InputError(
                f"the processor writes {seq_length} image tokens per tile but the model makes {tokens} "
                f"({side}x{side} after the pixel shuffle): set image_seq_length to {tokens} in processor_config.json"
            )
        token_id = getattr(processor, "image_token_id", None)
        if token_id != config.image_token_id:
            raise InputError(
                f"the processor's image token {getattr(processor, 'image_token', None)!r} has id {token_id}, "
                f"but the model's image_token_id is {config.image_token_id}"
            )
        tile = _side(config.vision_config.image_size, "image_size")
        size = getattr(processor.image_processor, "size", None) or {}
        processed = (size_value(size, "height"), size_value(size, "width"))
        if processed != (tile, tile):
            raise InputError(
                f"the image processor makes {processed[1]}x{processed[0]} px tiles but the vision tower takes "
                f"{tile}x{tile} px (size in preprocessor_config.json)"
            )

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, _, side = tile_geometry(model.config)
        per_frame = side * side
        frames = int(inputs["pixel_values"].shape[0])  # (frames, 3, S, S): one image's tiles, thumbnail last
        positions = token_positions(inputs["input_ids"], model.config.image_token_id)
        expected = frames * per_frame
        contiguous = positions.size > 0 and np.all(np.diff(positions) == 1)
        if positions.size != expected or not contiguous:
            raise InputError(
                f"expected one run of {expected} image tokens ({frames} tiles x {per_frame}), found {positions.size} "
                f"image tokens{'' if contiguous else ' in separate runs'}: the prompt or the description may contain "
                f"the image token itself"
            )
        valid = np.ones((side, side), dtype=bool)
        if frames == 1:
            return ImageLayout.cells(positions.reshape(side, side), valid)
        tiles = (frames - 1) * per_frame  # the thumbnail comes last
        views = (View("tiles", 0, tiles, None), View("global view", tiles, int(positions.size), (side, side)))
        return ImageLayout.one_view(positions, views, "global view", valid)

    def view_layout(
        self,
        model: Any,
        processor: Any,
        inputs: dict[str, torch.Tensor],
        view: str = "combined",
        image_size: tuple[int, int] | None = None,
    ) -> ImageLayout:
        """`combined`: the tiles stitched (cols x rows of them, as the image processor's own
        `get_optimal_tiled_canvas` picks for this image size) are the grid, and each thumbnail token is spread
        over the cols x rows cells under it; `tiles` the tiles alone; `global` the thumbnail alone."""
        layout = self.image_layout(model, inputs)
        if view == "global" or len(layout.views) == 1 or image_size is None or processor is None:
            return layout
        _, _, side = tile_geometry(model.config)
        cols, rows = self.tile_grid(processor, image_size)
        tiles = layout.views[0].tokens
        if cols * rows * side * side != tiles:
            raise InputError(
                f"the image processor tiles a {image_size[0]}x{image_size[1]} image {cols}x{rows}, but the "
                f"sequence holds {tiles // (side * side)} tiles"
            )
        return stitched_layout(layout.keys, rows, cols, side, view == "combined", "global view")

    @staticmethod
    def tile_grid(processor: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """(cols, rows) of the tiles the image processor cuts an image of `image_size` (width, height) into."""
        image_processor = processor.image_processor
        module = importlib.import_module(type(image_processor).__module__)
        tile = (size_value(image_processor.size, "height"), size_value(image_processor.size, "width"))
        cols, rows = module.get_optimal_tiled_canvas(
            (image_size[1], image_size[0]), tile, int(image_processor.min_patches), int(image_processor.max_patches)
        )
        return int(cols), int(rows)

    def view_mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor], layout: ImageLayout
    ) -> np.ndarray:
        _, cell, side = tile_geometry(model.config)
        if layout.grid == (side, side):
            return self.mask_fractions(model, processor, mask, inputs)
        views = processed_mask(processor, mask, **dict(getattr(processor, "images_kwargs", None) or {}))
        frames = [block_mean(frame.mean(axis=0), cell, cell) for frame in views[:-1]]  # the tiles, row by row
        rows, cols = layout.grid[0] // side, layout.grid[1] // side
        return np.block([[frames[r * cols + c] for c in range(cols)] for r in range(rows)])

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        tile, cell, _ = tile_geometry(model.config)
        # The processor's own image options (InternVLProcessor turns crop_to_patches on), so the
        # mask is tiled exactly as the image was.
        options = dict(getattr(processor, "images_kwargs", None) or {})
        views = processed_mask(processor, mask, **options)  # (frames, 3, S, S), thumbnail last
        frames = tuple(inputs["pixel_values"].shape)
        if views.shape[0] != frames[0] or views.shape[-2:] != (tile, tile):
            raise RuntimeError(f"the mask's frames {views.shape} differ from the image's {frames}")
        return block_mean(views[-1].mean(axis=0), cell, cell)

    def decoder_layers(self, model: Any) -> torch.nn.ModuleList:
        return model.model.language_model.layers
