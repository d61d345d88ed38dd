"""Plots: figures built without pyplot; the clickable HI image maps pixels to (layer, head)."""

from __future__ import annotations

import matplotlib
import numpy as np

from hi_core.plots import figure_to_array, hi_cells, hi_heatmap, layer_bars, mask_overlay, overlay_grid


def test_figures_never_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before, backend = plt.get_fignums(), matplotlib.get_backend()
    image = np.zeros((20, 30, 3), np.uint8)
    figures = [
        overlay_grid([image] * 3, [np.random.rand(4, 6)] * 3, [np.eye(20, 30, dtype=bool)] * 3, ["a", "b", "c"], columns=2),
        hi_heatmap(np.random.rand(3, 4)),
        layer_bars(np.array([0.1, 0.5, 0.3]), top_k=1),
    ]
    assert plt.get_fignums() == before
    for figure in figures:
        array = figure_to_array(figure)
        assert array.ndim == 3 and array.shape[2] == 3 and array.std() > 0
    assert matplotlib.get_backend() == backend and plt.get_fignums() == before  # pyplot's state untouched


def _red_bars(figure) -> list[bool]:
    red = tuple(np.round(matplotlib.colors.to_rgb("#d62728"), 2))
    return [tuple(np.round(p.get_facecolor()[:3], 2)) == red for p in figure.axes[0].patches]


def test_layer_bars_highlight_the_top_k_layers():
    figure = layer_bars(np.array([0.1, 0.9, 0.3, 0.7]), top_k=2)
    assert _red_bars(figure) == [False, True, False, True]
    assert "top 2 of 4 layers in red" in figure.axes[0].get_title()


def test_layer_bars_never_paint_every_layer_as_top():
    for top_k in (3, 4, 10):  # a 3-layer model (the demo) with the app's default k = 4
        figure = layer_bars(np.array([0.1, 0.9, 0.3]), top_k=top_k)
        assert _red_bars(figure) == [False, False, False]
        assert "none marked" in figure.axes[0].get_title() and f"k={top_k}" in figure.axes[0].get_title()
    assert _red_bars(layer_bars(np.array([0.1, 0.9, 0.3]), top_k=2)) == [False, True, True]
    assert _red_bars(layer_bars(np.array([0.1, 0.9, 0.3]), top_k=0)) == [False, False, False]


def test_the_names_the_app_imports_stay_importable_from_plots():
    from hi_core import heatmap, overlays, plots

    assert plots.map_overlay is overlays.map_overlay and plots.mask_overlay is overlays.mask_overlay
    assert plots.overlay_panels is overlays.overlay_panels and plots.fit_for_display is overlays.fit_for_display
    assert plots.draw_heatmap is heatmap.draw_heatmap and plots.HeatmapLayout is heatmap.HeatmapLayout
    for name in ("figure_to_array", "hi_cells", "layer_bars", "layer_choices", "overlay_grid"):
        assert callable(getattr(plots, name))


def test_hi_cells_maps_pixels_to_layer_and_head():
    hi = np.zeros((3, 5))
    hi[2, 4] = 1.0
    image = hi_cells(hi, cell=10)
    assert image.shape == (30, 50, 3)
    brightest = np.unravel_index(np.argmax(image[..., 1].astype(int) + image[..., 0]), image.shape[:2])
    assert (brightest[0] // 10, brightest[1] // 10) == (2, 4)
    outlined = hi_cells(hi, cell=10, selected=(0, 1))
    assert (outlined[0:10, 10:12] == 255).all() and not (image[0:10, 10:12] == 255).all()


def test_mask_overlay_tints_only_the_mask():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    tinted = mask_overlay(image, mask)
    assert (tinted[~mask] == 100).all() and (tinted[1, 2] != 100).any()
