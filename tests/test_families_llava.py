"""LLaVA 1.5 adapter: token positions, row-major grid, resize + center-crop geometry, capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hi_core.base.errors import InputError
from hi_core.families.llava import patch_grid_side

from .family_checks import (
    check_capture_equals_eager,
    check_region_lands_on_its_cells,
    two_scenes,
)


def test_llava_capture_equals_eager(llava, llava_dir):
    image, _, _ = two_scenes((80, 60), (10, 10, 30, 25))
    check_capture_equals_eager(llava, llava_dir, image)


def test_llava_grid_follows_resize_and_center_crop(llava):
    # 80x60 -> shortest edge 48 -> 64x48 -> center crop 48x48 drops 8 px each side (x).
    # Box x 30..50, y 20..40 -> scaled x 24..40, y 16..32 -> cropped x 16..32 -> cells rows 2-3, cols 2-3.
    cells = check_region_lands_on_its_cells(llava, (80, 60), (30, 20, 50, 40))
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(cells, expected)


def test_llava_asymmetric_region_is_not_transposed(llava):
    # A tall thin box in the left part: cells rows 1-4, col 1 (x 20..30 -> 16..24 -> 8..16).
    cells = check_region_lands_on_its_cells(llava, (80, 60), (20, 10, 30, 50))
    assert cells[:, 1].sum() >= 3 and cells.sum() == cells[:, 1].sum()


def test_an_image_token_count_the_model_does_not_make_is_an_input_error(llava):
    """A processor that expands `<image>` to another count than the vision tower's grid: a message, not a crash."""
    _, side = patch_grid_side(llava.model)
    token = llava.model.config.image_token_id
    ids = torch.tensor([[1] + [token] * (side * side - 1) + [2]])  # one image token short
    with pytest.raises(InputError, match=r"expected \d+ image tokens for the vision tower's \d+x\d+ grid, found \d+"):
        llava.adapter.image_layout(llava.model, {"input_ids": ids})
