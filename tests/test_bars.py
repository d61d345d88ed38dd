"""The layer-bar chart drawn with PIL: red bars are the top-k layers LoRA would adapt (never every layer),
each bar's height follows its score, and the picture fits the page from 1 to 80 layers."""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.figures.bars import OTHER_COLOUR, PLOT_HEIGHT, TOP_COLOUR, BarsLayout, bars_title, draw_layer_bars, marked_layers
from hi_core.method.layer_selection import Ranking, select_layers


def _bar_colours(picture: np.ndarray, layout: BarsLayout) -> list[tuple[int, ...]]:
    """The colour one pixel above the zero line, at the middle of each layer's bar."""
    out = []
    for layer in range(layout.layers):
        x0, _, x1, _ = layout.bar_box(layer, 0.0)
        out.append(tuple(int(c) for c in picture[layout.base - 2, (x0 + x1) // 2]))
    return out


def _bar_tops(picture: np.ndarray, layout: BarsLayout, colours) -> list[int]:
    """Each bar's top row: the highest pixel of its column in a bar colour."""
    tops = []
    for layer in range(layout.layers):
        x0, _, x1, _ = layout.bar_box(layer, 0.0)
        column = picture[:, (x0 + x1) // 2]
        rows = [y for y in range(layout.base) if tuple(int(c) for c in column[y]) in colours]
        tops.append(min(rows) if rows else layout.base)
    return tops


def test_the_top_k_layers_are_red_and_the_same_as_lora_would_adapt():
    scores = np.array([0.1, 0.9, 0.3, 0.7, 0.2, 0.05])
    picture = draw_layer_bars(scores, top_k=2)
    layout = BarsLayout.fit(scores.size)
    colours = _bar_colours(picture, layout)
    red = [layer for layer, colour in enumerate(colours) if colour == TOP_COLOUR]
    assert red == [1, 3] and all(colours[i] == OTHER_COLOUR for i in (0, 2, 4, 5))
    assert tuple(red) == select_layers("top", scores.size, 2, Ranking.from_scores(scores, "test"))


def test_ties_go_to_the_lower_layer_like_the_ranking():
    assert marked_layers(np.array([0.5, 0.2, 0.5, 0.5]), 2) == {0, 2}


@pytest.mark.parametrize("top_k", [0, 3, 4, 10])
def test_k_at_or_beyond_the_layer_count_marks_none_and_says_why(top_k):
    scores = np.array([0.1, 0.9, 0.3])
    picture = draw_layer_bars(scores, top_k=top_k)
    assert TOP_COLOUR not in _bar_colours(picture, BarsLayout.fit(3))
    assert marked_layers(scores, top_k) == frozenset()
    title = bars_title("Layer scores", 3, top_k)
    assert ("none marked" in title) and (f"k={top_k}" in title or top_k == 0)


def test_bar_heights_follow_the_scores():
    scores = np.array([0.2, 0.8, 0.4, 0.0])
    layout = BarsLayout.fit(scores.size)
    tops = _bar_tops(draw_layer_bars(scores, top_k=1), layout, {TOP_COLOUR, OTHER_COLOUR})
    heights = [layout.base - top for top in tops]
    assert heights[3] == 0 and heights[1] == max(heights)
    assert heights[0] == pytest.approx(heights[1] / 4, abs=2) and heights[2] == pytest.approx(heights[1] / 2, abs=2)
    assert heights[1] <= PLOT_HEIGHT


@pytest.mark.parametrize("layers", [1, 3, 12, 28, 80])
def test_the_picture_fits_and_every_slot_maps_back_to_its_layer(layers):
    scores = np.random.default_rng(layers).random(layers)
    picture = draw_layer_bars(scores, top_k=4)
    layout = BarsLayout.fit(layers)
    assert picture.shape == (layout.height, layout.width, 3) and layout.width <= 900 and layout.height <= 300
    for layer in range(layers):
        x0, _, x1, _ = layout.bar_box(layer, 1.0)
        assert x1 > x0 and layout.layer_at(x0) == layer and layout.layer_at(x1 - 1) == layer
    assert layout.layer_at(layout.left - 1) is None and layout.layer_at(layout.left + layers * layout.slot) is None
    assert layout.values_shown == (layers <= 12)


def test_nan_scores_draw_no_bar_and_nothing_crashes():
    scores = np.array([0.3, np.nan, 0.6])
    layout = BarsLayout.fit(3)
    tops = _bar_tops(draw_layer_bars(scores, top_k=1), layout, {TOP_COLOUR, OTHER_COLOUR})
    assert tops[1] == layout.base and tops[0] < layout.base and tops[2] < tops[0]
    assert draw_layer_bars(np.zeros(4), top_k=1).shape[2] == 3  # all zero: no division by zero


def test_layers_not_scored_have_no_bar_and_are_never_marked():
    scores = np.array([np.nan, 0.4, np.nan, 0.8, 0.1])  # a hybrid model: layers 0 and 2 have no softmax attention
    layout = BarsLayout.fit(scores.size)
    colours = _bar_colours(draw_layer_bars(scores, top_k=2), layout)
    assert [layer for layer, colour in enumerate(colours) if colour == TOP_COLOUR] == [1, 3]
    assert all(colours[i] not in (TOP_COLOUR, OTHER_COLOUR) for i in (0, 2)) and colours[4] == OTHER_COLOUR
    assert marked_layers(scores, 3) == frozenset()  # k = every scored layer: none marked
    assert bars_title("Layer scores", 5, 2, 3) == "Layer scores: top 2 of 3 scored layers (of 5) in red"
