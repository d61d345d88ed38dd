"""LLaVA-NeXT adapter: the scored tokens are the base view (whole image squashed to a square).

Independent oracle for "base view": the vision tower and projector run on the base view's
pixels alone (`pixel_values[:, 0]`) give exactly the language model's input embeddings at the
scored positions, row-major; changing only the tiles' pixels leaves them untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.model.loading import LoadConfig, load_model

from hi_core.model.inputs import build_inputs
from hi_core.method.masks import mask_grid

from .family_checks import (
    PROMPT,
    TEXT,
    check_capture_equals_eager,
    check_region_lands_on_its_cells,
    check_scores_exactly_the_base_view,
    two_scenes,
)
from .oracles import embedding_change
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
    cells = check_region_lands_on_its_cells(llava_next, SIZE, (60, 10, 100, 40), view="global")
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 3:5] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [(60, 120), (120, 60)])
def test_llava_next_scores_exactly_the_base_view(llava_next, size):
    # CLIP: the CLS token is dropped before the projector.
    check_scores_exactly_the_base_view(llava_next, size, SIDE, cls_tokens=1)


def test_llava_next_analyze_image(llava_next):
    bright, _, mask = two_scenes(SIZE, (60, 10, 100, 40))
    analysis = analyze_image(llava_next, bright, mask, TEXT, AnalysisConfig(queries="reading", view="global"))
    assert analysis.family == "llava_next" and analysis.view == "base view"
    assert analysis.maps.shape == (2, 4, SIDE, SIDE) and analysis.grid == (SIDE, SIDE)
    assert analysis.hi.shape == (2, 4) and np.isfinite(analysis.hi).all()
    assert (analysis.maps > 0).all() and (analysis.maps.sum(axis=(2, 3)) < 1).all()
    result = analysis.to_json()
    assert result["grid"] == [SIDE, SIDE] and result["view"] == "base view"
    assert result["object_patches"] == 6


@pytest.mark.parametrize("view", ["tiles", "combined"])
def test_every_image_token_lands_on_the_unpadded_tile_grid(llava_next, view):
    """A 120 x 60 image: 2 tiles side by side, unpadded to a 6 x 12 grid of 10 x 10-px cells (the model's own
    packing), one newline token per row. A region moves exactly the tile tokens of its cells; the combined map
    holds the base view's attention too, spread over the cells under each base token (mass conserved)."""
    box = (60, 10, 100, 40)
    if view == "tiles":  # a tile's CLIP attention moves its other tokens too: the region's cells move most
        bright, dark, mask = two_scenes(SIZE, box)
        inputs = [build_inputs(llava_next.adapter, llava_next.model, llava_next.processor, picture, PROMPT, TEXT, "tiles")
                  for picture in (bright, dark)]
        change = embedding_change(llava_next, *inputs)
        cells = mask_grid(llava_next, inputs[0], mask).object_patches
        expected = np.zeros((6, 12), dtype=bool)
        expected[1:4, 6:10] = True  # y 10..40 of 60 -> rows 1..3 of 6; x 60..100 of 120 -> cols 6..9 of 12
        np.testing.assert_array_equal(cells, expected)
        assert change[expected].min() > change[~expected].max()
        return
    image, _, mask = two_scenes(SIZE, box)
    combined, tiles, base = (analyze_image(llava_next, image, mask, TEXT, AnalysisConfig(view=name))
                             for name in ("combined", "tiles", "global"))
    assert combined.grid == tiles.grid == (6, 12) and base.grid == (SIDE, SIDE)
    assert [(v.name, v.grid, v.tokens) for v in combined.views] == [("base view", (SIDE, SIDE), SIDE * SIDE),
                                                                    ("tiles", (6, 12), 72), ("row ends", None, 6)]
    np.testing.assert_allclose(combined.maps.sum(axis=(2, 3)), tiles.maps.sum(axis=(2, 3)) + base.maps.sum(axis=(2, 3)), rtol=1e-5)
    # base token (a, b) covers rows a/6..(a+1)/6 and cols b/6..(b+1)/6 of the image: exactly 1 x 2 tile cells here
    spread = np.kron(base.maps, np.ones((1, 2), np.float32)) / 2
    np.testing.assert_allclose(combined.maps, tiles.maps + spread, rtol=1e-5, atol=1e-8)
