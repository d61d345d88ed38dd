"""LLaVA-NeXT adapter: the scored tokens are the base view (whole image squashed to a square).

Independent oracle for "base view": the vision tower and projector run on the base view's
pixels alone (`pixel_values[:, 0]`) give exactly the language model's input embeddings at the
scored positions, row-major; changing only the tiles' pixels leaves them untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.loading import LoadConfig, load_model

from .family_checks import (
    TEXT,
    check_capture_equals_eager,
    check_region_lands_on_its_cells,
    check_scores_exactly_the_base_view,
    two_scenes,
)
from .tiny_llava_next import build_llava_next

SIZE = (120, 60)  # (width, height): base view squashed to 48 x 48, x by 0.4 and y by 0.8
SIDE = 6  # 48 / 8-px patches


@pytest.fixture(scope="module")
def llava_next_dir(tmp_path_factory):
    return build_llava_next(tmp_path_factory.mktemp("llava_next"))


@pytest.fixture(scope="module")
def llava_next(llava_next_dir):
    return load_model(LoadConfig(model=str(llava_next_dir), device="cpu"))


def test_llava_next_capture_equals_eager(llava_next, llava_next_dir):
    image, _, _ = two_scenes(SIZE, (60, 10, 100, 40))
    check_capture_equals_eager(llava_next, llava_next_dir, image)


def test_llava_next_grid_follows_the_base_view_squash(llava_next):
    # Base view: 120x60 -> 48x48, x * 0.4 and y * 0.8, 8-px cells. Box x 60..100 -> 24..40 ->
    # cols 3-4; y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns.
    cells = check_region_lands_on_its_cells(llava_next, SIZE, (60, 10, 100, 40))
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 3:5] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [(60, 120), (120, 60)])
def test_llava_next_scores_exactly_the_base_view(llava_next, size):
    # CLIP: the CLS token is dropped before the projector.
    check_scores_exactly_the_base_view(llava_next, size, SIDE, cls_tokens=1)


def test_llava_next_analyze_image(llava_next):
    bright, _, mask = two_scenes(SIZE, (60, 10, 100, 40))
    analysis = analyze_image(llava_next, bright, mask, TEXT, AnalysisConfig(queries="reading"))
    assert analysis.family == "llava_next" and analysis.view == "base view"
    assert analysis.maps.shape == (2, 4, SIDE, SIDE) and analysis.grid == (SIDE, SIDE)
    assert analysis.hi.shape == (2, 4) and np.isfinite(analysis.hi).all()
    assert (analysis.maps > 0).all() and (analysis.maps.sum(axis=(2, 3)) < 1).all()
    result = analysis.to_json()
    assert result["grid"] == [SIDE, SIDE] and result["view"] == "base view"
    assert result["object_patches"] == 6
