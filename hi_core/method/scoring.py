"""Head Impact and everything computed from head maps: pure NumPy, no model.

Maps arrive as (layers, heads, cells) over the valid cells of the image grid, the key object as a
boolean (cells,) vector (DESIGN 1.4-1.8). The grid is the image's finest one: where a model writes the
image in several views (tiles + a global view), every image token's attention is on it, each token's
spread evenly over the cells of the image it covers (`families.ImageLayout.place`, `--view combined`),
so a cell's value is all the attention the head gives that part of the image, in whichever view:
- `binarize`: keep the k highest cells (`area`), the cells at or above the q-quantile
  (`quantile`), or those above Otsu's threshold (`otsu`);
- `head_impact`: IoU of the binarized map with the object cells;
- `attention_mass`: share of a map's mass on the object cells;
- `chance_iou`: expected IoU of cells drawn at random (exact, hypergeometric), as many as the binarization
  keeps (`binarized_chance`);
- `score_maps`: the three above for grid-shaped maps (layers, heads, gh, gw), on the valid cells;
- `layer_scores` and the rankings of heads and layers.
A NaN map (a layer without softmax attention in a hybrid language model) is not scored: its HI,
mass and layer score are NaN, and rankings leave it out, so layer indices stay the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import hypergeom

from ..base.errors import InputError, check_choice, check_number, check_whole
from ..base.outputs import json_number

Binarization = Literal["area", "quantile", "otsu"]
LayerScore = Literal["max", "mean", "topn"]


@dataclass(frozen=True)
class ScoringConfig:
    """How maps become scores (DESIGN 1.5-1.8). Defaults are the method's defaults."""

    binarize: Binarization = "area"
    quantile: float = 0.9
    layer_score: LayerScore = "max"
    top_n: int | None = None  # for layer_score="topn"; None means 2 x heads

    def __post_init__(self) -> None:
        check_choice("binarize", self.binarize, Binarization)
        check_choice("layer_score", self.layer_score, LayerScore)
        check_number("quantile", self.quantile, "strictly between 0 and 1", lambda v: 0.0 < v < 1.0)
        check_whole("top_n", self.top_n, optional=True)


def _binarize_area(maps: np.ndarray, k: int) -> np.ndarray:
    # Stable sort of the negated values: descending value, ties by token (cell) order.
    order = np.argsort(-maps, axis=-1, kind="stable")[..., :k]
    kept = np.zeros(maps.shape, dtype=bool)
    np.put_along_axis(kept, order, True, axis=-1)
    return kept


