"""The clickable heatmap: its layout maps every cell's pixels back to that cell, labels and the colour bar
to nothing; the drawing follows the same layout (selection outline, printed values, colour scale)."""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.figures.heatmap import MIN_CELL, VALUES_MAX, HeatmapLayout, draw_heatmap

SHAPES = [(3, 4), (28, 12), (32, 32)]


def _values(shape, seed=0):
    return np.random.default_rng(seed).random(shape) * 0.5


@pytest.mark.parametrize("shape", SHAPES)
def test_every_cell_centre_and_corner_maps_back_to_its_cell(shape):
    layout = HeatmapLayout.fit(*shape)
    for layer in range(shape[0]):
        for head in range(shape[1]):
            x0, y0, x1, y1 = layout.cell_box(layer, head)
            assert layout.cell_at((x0 + x1) / 2, (y0 + y1) / 2) == (layer, head)
            assert layout.cell_at(*layout.cell_centre(layer, head)) == (layer, head)
            assert layout.cell_at(x0, y0) == layout.cell_at(x1 - 1, y1 - 1) == (layer, head)  # the box is the cell's, both ends
    assert layout.cell >= MIN_CELL


@pytest.mark.parametrize("shape", SHAPES)
def test_labels_the_colour_bar_and_margins_map_to_no_cell(shape):
    layout = HeatmapLayout.fit(*shape)
    gx0, gy0, gx1, gy1 = layout.grid_box
    bx0, by0, bx1, by1 = layout.bar_box
    outside = [
        (gx0 - 5, (gy0 + gy1) / 2),  # the layer numbers
        ((gx0 + gx1) / 2, gy0 - 8),  # the head numbers
        (3, 3),  # the title
        ((bx0 + bx1) / 2, (by0 + by1) / 2),  # the colour bar
        (bx1 + 10, by0 + 5),  # its tick values
        (gx0 + 2, layout.caption_top + 5),  # the selected cell's line
        (gx0 - 1, gy0), (gx1, gy0), (gx0, gy1), (gx1, gy1 - 1),  # just past each edge
    ]
    for x, y in outside:
        assert layout.cell_at(x, y) is None, (x, y)


@pytest.mark.parametrize("shape", SHAPES + [(1, 1), (8, 8)])
def test_the_picture_follows_the_layout_and_fits_the_page(shape):
    layout = HeatmapLayout.fit(*shape)
    picture = draw_heatmap(_values(shape), (0, 0), layout)
    assert picture.shape == (layout.height, layout.width, 3) and picture.dtype == np.uint8
    assert (picture == draw_heatmap(_values(shape), (0, 0))).all()  # the default layout is the fitted one
    assert layout.width <= 520 and layout.height <= 480  # 32 x 32 included: ~420 x 360 of grid plus labels
    values = _values(shape)
    hottest = np.unravel_index(np.argmax(values), shape)
    coldest = np.unravel_index(np.argmin(values), shape)
    x, y = layout.cell_box(*hottest)[:2]
    xc, yc = layout.cell_box(*coldest)[:2]
    # viridis from 0 to the largest value: the largest cell is the brightest (yellow), the smallest the darkest
    plain = draw_heatmap(values, None, layout)
    assert values.size == 1 or plain[y + 1, x + 1].astype(int).sum() > plain[yc + 1, xc + 1].astype(int).sum()


