"""Charts from arrays (loss curves, metric bars, adapted layers) as matplotlib figures. Each
function builds a `Figure` directly (no pyplot state, no `show()`), accepts an optional `ax`/`axes`
where it draws a single panel, and is shared by the CLI, the app and the tests.

Pictures the explorer redraws on every action are drawn as arrays without matplotlib, ~10-50x faster:
the clickable heatmap in `hi_core.figures.heatmap` (`draw_heatmap`, `HeatmapLayout`), the layer bars in
`hi_core.figures.bars` (`draw_layer_bars`) and head maps over images in `hi_core.figures.overlays` (`overlay_panels`,
`map_overlay`, `mask_overlay`). `overlay_grid` is the matplotlib
version of `overlay_panels`, kept for saved figures (`overlay_grid(...).savefig`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .overlays import fit_for_display


def draw_overlay(
    ax: Axes, image: np.ndarray, head_map: np.ndarray, mask: np.ndarray | None = None, title: str = ""
) -> None:
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
    """A grid of `draw_overlay` panels, one per (image, map[, mask]), as a matplotlib figure (to save as a
    file). For the app, `overlay_panels` draws the same grid as an array ~20x faster."""
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


def figure_to_array(figure: Figure, dpi: int = 100) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


#: One colour per fine-tuning strategy in the comparison figures.
_STRATEGY_COLOURS = {
    "pretrained": "#8c8c8c",
    "top": "#d62728",
    "random": "#1f77b4",
    "bottom": "#2ca02c",
    "all": "#9467bd",
}


def metric_bars(
    strategies: Sequence[str],
    metrics: Sequence[str],
    means: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    title: str = "Held-out caption metrics",
    whiskers: str = "95% interval over seeds",
) -> Figure:
    """One panel per metric, one bar per strategy; means, lows, highs: (strategies, metrics), the
    whiskers spanning [low, high] (NaN: no interval, e.g. a single run); `whiskers` says what they are."""
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
    figure.suptitle(f"{title} (whiskers: {whiskers})", fontsize=10)
    return figure


def loss_curves(
    curves: dict[str, Sequence[np.ndarray]], ax: Axes | None = None, smooth: int = 0, title: str = "Training loss"
) -> Figure:
    """Training loss per step: for each strategy, every seed's curve (thin) and their mean (thick),
    smoothed by a moving average over `smooth` steps (0: about 1/20 of the steps)."""
    if ax is None:
        figure = Figure(figsize=(6.0, 3.2), layout="constrained")
        ax = figure.subplots()
    else:
        root = ax.get_figure(root=True)
        if not isinstance(root, Figure):
            raise ValueError("ax must belong to a figure")
        figure = root
    for name, runs in curves.items():
        runs = [np.asarray(run, dtype=np.float64) for run in runs if len(run)]
        if not runs:
            continue
        length = min(len(run) for run in runs)
        window = smooth or max(1, length // 20)
        kernel = np.ones(window) / window
        colour = _STRATEGY_COLOURS.get(name)
        steps = np.arange(window, length + 1)
        for run in runs:
            ax.plot(steps, np.convolve(run[:length], kernel, mode="valid"), color=colour, alpha=0.25, linewidth=0.8)
        mean = np.mean([run[:length] for run in runs], axis=0)
        ax.plot(
            steps,
            np.convolve(mean, kernel, mode="valid"),
            color=colour,
            linewidth=2,
            label=f"{name} ({len(runs)} runs)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return figure


def layer_choices(
    selected: np.ndarray, labels: Sequence[str], scores: np.ndarray | None = None, title: str = "Adapted layers"
) -> Figure:
    """Which layers each run adapted: selected (runs, layers) bool as a grid, one row per run
    (labelled), and the layer scores of the ranking as bars above it when given."""
    runs, layers = selected.shape
    rows = 2 if scores is not None else 1
    figure = Figure(
        figsize=(max(3.5, 0.35 * layers + 2.0), 0.28 * runs + 1.4 + (1.2 if scores is not None else 0)),
        layout="constrained",
    )
    axes = figure.subplots(
        rows, 1, squeeze=False, height_ratios=[1, max(1.0, runs / 5)] if scores is not None else None
    )[:, 0]
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


def effect_scatter(
    hi: np.ndarray, effects: dict[str, np.ndarray], layers: Sequence[int], hi_label: str = "HI"
) -> Figure:
    """Each head's effect when removed alone (one panel per ablation mode) against its HI, coloured by layer."""
    figure = Figure(figsize=(3.6 * len(effects) + 0.8, 3.3), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(effects), sharey=False))
    layer_of = np.asarray(layers)  # each head's layer
    colours = None
    for ax, (mode, effect) in zip(axes, effects.items()):
        colours = ax.scatter(
            hi,
            effect,
            c=layer_of,
            cmap="viridis",
            s=22,
            edgecolors="black",
            linewidths=0.3,
            vmin=layer_of.min(),
            vmax=max(layer_of.max(), layer_of.min() + 1),
        )
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_yscale("symlog", linthresh=0.01)  # one head's effect can dwarf the rest: linear near 0, log beyond
        ax.set_ylim(bottom=min(-0.002, 1.5 * float(np.min(effect))))
        ax.set_xlabel(hi_label)
        ax.set_ylabel("rise in scored-token loss (symlog)")
        ax.set_title(f"each head removed alone ({mode})", fontsize=9)
    if colours is not None:  # whole layers only
        figure.colorbar(colours, ax=list(axes), label="layer", ticks=np.unique(layers))
    return figure


def dose_response_figure(dose: dict, rankings: Sequence[str], names: dict[str, str]) -> Figure:
    """Loss with the first k heads of each order removed: each ranking's curve, and the random and layer-matched
    orders' means with their 2.5-97.5 percentile bands."""
    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = figure.subplots()
    ks = np.asarray(dose["ks"])
    for name, colour in (("random", "grey"), ("layer-matched", "tab:orange")):
        band = dose.get(name)
        if band is None:
            continue
        ax.fill_between(ks, band["loss_low"], band["loss_high"], color=colour, alpha=0.2, linewidth=0)
        ax.plot(
            ks,
            band["loss_mean"],
            color=colour,
            linestyle="--",
            linewidth=1.2,
            label=f"{name} ({dose['orders'][name]} orders, 95% band)",
        )
    for name, colour in zip(rankings, ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        ax.plot(
            ks,
            dose[name]["loss"],
            color=colour,
            marker="o",
            markersize=3,
            linewidth=2 if name == "hi" else 1.2,
            label=f"{names.get(name, name)} order",
        )
    ax.set_xlabel("heads removed (k)")
    ax.set_ylabel("scored-token loss (held-out mean)")
    ax.set_title("Dose-response: heads removed cumulatively (zero ablation)", fontsize=9)
    ax.legend(fontsize=7)
    return figure
