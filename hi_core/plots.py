"""Figures from arrays: head maps over images, HI heatmaps. Each function builds a matplotlib
`Figure` directly (no pyplot state, no `show()`), accepts an optional `ax`/`axes` where it draws a
single panel, and is shared by the CLI, the app and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


#: Figures and thumbnails never draw an image with more pixels per side than this (a panel is ~240 px):
#: an upload of thousands of pixels would otherwise cost gigabytes in matplotlib's resampling.
PANEL_SIDE = 480


def fit_for_display(image: np.ndarray, mask: np.ndarray | None = None, max_side: int = PANEL_SIDE) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, mask) area-averaged down so the longer side is at most `max_side` (the mask as a coverage
    fraction in [0, 1]); unchanged when already that small."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return image, mask


def draw_overlay(ax: Axes, image: np.ndarray, head_map: np.ndarray, mask: np.ndarray | None = None, title: str = "") -> None:
    """The image with a head's map (gh, gw) over it as patch blocks, and the mask's outline."""
    image, mask = fit_for_display(image, mask)
    height, width = image.shape[:2]
    ax.imshow(image)
    ax.imshow(head_map, extent=(0, width, height, 0), cmap="inferno", alpha=0.6, interpolation="nearest")
    if mask is not None and (mask >= 0.5).any():
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


def map_overlay(image: np.ndarray, head_map: np.ndarray | None = None, mask: np.ndarray | None = None, min_side: int = 0) -> np.ndarray:
    """`draw_overlay` as a plain (H', W', 3) uint8 array, without a figure (fast, for galleries): the
    head's map (gh, gw) stretched over the image as patch blocks (inferno over the map's range, 0.6
    opacity) and the mask's outline in cyan. A small image is first enlarged by an integer factor
    (nearest) until its shorter side is at least `min_side` px, so thumbnails stay sharp; a large one
    is reduced to PANEL_SIDE."""
    from matplotlib import colormaps

    image, mask = fit_for_display(image, mask)
    mask = None if mask is None else mask >= 0.5
    factor = max(1, -(-min_side // min(image.shape[:2])))
    pixels = image[..., :3].astype(np.float32).repeat(factor, axis=0).repeat(factor, axis=1)
    height, width = pixels.shape[:2]
    if head_map is not None:
        span = float(head_map.max() - head_map.min())
        scaled = (head_map - head_map.min()) / span if span > 0 else np.zeros_like(head_map)
        colours = colormaps["inferno"](scaled)[..., :3] * 255  # (gh, gw, 3)
        rows, columns = np.arange(height) * head_map.shape[0] // height, np.arange(width) * head_map.shape[1] // width
        pixels = 0.4 * pixels + 0.6 * colours[rows][:, columns]
    if mask is not None and mask.any():
        inside = mask.astype(bool).repeat(factor, axis=0).repeat(factor, axis=1)
        core = inside
        for _ in range(2):  # a 2-px outline: the object minus its twice-eroded core
            padded = np.pad(core, 1)
            core = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        pixels[inside & ~core] = (0, 255, 255)
    return pixels.astype(np.uint8)


#: One colour per fine-tuning strategy in the comparison figures.
_STRATEGY_COLOURS = {"pretrained": "#8c8c8c", "top": "#d62728", "random": "#1f77b4", "bottom": "#2ca02c", "all": "#9467bd"}


def metric_bars(
    strategies: Sequence[str],
    metrics: Sequence[str],
    means: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    title: str = "Held-out caption metrics",
) -> Figure:
    """One panel per metric, one bar per strategy; means, lows, highs: (strategies, metrics), the
    whiskers spanning [low, high] (NaN: no interval, e.g. a single run)."""
    figure = Figure(figsize=(2.3 * len(metrics) + 0.5, 2.9), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics), squeeze=False)).reshape(-1)
    colours = [_STRATEGY_COLOURS.get(name, "#8c8c8c") for name in strategies]
    x = np.arange(len(strategies))
    for column, (ax, metric) in enumerate(zip(axes, metrics)):
        mean = means[:, column]
        below = np.where(np.isnan(lows[:, column]), 0.0, mean - lows[:, column])
        above = np.where(np.isnan(highs[:, column]), 0.0, highs[:, column] - mean)
        ax.bar(x, mean, color=colours)
        ax.errorbar(x, mean, yerr=np.stack([below, above]), fmt="none", ecolor="black", capsize=3, linewidth=1)
        finite = np.concatenate([mean, lows[:, column], highs[:, column]])
        finite = finite[np.isfinite(finite)]
        if finite.size:  # zoom on the differences: bars start near the smallest value
            spread = max(float(finite.max() - finite.min()), 1e-6)
            ax.set_ylim(max(0.0, float(finite.min()) - 0.5 * spread), float(finite.max()) + 0.3 * spread)
        ax.set_xticks(x, strategies, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    figure.suptitle(f"{title} (whiskers: 95% interval over seeds)", fontsize=10)
    return figure


def loss_curves(curves: dict[str, Sequence[np.ndarray]], ax: Axes | None = None, smooth: int = 0, title: str = "Training loss") -> Figure:
    """Training loss per step: for each strategy, every seed's curve (thin) and their mean (thick),
    smoothed by a moving average over `smooth` steps (0: about 1/20 of the steps)."""
    figure = ax.figure if ax is not None else Figure(figsize=(6.0, 3.2), layout="constrained")
    ax = ax if ax is not None else figure.subplots()
    for name, runs in curves.items():
        runs = [np.asarray(run, dtype=np.float64) for run in runs if len(run)]
        if not runs:
            continue
        length = min(len(run) for run in runs)
        window = smooth or max(1, length // 20)
        kernel = np.ones(window) / window
        colour = _STRATEGY_COLOURS.get(name, None)
        steps = np.arange(window, length + 1)
        for run in runs:
            ax.plot(steps, np.convolve(run[:length], kernel, mode="valid"), color=colour, alpha=0.25, linewidth=0.8)
        mean = np.mean([run[:length] for run in runs], axis=0)
        ax.plot(steps, np.convolve(mean, kernel, mode="valid"), color=colour, linewidth=2, label=f"{name} ({len(runs)} runs)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return figure


def layer_choices(selected: np.ndarray, labels: Sequence[str], scores: np.ndarray | None = None, title: str = "Adapted layers") -> Figure:
    """Which layers each run adapted: selected (runs, layers) bool as a grid, one row per run
    (labelled), and the layer scores of the ranking as bars above it when given."""
    runs, layers = selected.shape
    rows = 2 if scores is not None else 1
    figure = Figure(figsize=(max(3.5, 0.35 * layers + 2.0), 0.28 * runs + 1.4 + (1.2 if scores is not None else 0)), layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False, height_ratios=[1, max(1.0, runs / 5)] if scores is not None else None)[:, 0]
    if scores is not None:
        axes[0].bar(np.arange(layers), scores, color="#8c8c8c")
        axes[0].set_xlim(-0.5, layers - 0.5)
        axes[0].set_ylabel("layer score", fontsize=8)
        axes[0].set_xticks([])
    ax = axes[-1]
    ax.imshow(selected.astype(float), cmap="Reds", vmin=0, vmax=1.25, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(runs), labels, fontsize=8)
    ax.set_xticks(np.arange(layers))
    ax.set_xlabel("layer")
    figure.suptitle(title, fontsize=10)
    return figure

