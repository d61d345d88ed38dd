"""Qwen2-VL and Qwen2.5-VL: `<|image_pad|>` tokens on a dynamic, aspect-preserving grid.

The processor smart-resizes the image to multiples of patch * merge pixels (28 for the released
models) keeping its aspect ratio within a pixel budget, cuts it into patches, and the vision
tower's patch merger joins each merge x merge block (2x2) of neighbouring patches into one
language-model token, to cut the number of image tokens fourfold. So the grid is
`image_grid_thw[1:] // spatial_merge_size`, and the `<|image_pad|>` run between
`<|vision_start|>` and `<|vision_end|>` fills it row-major (the same order as the model's 3-D
rope positions). Both versions share this logic; 2.5 only changes the vision tower.

What must agree between model and processor, checked once at load (`check_loaded`): the config's
`image_token_id` is the processor's image token (the model scatters the image features onto it),
and the image processor's patch, temporal patch and merge sizes are the vision tower's. The
config's `vision_start_token_id` / `vision_end_token_id` are not used by the model (transformers
5.24 reads neither; its own tester configs leave `vision_end_token_id` at a default outside their
vocabulary), so they are not checked: the image tokens are found by the image token alone, as one
run of exactly gh x gw tokens.

`pixel_values` are flattened patches ordered block by block (the merge x merge patches of one
token are consecutive), so the mask's per-token coverage is the mean over each block's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..base.errors import InputError
from .base import FamilyAdapter, ImageLayout, processed_mask, size_value, token_positions


def merged_grid(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(merge, gh, gw): the merge size and the token grid of the one image in `inputs`."""
    grid_thw = inputs["image_grid_thw"]
    if grid_thw.shape[0] != 1:
        raise InputError(f"expected one image in the processor's image_grid_thw, found {grid_thw.shape[0]}")
    temporal, height, width = (int(n) for n in grid_thw[0])
    merge = int(model.config.vision_config.spatial_merge_size)
    if temporal != 1 or height % merge or width % merge:
        raise InputError(
            f"the processor's image grid (t, h, w) = {(temporal, height, width)} does not fit the model: expected "
            f"t = 1 and h, w multiples of the vision tower's spatial_merge_size {merge}"
        )
    return merge, height // merge, width // merge


def processor_image_token_id(processor: Any) -> int | None:
    """The id of the token the processor expands into the image's tokens (`<|image_pad|>`)."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None) is not None:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return None if token_id is None else int(token_id)


def check_image_token(model: Any, processor: Any) -> None:
    """The config's `image_token_id` is in the vocabulary and is the processor's image token."""
    config = model.config
    expected = int(config.image_token_id)
    vocab_size = int(config.get_text_config().vocab_size)
    if not 0 <= expected < vocab_size:
        raise InputError(
            f"the model's image_token_id {expected} is outside its vocabulary of {vocab_size} tokens "
            f"(the processor's image token {getattr(processor, 'image_token', None)!r} has id "
            f"{processor_image_token_id(processor)})"
        )
    found = processor_image_token_id(processor)
    if found != expected:
        raise InputError(
            f"the model's image_token_id is {expected} but the processor's image token "
            f"{getattr(processor, 'image_token', None)!r} has id {found} in its tokenizer: they must be the same token"
        )


def check_patch_geometry(model: Any, processor: Any) -> None:
    """The image processor cuts and merges patches as the vision tower expects (else the forward fails)."""
    vision = model.config.vision_config
    image_processor = processor.image_processor
    pairs = {  # image processor setting -> vision config setting
        "patch_size": "patch_size",
        "temporal_patch_size": "temporal_patch_size",
        "merge_size": "spatial_merge_size",
    }
    for processor_name, config_name in pairs.items():
        found, expected = getattr(image_processor, processor_name, None), getattr(vision, config_name, None)
        if found is not None and expected is not None and int(found) != int(expected):
            raise InputError(
                f"the image processor's {processor_name} is {found} but the vision tower's {config_name} is "
                f"{expected}: the processor must cut the image as the model expects"
            )


class Qwen2VLAdapter(FamilyAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def check_loaded(self, model: Any, processor: Any) -> None:
        """Refuse a model whose processor's image token or patch geometry is not the model's."""
        check_image_token(model, processor)
        check_patch_geometry(model, processor)

    def limit_view(self, processor: Any, max_pixels: int) -> str | None:
        """The processor's pixel budget (`size["longest_edge"]`, its max_pixels) lowered to `max_pixels`."""
        image_processor = processor.image_processor
        current = size_value(image_processor.size, "longest_edge") or int(max_pixels)
        smallest = size_value(image_processor.size, "shortest_edge")  # min_pixels
        image_processor.size = {
            "shortest_edge": min(smallest or 1, int(max_pixels)),
            "longest_edge": min(current, int(max_pixels)),
        }
        return f"at most {min(current, int(max_pixels)):,} pixels per image (the processor's max_pixels)"

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        _, gh, gw = merged_grid(model, inputs)
        ids = inputs["input_ids"].reshape(-1)
        image_token_id = int(model.config.image_token_id)
        positions = token_positions(ids, image_token_id)
        if positions.size != gh * gw:
            raise InputError(
                f"expected {gh * gw} image tokens (id {image_token_id}) for a {gh}x{gw} grid, found {positions.size} "
                "in the sequence the processor built"
            )
        first, last = int(positions[0]), int(positions[-1])
        if last - first + 1 != positions.size:
            raise InputError(
                f"expected the {positions.size} image tokens (id {image_token_id}) as one run, found them spread over "
                f"positions {first}..{last} of the sequence the processor built"
            )
        return ImageLayout.cells(positions.reshape(gh, gw), np.ones((gh, gw), dtype=bool))

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        merge, gh, gw = merged_grid(model, inputs)
        patches = processed_mask(processor, mask)  # (gh * gw * merge^2, C * temporal * P * P)
        if patches.shape[0] != gh * gw * merge * merge:
            raise InputError(
                f"the image processor cut the mask into {patches.shape[0]} patches but the image into "
                f"{gh * gw * merge * merge}: expected the same geometry for both"
            )
        # Every patch has P*P pixels, so a token's coverage is the plain mean over its block's rows.
        return patches.reshape(gh, gw, -1).mean(axis=-1)
