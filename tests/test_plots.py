"""Plots: figures built without pyplot; the clickable HI image maps pixels to (layer, head)."""

from __future__ import annotations

import matplotlib
import numpy as np

from hi_core.figures.overlays import mask_overlay
from hi_core.figures.plots import figure_to_array, overlay_grid


def test_figures_never_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before, backend = plt.get_fignums(), matplotlib.get_backend()
    image = np.zeros((20, 30, 3), np.uint8)
    figures = [
        overlay_grid([image] * 3, [np.random.rand(4, 6)] * 3, [np.eye(20, 30, dtype=bool)] * 3, ["a", "b", "c"], columns=2),
    ]
    assert plt.get_fignums() == before
    for figure in figures:
        array = figure_to_array(figure)
        assert array.ndim == 3 and array.shape[2] == 3 and array.std() > 0
    assert matplotlib.get_backend() == backend and plt.get_fignums() == before  # pyplot's state untouched


def test_mask_overlay_tints_only_the_mask():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    tinted = mask_overlay(image, mask)
    assert (tinted[~mask] == 100).all() and (tinted[1, 2] != 100).any()
