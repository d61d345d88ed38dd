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


def layer_bars(scores: np.ndarray, top_k: int = 4, ax: Axes | None = None, title: str = "Layer scores") -> Figure:
    """Bar chart of the layer scores; the top-k layers (those LoRA would tune) highlighted."""
    figure = ax.figure if ax is not None else Figure(figsize=(max(3.5, 0.3 * scores.size + 1.5), 2.6), layout="constrained")
    ax = ax if ax is not None else figure.subplots()
    top = set(np.argsort(-scores, kind="stable")[:top_k].tolist())
    colours = ["#d62728" if layer in top else "#8c8c8c" for layer in range(scores.size)]
    ax.bar(np.arange(scores.size), scores, color=colours)
    ax.set_xlabel("layer")
    ax.set_ylabel("score")
    ax.set_title(f"{title} (top {top_k} in red)", fontsize=9)
    return figure


def figure_to_array(figure: Figure, dpi: int = 100) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def hi_cells(hi: np.ndarray, cell: int = 24, selected: tuple[int, int] | None = None) -> np.ndarray:
    """The (layers, heads) HI matrix as an image of `cell`-px squares (viridis, 0..max), layers on
    rows from the top, heads on columns; a clicked pixel (x, y) is head x // cell, layer y // cell.
    The selected head is outlined in white."""
    from matplotlib import colormaps

    scaled = hi / max(1e-6, float(hi.max()))
    colours = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)  # (layers, heads, 3)
    image = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    image[::cell, :] = 255 - (255 - image[::cell, :]) // 2  # faint grid lines
    image[:, ::cell] = 255 - (255 - image[:, ::cell]) // 2
    if selected is not None:
        layer, head = selected
        y0, x0 = layer * cell, head * cell
        image[y0 : y0 + cell, x0 : x0 + 2] = image[y0 : y0 + cell, x0 + cell - 2 : x0 + cell] = 255
        image[y0 : y0 + 2, x0 : x0 + cell] = image[y0 + cell - 2 : y0 + cell, x0 : x0 + cell] = 255
    return image


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 255)) -> np.ndarray:
    """The image with the mask tinted in `colour` (half opacity), (H, W, 3) uint8."""
    blended = image[..., :3].astype(np.float32).copy()
    blended[mask] = 0.5 * blended[mask] + 0.5 * np.asarray(colour, np.float32)
    return blended.astype(np.uint8)