def _binarize_quantile(maps: np.ndarray, q: float) -> np.ndarray:
    return maps >= np.quantile(maps, q, axis=-1, keepdims=True)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D array (histogram of `bins` bins, as scikit-image computes it).

    A constant array has no threshold between classes: its single value is returned, so that
    `values > threshold` keeps nothing.
    """
    low, high = float(values.min()), float(values.max())
    if low == high:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts)
    weight_above = np.cumsum(counts[::-1])[::-1]
    mean_below = np.cumsum(counts * centers) / np.maximum(weight_below, 1)
    mean_above = (np.cumsum((counts * centers)[::-1]) / np.maximum(np.cumsum(counts[::-1]), 1))[::-1]
    # Between-class variance for a split after bin i: classes [0..i] and [i+1..].
    variance = weight_below[:-1] * weight_above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
    return float(centers[int(np.argmax(variance))])


def _binarize_otsu(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(-1, maps.shape[-1])
    thresholds = np.array([otsu_threshold(row) for row in flat]).reshape(maps.shape[:-1] + (1,))
    return maps > thresholds


def binarize(maps: np.ndarray, k: int, config: ScoringConfig = ScoringConfig()) -> np.ndarray:
    """Boolean (..., cells): the cells each map keeps. `k` = number of object cells (for `area`)."""
    if config.binarize == "area":
        return _binarize_area(maps, k)
    if config.binarize == "quantile":
        return _binarize_quantile(maps, config.quantile)
    return _binarize_otsu(maps)


def iou(kept: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU over the last axis of boolean arrays (broadcasting); 0 where the union is empty."""
    intersection = np.logical_and(kept, target).sum(axis=-1)
    union = np.logical_or(kept, target).sum(axis=-1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


def head_impact(maps: np.ndarray, object_cells: np.ndarray, config: ScoringConfig = ScoringConfig()) -> np.ndarray:
    """HI of every map: IoU(binarized map, object cells). maps (..., cells) -> (...)."""
    k = int(object_cells.sum())
    if k == 0:
        raise InputError("the key object covers no patch of the image grid")
    return iou(binarize(maps, k, config), object_cells)


def attention_mass(maps: np.ndarray, object_cells: np.ndarray) -> np.ndarray:
    """Share of each map's mass on the object cells. maps (..., cells) -> (...)."""
    total = maps.sum(axis=-1)
    inside = maps[..., object_cells].sum(axis=-1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def chance_iou(cells: int, k: int, kept: int | None = None) -> float:
    """Expected IoU between k fixed object cells and `kept` cells (default k) drawn uniformly without replacement.

    The overlap X is hypergeometric (population `cells`, k successes, `kept` draws); IoU = X / (k + kept - X).
    """
    kept = k if kept is None else kept
    if not 0 < k <= cells or not 0 <= kept <= cells:
        raise ValueError(f"need 0 < k <= cells and 0 <= kept <= cells, got k={k}, kept={kept}, cells={cells}")
    overlaps = np.arange(0, min(k, kept) + 1)
    probabilities = hypergeom.pmf(overlaps, cells, k, kept)
    union = k + kept - overlaps
    return float(np.sum(probabilities * overlaps / np.maximum(union, 1)))


def binarized_chance(kept_counts: np.ndarray, cells: int, k: int) -> float:
    """The chance IoU of maps binarized with `kept_counts` (..,) cells each (DESIGN 1.6): for each map, the expected
    IoU of as many cells drawn at random with the object's k cells, averaged over the maps. `area` keeps k cells, so
    this is `chance_iou(cells, k)`; `quantile` and `otsu` keep their own counts, and "x chance" then compares a head
    with a random map of its own size."""
    counts, repeats = np.unique(np.asarray(kept_counts, dtype=np.int64), return_counts=True)
    if counts.size == 0:
        return chance_iou(cells, k)
    return float(np.average([chance_iou(cells, k, int(count)) for count in counts], weights=repeats))


def score_maps(
    maps: np.ndarray, objects: np.ndarray, valid: np.ndarray, config: ScoringConfig = ScoringConfig()
) -> tuple[np.ndarray, np.ndarray, float]:
    """(hi, mass, chance) of maps (layers, heads, gh, gw) against the object cells `objects` (gh, gw)
    bool, counting only the `valid` (gh, gw) cells (not processor padding). hi, mass: (layers, heads).
    chance: the expected IoU of random maps keeping as many cells as each scored head's binarized map, averaged
    over the scored heads (`binarized_chance`; for `area`, k of k cells).

    A map that is NaN (a layer without softmax attention, which is not scored) gets NaN hi and mass,
    never a number: such heads are left out of every ranking and layer score below."""
    cells = maps[..., valid]  # (layers, heads, valid cells)
    target = objects[valid]
    k = int(target.sum())
    if k == 0:
        raise InputError("the key object covers no patch of the image grid")
    scored = np.isfinite(cells).all(axis=-1)  # (layers, heads)
    hi, mass = np.full(scored.shape, np.nan), np.full(scored.shape, np.nan)
    kept = binarize(cells[scored], k, config)
    hi[scored] = iou(kept, target)
    mass[scored] = attention_mass(cells[scored], target)
    chance = (
        chance_iou(int(valid.sum()), k)
        if config.binarize == "area"
        else binarized_chance(kept.sum(axis=-1), int(valid.sum()), k)
    )
    return hi, mass, chance


def scored_layers(hi: np.ndarray) -> list[int]:
    """The layers of hi (layers, heads) that were scored (not NaN: a layer with softmax attention)."""
    return [int(layer) for layer in np.flatnonzero(np.isfinite(hi).any(axis=1))]


def layer_scores(hi: np.ndarray, config: ScoringConfig = ScoringConfig()) -> np.ndarray:
    """(layers,) score of each layer from hi (layers, heads): max / mean over heads, or topn.
    NaN for a layer that was not scored (all its heads NaN)."""
    unscored = ~np.isfinite(hi).any(axis=1)
    if config.layer_score == "max":
        return np.where(unscored, np.nan, np.max(np.where(np.isfinite(hi), hi, -np.inf), axis=1))
    if config.layer_score == "mean":
        return np.where(unscored, np.nan, np.nanmean(np.where(unscored[:, None], 0.0, hi), axis=1))
    top_n = config.top_n or 2 * hi.shape[1]
    top_heads = rank_heads(hi)[:top_n]
    counts = np.zeros(hi.shape[0])
    for layer, _ in top_heads:
        counts[layer] += 1
    return np.where(unscored, np.nan, counts)


def rank_heads(hi: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) pairs of hi (layers, heads) by HI descending, ties by layer then head; heads
    that were not scored (NaN) are left out."""
    layers, heads = np.unravel_index(np.arange(hi.size), hi.shape)
    order = np.lexsort((heads, layers, -hi.reshape(-1)))
    finite = np.isfinite(hi.reshape(-1))
    return [(int(layers[i]), int(heads[i])) for i in order if finite[i]]


def rank_layers(scores: np.ndarray) -> list[int]:
    """Layer indices by score descending, ties by layer index; layers not scored (NaN) are left out."""
    return [int(i) for i in np.lexsort((np.arange(scores.size), -scores)) if np.isfinite(scores[i])]


def every_head(hi: np.ndarray) -> list[tuple[int, int]]:
    """Every (layer, head) of hi (layers, heads): the scored ones by HI descending (`rank_heads`), then
    those not scored in layer, head order (for results that list every head)."""
    ranked = rank_heads(hi)
    return ranked + [(int(layer), int(head)) for layer, head in zip(*np.nonzero(~np.isfinite(hi)))]


def every_layer(scores: np.ndarray) -> list[int]:
    """Every layer of (layers,) scores: the scored ones by score descending (`rank_layers`), then
    those not scored in index order."""
    return rank_layers(scores) + [int(layer) for layer in np.flatnonzero(~np.isfinite(scores))]


def ranking_json(hi: np.ndarray, scores: np.ndarray, **columns: np.ndarray) -> dict[str, list]:
    """The part every score JSON shares (DESIGN 6): `scored_layers`; `heads`, every head best first (`every_head`)
    with its HI and each of `columns` ((layers, heads) arrays, in the order given); `layers`, every layer best
    first with its score. NaN (not scored) is written as null."""
    return {
        "scored_layers": scored_layers(hi),
        "heads": [
            {"layer": layer, "head": head, "hi": json_number(hi[layer, head])}
            | {name: json_number(values[layer, head]) for name, values in columns.items()}
            for layer, head in every_head(hi)
        ],
        "layers": [{"layer": layer, "score": json_number(scores[layer])} for layer in every_layer(scores)],
    }
