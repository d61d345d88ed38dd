"""Figures from arrays: head maps over images, HI heatmaps. Each function builds a matplotlib
`Figure` directly (no pyplot state, no `show()`), accepts an optional `ax`/`axes` where it draws a
single panel, and is shared by the CLI, the app and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def draw_overlay(ax: Axes, image: np.ndarray, head_map: np.ndarray, mask: np.ndarray | None = None, title: str = "") -> None:
    """The image with a head's map (gh, gw) over it as patch blocks, and the mask's outline."""
    height, width = image.shape[:2]
    ax.imshow(image)
    ax.imshow(head_map, extent=(0, width, height, 0), cmap="inferno", alpha=0.6, interpolation="nearest")
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1.2)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def overlay_grid(
    images: Sequence[np.ndarray],
    head_maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    suptitle: str = "",
) -> Figure:
    """A grid of `draw_overlay` panels, one per (image, map[, mask])."""
    count = len(images)
    rows = -(-count // columns)
    figure = Figure(figsize=(2.4 * min(columns, count), 2.5 * rows + (0.4 if suptitle else 0)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, min(columns, count), squeeze=False)).reshape(-1)
    for index, ax in enumerate(axes):
        if index >= count:
            ax.set_axis_off()
            continue
        draw_overlay(
            ax,
            images[index],
            head_maps[index],
            None if masks is None else masks[index],
            "" if titles is None else titles[index],
        )
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    return figure


def hi_heatmap(hi: np.ndarray, ax: Axes | None = None, title: str = "Head Impact") -> Figure:
    """The (layers, heads) HI matrix as a heatmap, layers on rows."""
    figure = ax.figure if ax is not None else Figure(figsize=(max(3.0, 0.35 * hi.shape[1] + 1.5), max(2.0, 0.3 * hi.shape[0] + 1.2)), layout="constrained")
    ax = ax if ax is not None else figure.subplots()
    image = ax.imshow(hi, cmap="viridis", vmin=0, vmax=max(1e-6, float(hi.max())), aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure
