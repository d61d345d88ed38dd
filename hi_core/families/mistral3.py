"""Mistral 3 (Pixtral layout): rows of `[IMG]` tokens split by `[IMG_BREAK]`, closed by `[IMG_END]`.

The image is shrunk to fit the image processor's `longest_edge` keeping its aspect ratio, then each
side is rounded up to a multiple of patch x merge px (`spatial_merge_size`, 2 for the released
models), so any aspect ratio keeps its own grid and no cell is padding. The vision tower (Pixtral,
2-D rope) cuts it into patches, row-major; the projector's patch merger (`Mistral3PatchMerger`,
an unfold with kernel = stride = merge) joins each merge x merge block into one token, row-major
over the merged grid. For an image resized to H x W px the prompt's `[IMG]` becomes
`rows = H / (patch * merge)` rows of `cols = W / (patch * merge)` `[IMG]` tokens, each row closed by
`[IMG_BREAK]` except the last, which `[IMG_END]` closes:

    [IMG] [IMG] [IMG] [IMG_BREAK]
    [IMG] [IMG] [IMG] [IMG_END]        (rows = 2, cols = 3)

The grid is the rows x cols `[IMG]` tokens (break and end tokens excluded), in sequence order.
`image_sizes` (1, 2) gives (H, W); the mask goes through the same image processor with the same
patch (patch x merge) and is area-averaged onto (patch * merge)-px cells.

transformers 5.24's `PixtralProcessor` needs torchvision; `hi_core.model.pixtral_inputs` stands in for it
(same attributes), and either one serves here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..base.errors import InputError
from .base import FamilyAdapter, ImageLayout, block_mean, processed_mask, size_value


def token_cell(model: Any) -> int:
    """Pixels per language-model token along each axis: the vision patch times the spatial merge."""
    return int(model.config.vision_config.patch_size) * int(model.config.spatial_merge_size)


def token_grid(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(rows, cols) of image tokens of the one image in `inputs`, from its resized size (`image_sizes`)."""
    sizes = inputs["image_sizes"].reshape(-1, 2)
    if sizes.shape[0] != 1:
        raise InputError(f"expected one image, found {sizes.shape[0]} in image_sizes")
    height, width = (int(n) for n in sizes[0])
    cell = token_cell(model)
    if height % cell or width % cell or not height or not width:
        raise InputError(f"expected an image resized to multiples of {cell} px (patch x merge), found {height}x{width}")
    return height // cell, width // cell


class Mistral3Adapter(FamilyAdapter):
    name = "mistral3"
    model_types = ("mistral3",)

    def check_loaded(self, model: Any, processor: Any) -> None:
        """The processor's image tokens and patch are the model's, and its three image tokens are distinct
        tokens of the vocabulary (else the rows could not be read, or transformers would fail mid-forward)."""
        config = model.config
        for name, value in (
            ("vision patch_size", config.vision_config.patch_size),
            ("spatial_merge_size", config.spatial_merge_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"expected the model's {name} to be a positive integer (square patches), found {value!r}"
                )
        pairs = {
            "image token id (config `image_token_index`, processor `[IMG]`)": (
                config.image_token_id,
                getattr(processor, "image_token_id", None),
            ),
            "patch size (vision tower, processor)": (
                int(config.vision_config.patch_size),
                getattr(processor, "patch_size", None),
            ),
            "spatial_merge_size (config, processor)": (
                int(config.spatial_merge_size),
                getattr(processor, "spatial_merge_size", None),
            ),
        }
        for what, (expected, found) in pairs.items():
            if expected != found:
                raise InputError(
                    f"this Mistral 3 model and its processor disagree on the {what}: the model expects "
                    f"{expected!r}, the processor has {found!r}"
                )
        tokenizer = processor.tokenizer
        ids = {}
        for attribute in ("image_token", "image_break_token", "image_end_token"):
            token = getattr(processor, attribute)
            ids[token] = tokenizer.convert_tokens_to_ids(token)
            if ids[token] is None or ids[token] == tokenizer.unk_token_id:
                raise InputError(f"the processor's {attribute} {token!r} is not a token of the model's vocabulary")
        if len(set(ids.values())) != 3:
            raise InputError(f"expected three distinct image, break and end token ids, found {ids}")
        size = processor.image_processor.size
        if not (size_value(size, "longest_edge") or (size_value(size, "height") and size_value(size, "width"))):
            raise InputError(f"the image processor's size {size!r} has no longest_edge (nor height and width)")

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        rows, cols = token_grid(model, inputs)
        ids = inputs["input_ids"].reshape(-1)
        image_id = int(model.config.image_token_id)
        positions = np.flatnonzero(ids.cpu().numpy() == image_id)
        if positions.size != rows * cols:
            raise InputError(f"expected {rows * cols} image tokens for a {rows}x{cols} grid, found {positions.size}")
        # From the first [IMG] the run must read: cols x [IMG], break, ..., cols x [IMG], end. The config
        # does not name the break and end tokens: their ids are read where the processor put them.
        first, length = int(positions[0]), rows * (cols + 1)
        run = ids[first : first + length].cpu()
        expected = torch.full((rows, cols + 1), image_id, dtype=ids.dtype)
        if run.numel() == length:
            expected[:, -1], expected[-1, -1] = run[cols], run[-1]
        if not torch.equal(run, expected.reshape(-1)):
            raise InputError(
                f"expected {rows} rows of {cols} image tokens ({image_id}), each closed by one break token and "
                f"the last by an end token, found the ids {run.tolist()}"
            )
        return ImageLayout.cells(positions.reshape(rows, cols), np.ones((rows, cols), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        cell = token_cell(model)
        view = processed_mask(processor, mask, patch_size={"height": cell, "width": cell})[0].mean(axis=0)  # (H, W)
        height, width = (int(n) for n in inputs["image_sizes"].reshape(-1))
        if view.shape != (height, width):
            raise InputError(
                f"the mask was resized to {view.shape[1]}x{view.shape[0]} px, the image to {width}x{height}"
            )
        return block_mean(view, cell, cell)