@pytest.mark.parametrize("shape", SHAPES)
def test_the_selected_cell_has_a_thick_outline_and_only_it(shape):
    layout = HeatmapLayout.fit(*shape)
    values = _values(shape)
    selected = (shape[0] // 2, shape[1] - 1)
    plain = draw_heatmap(values, None, layout)
    marked = draw_heatmap(values, selected, layout)
    x0, y0, x1, y1 = layout.cell_box(*selected)
    ring = np.zeros(plain.shape[:2], bool)
    ring[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = True
    ring[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
    changed = (plain != marked).any(axis=2)
    # the outline, on all four sides: black 3 px out, white 2 and 1 px out, black on the cell's own border
    for offset, colour in ((-3, 0), (-2, 255), (-1, 255), (0, 0)):
        top, bottom, left, right = y0 + offset, y1 - 1 - offset, x0 + offset, x1 - 1 - offset
        assert (marked[top, left : right + 1] == colour).all() and (marked[bottom, left : right + 1] == colour).all()
        assert (marked[top : bottom + 1, left] == colour).all() and (marked[top : bottom + 1, right] == colour).all()
    assert changed[y0 : y1, x0 : x1].any()
    grid = np.zeros_like(ring)
    gx0, gy0, gx1, gy1 = layout.grid_box
    grid[gy0:gy1, gx0:gx1] = True
    assert not changed[grid & ~ring].any()  # no other cell changes
    assert changed[layout.caption_top :].any()  # the selected cell's line is written


def _text_pixels(picture, box):
    """Pixels of a cell whose colour is neither the cell's fill nor a gap: printed text."""
    x0, y0, x1, y1 = box
    inner = picture[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3)
    fill = picture[y0 + 2, x0 + 2]
    return int((np.abs(inner.astype(int) - fill).sum(axis=1) > 60).sum())


def test_values_are_printed_only_on_small_grids():
    small = HeatmapLayout.fit(3, 4)
    assert small.values_shown and HeatmapLayout.fit(VALUES_MAX, VALUES_MAX).values_shown
    assert not HeatmapLayout.fit(VALUES_MAX + 1, 4).values_shown and not HeatmapLayout.fit(28, 12).values_shown
    picture = draw_heatmap(_values((3, 4)), None, small)
    assert all(_text_pixels(picture, small.cell_box(l, h)) > 10 for l in range(3) for h in range(4))
    large = HeatmapLayout.fit(28, 12)
    picture = draw_heatmap(_values((28, 12)), None, large)
    assert all(_text_pixels(picture, large.cell_box(l, h)) == 0 for l in range(28) for h in range(12))


def test_numbers_are_thinned_when_dense_and_fitted_cells_stay_clickable():
    layout = HeatmapLayout.fit(32, 32)
    assert layout.cell >= 10 and layout.layer_step > 1 and layout.head_step > 1
    assert layout.layer_step * layout.cell >= 12 and layout.head_step * layout.cell >= 16  # labels do not overlap
    assert HeatmapLayout.fit(3, 4).layer_step == HeatmapLayout.fit(3, 4).head_step == 1
    with pytest.raises(IndexError):
        layout.cell_box(32, 0)
    with pytest.raises(ValueError):
        draw_heatmap(np.zeros((3, 4)), None, HeatmapLayout.fit(4, 3))


def test_negative_values_use_a_diverging_scale_and_nan_is_grey():
    values = np.array([[-0.2, 0.0, 0.2], [np.nan, 0.1, -0.1]])
    layout = HeatmapLayout.fit(*values.shape)
    picture = draw_heatmap(values, (1, 0), layout, label="ΔHI").astype(int)
    centre = lambda l, h: picture[layout.cell_box(l, h)[1] + 3, layout.cell_box(l, h)[0] + 3]  # noqa: E731
    assert centre(0, 0)[2] > centre(0, 0)[0] and centre(0, 2)[0] > centre(0, 2)[2]  # blue below 0, red above
    assert (np.abs(centre(0, 1) - 247) < 12).all()  # 0 is near white
    assert (centre(1, 0) == 200).all()  # NaN


def test_grey_cells_get_a_legend_line_that_moves_no_cell():
    values = np.array([[np.nan, np.nan], [0.3, 0.6], [np.nan, np.nan]])
    plain, with_legend = HeatmapLayout.fit(3, 2), HeatmapLayout.fit(3, 2, legend=True)
    assert with_legend.height > plain.height and with_legend.cell_at(*plain.cell_centre(1, 1)) == (1, 1)
    picture = draw_heatmap(values, (1, 1), missing="not scored (no softmax attention)")
    assert picture.shape[:2] == (with_legend.height, with_legend.width)
    legend = picture[with_legend.legend_top : with_legend.height]
    assert (legend == 200).all(axis=-1).any() and (legend < 100).all(axis=-1).any()  # the grey swatch and its text
    assert draw_heatmap(values, (1, 1)).shape[0] == plain.height  # no `missing`: no legend


@pytest.mark.parametrize("shape", SHAPES)
def test_marked_cells_are_crossed_out_from_corner_to_corner_and_no_other_cell_changes(shape):
    layout = HeatmapLayout.fit(*shape)
    values = _values(shape)
    marked_heads = [(0, 0), (shape[0] - 1, shape[1] // 2)]
    plain = draw_heatmap(values, None, layout)
    crossed = draw_heatmap(values, None, layout, marked=marked_heads)
    changed = (plain != crossed).any(axis=2)
    inside = np.zeros_like(changed)
    for head in marked_heads:
        x0, y0, x1, y1 = layout.cell_box(*head)
        inside[y0:y1, x0:x1] = True
        side = min(x1 - x0, y1 - y0)
        diagonal = [(y0 + 3 + i, x0 + 3 + i) for i in range(side - 7)]
        anti = [(y1 - 4 - i, x0 + 3 + i) for i in range(side - 7)]
        assert all(changed[point] for point in diagonal + anti), "the cross does not span the cell"
    assert not changed[~inside].any()  # nothing outside the crossed cells moves (the layout stays clickable)
