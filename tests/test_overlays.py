"""Head maps over images drawn as arrays: panels at the asked size, the map's blocks where the map says,
the mask's outline, titles written, large uploads reduced first."""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.figures.drawing import colormap_lut
from hi_core.figures.overlays import (
    BRUSH_COLOURS,
    MAP_OPACITY,
    OUTLINE,
    PANEL_PX,
    contrasting_colour,
    map_colours,
    map_overlay,
    outline,
    overlay_panels,
)


def _scene(side=96):
    image = np.full((side, side, 3), 128, np.uint8)
    mask = np.zeros((side, side), bool)
    mask[side // 2 :, side // 2 :] = True  # the bottom-right quarter
    head_map = np.zeros((2, 2))
    head_map[0, 0] = 1.0  # the top-left quarter
    return image, mask, head_map


def test_a_panel_puts_the_map_on_its_blocks_and_outlines_the_mask():
    image, mask, head_map = _scene()
    grid = overlay_panels([image], [head_map], [mask], [""], columns=1, panel=200)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    rows, columns = np.nonzero((grid != 255).any(axis=2))  # the panel: everything not background
    panel = grid[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].astype(int)
    assert panel.shape[:2] == (200, 200)
    hot = np.round((1 - MAP_OPACITY) * 128 + MAP_OPACITY * colormap_lut("inferno")[255])
    cold = np.round((1 - MAP_OPACITY) * 128 + MAP_OPACITY * colormap_lut("inferno")[0])
    assert (np.abs(panel[10, 10] - hot) <= 1).all() and (np.abs(panel[10, 150] - cold) <= 1).all()
    assert (panel[100:102, 120] == OUTLINE).all() and (panel[150, 150] != OUTLINE).any()  # the edge only
    assert (panel[50, 50] != OUTLINE).any()


def test_panels_are_laid_out_in_columns_with_titles():
    image, mask, head_map = _scene()
    maps = [head_map * k for k in range(1, 6)]
    untitled = overlay_panels([image] * 5, maps, [mask] * 5, None, columns=2, panel=100)
    titled = overlay_panels([image] * 5, maps, [mask] * 5, [f"L{k} H{k}: 0.{k}" for k in range(5)], columns=2, title="top 5 heads",
                            panel=100)
    assert untitled.shape[1] == titled.shape[1] == 2 * 100 + 3 * 6  # two columns and gaps
    assert titled.shape[0] > untitled.shape[0] >= 3 * 100  # three rows, and room for the titles
    band = titled[: titled.shape[0] - untitled.shape[0]]
    assert (band < 128).any()  # dark text in the title rows


def test_long_titles_wrap_inside_their_panel():
    image, mask, head_map = _scene()
    title = "layer 27 head 11: HI 0.123, mass 0.456, 3.1x chance, and more words than fit"
    grid = overlay_panels([image, image], [head_map, None], [mask, None], [title, ""], columns=2, panel=120)
    ink_columns = np.nonzero((grid[:40] < 100).any(axis=(0, 2)))[0]
    assert ink_columns.max() < 6 + 120 + 6  # the first title stays above the first panel


def test_a_large_upload_is_reduced_to_the_panel_and_the_mask_follows():
    image, mask, head_map = _scene(side=1600)
    grid = overlay_panels([image], [head_map], [mask], ["t"], columns=1)
    assert max(grid.shape[:2]) < PANEL_PX + 60
    assert (grid == OUTLINE).all(axis=2).sum() > 100


def test_same_image_objects_are_drawn_identically():
    image, mask, head_map = _scene()
    grid = overlay_panels([image, image], [head_map, head_map], [mask, mask], None, columns=2, panel=64)
    copy = overlay_panels([image, image.copy()], [head_map, head_map], [mask, mask.copy()], None, columns=2, panel=64)
    assert (grid == copy).all()


def test_input_errors():
    image, mask, head_map = _scene()
    with pytest.raises(ValueError):
        overlay_panels([], [], None)
    with pytest.raises(ValueError):
        overlay_panels([image, image], [head_map], None)


def test_map_colours_cover_the_image_in_blocks():
    blocks = map_colours(np.array([[0.0, 1.0], [0.5, 0.0]]), (10, 6))
    assert blocks.shape == (6, 10, 3)
    assert (blocks[:3, 5:] == colormap_lut("inferno")[255]).all() and (blocks[:3, :5] == colormap_lut("inferno")[0]).all()


def test_outline_is_the_edge_and_the_image_border_counts():
    mask = np.zeros((8, 8), bool)
    mask[2:, 2:] = True
    edge = outline(mask, thickness=2)
    assert edge[2, 2:].all() and edge[3, 3:].all() and not edge[5, 5]
    assert edge[7, 4] and edge[4, 7]  # where the object meets the image's border


def test_gallery_thumbnail_and_mask_preview():
    image, mask, head_map = _scene(side=8)
    shown = map_overlay(image, head_map, mask, min_side=16)
    assert shown.shape == (16, 16, 3) and (shown[8:10, 8:] == OUTLINE).all() and (shown[12, 12] != OUTLINE).any()
    assert map_overlay(image).shape == (8, 8, 3)


@pytest.mark.parametrize("colour", BRUSH_COLOURS)
def test_the_brush_colour_is_never_the_colour_of_the_object(colour):
    """A scene of a grey background with a large object in one of the brush colours: that colour is never the
    brush, and the one chosen is far from every pixel."""
    image = np.full((64, 64, 3), 110, np.uint8)
    image[16:48, 16:48] = colour
    chosen = contrasting_colour(image)
    assert chosen != colour
    distance = np.linalg.norm(image.reshape(-1, 3).astype(float) - np.asarray(chosen, float), axis=1)
    assert distance.min() > 150

