"""Does a ranking of heads predict what removing a head does? The statistics of `validate`, on plain arrays.

Every function takes one score per head (HI, or a baseline ranking's score), the measured effect of removing each
head (e.g. the rise in the scored tokens' loss), and, where depth matters, each head's layer. Heads are the
unit: n = the number of heads scored.

- `rank_correlations`: Spearman's rho and Kendall's tau-b (SciPy's), with their asymptotic p-values;
- `bootstrap_heads` / `bootstrap_records`: percentile intervals of Spearman's rho, resampling heads (which heads
  happen to be in the model) or records (which images the effect was measured on: `effects` per record);
- `layer_permutation_test`: the scores permuted within each layer (depth held fixed), so the null keeps any
  relation that runs through depth alone; a small p says the score ranks heads *within* layers;
- `layer_partial_correlation`: Spearman's rho with layer partialled out: both variables' ranks, minus their
  layer's mean rank, correlated, with a t-test on n - 1 - layers degrees of freedom.

A constant score or effect has no rank correlation: rho and tau are NaN then (SciPy's convention), and the
intervals and tests say so with NaN rather than a number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..base.errors import InputError


def _check(scores: np.ndarray, effects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, effects = np.asarray(scores, dtype=float), np.asarray(effects, dtype=float)
    if scores.ndim != 1 or scores.shape != effects.shape[:1]:
        raise InputError(
            f"need one score per head and one effect per head, got shapes {scores.shape} and {effects.shape}"
        )
    if scores.size < 3:
        raise InputError(f"a rank correlation needs at least 3 heads, got {scores.size}")
    if not (np.isfinite(scores).all() and np.isfinite(effects).all()):
        raise InputError("scores and effects must be finite numbers (leave heads that were not scored out)")
    return scores, effects


def _spearman(scores: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis, one per leading index (0-d for 1-d inputs): the Pearson correlation of
    average ranks; NaN for a constant variable."""
    a, b = stats.rankdata(scores, axis=-1), stats.rankdata(effects, axis=-1)
    a, b = a - a.mean(axis=-1, keepdims=True), b - b.mean(axis=-1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(axis=-1) / np.where(norm > 0, norm, 1), np.nan)


@dataclass(frozen=True)
class Correlation:
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    n: int


def rank_correlations(scores: np.ndarray, effects: np.ndarray) -> Correlation:
    """Spearman's rho and Kendall's tau-b between scores and effects, with SciPy's two-sided p-values."""
    scores, effects = _check(scores, effects)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = stats.spearmanr(scores, effects)
        tau = stats.kendalltau(scores, effects)
    return Correlation(float(rho.statistic), float(rho.pvalue), float(tau.statistic), float(tau.pvalue), scores.size)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_heads(
    scores: np.ndarray, effects: np.ndarray, draws: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """A percentile interval of Spearman's rho, resampling heads with replacement."""
    scores, effects = _check(scores, effects)
    picks = np.random.default_rng(seed).integers(0, scores.size, size=(draws, scores.size))
    return _interval(_spearman(scores[picks], effects[picks]), confidence)


def bootstrap_records(
    scores: np.ndarray, effects: np.ndarray, draws: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """A percentile interval of Spearman's rho between scores and the effect averaged over records, resampling the
    records: `effects` is (heads, records), each head's effect on each record."""
    effects = np.asarray(effects, dtype=float)
    if effects.ndim != 2 or effects.shape[1] < 2:
        raise InputError(f"need effects of shape (heads, records) with at least 2 records, got {effects.shape}")
    scores, effects = _check(scores, effects)
    picks = np.random.default_rng(seed).integers(0, effects.shape[1], size=(draws, effects.shape[1]))
    means = effects[:, picks].mean(axis=-1).T  # (draws, heads)
    return _interval(_spearman(np.broadcast_to(scores, means.shape), means), confidence)


@dataclass(frozen=True)
class PermutationTest:
    statistic: float  # Spearman's rho of the data as they are
    p_value: float  # two-sided: the share of permutations at least as far from zero (the data counted as one)
    permutations: int


def layer_permutation_test(
    scores: np.ndarray, effects: np.ndarray, layers: np.ndarray, permutations: int = 10_000, seed: int = 0
) -> PermutationTest:
    """Spearman's rho against its distribution when the scores are shuffled within each layer.

    Shuffling only within layers keeps every layer's set of scores, so a correlation that comes from depth alone
    (early layers high on both, say) survives in the null, and only the ordering of heads inside their layers is
    tested. With one layer this is the ordinary permutation test of rho."""
    scores, effects = _check(scores, effects)
    layers = np.asarray(layers)
    if layers.shape != scores.shape:
        raise InputError(f"need one layer per head, got {layers.shape} for {scores.shape[0]} heads")
    observed = float(_spearman(scores, effects))
    if not np.isfinite(observed):
        return PermutationTest(observed, float("nan"), permutations)
    rng = np.random.default_rng(seed)
    shuffled = np.broadcast_to(scores, (permutations, scores.size)).copy()
    for layer in np.unique(layers):
        where = np.flatnonzero(layers == layer)
        shuffled[:, where] = rng.permuted(shuffled[:, where], axis=1)
    null = _spearman(shuffled, effects)
    extreme = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    return PermutationTest(observed, (extreme + 1) / (permutations + 1), permutations)


@dataclass(frozen=True)
class PartialCorrelation:
    rho: float  # Spearman's rho with layer partialled out
    p_value: float  # two-sided t-test on `dof` degrees of freedom
    dof: int


def layer_partial_correlation(scores: np.ndarray, effects: np.ndarray, layers: np.ndarray) -> PartialCorrelation:
    """Spearman's rho between scores and effects with layer partialled out (layer as a categorical covariate):
    the ranks of each, minus their layer's mean rank, correlated. Degrees of freedom: heads - layers - 1 (each
    layer's mean costs one; Fisher's rule for partial correlations)."""
    scores, effects = _check(scores, effects)
    layers = np.asarray(layers)
    if layers.shape != scores.shape:
        raise InputError(f"need one layer per head, got {layers.shape} for {scores.shape[0]} heads")
    names, index = np.unique(layers, return_inverse=True)
    dof = scores.size - names.size - 1
    if dof < 1:
        raise InputError(
            f"{scores.size} heads in {names.size} layers leave no degrees of freedom for a partial correlation"
        )

    def within(values: np.ndarray) -> np.ndarray:
        ranks = stats.rankdata(values)
        means = np.bincount(index, ranks) / np.bincount(index)
        return ranks - means[index]

    a, b = within(scores), within(effects)
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    if norm == 0:
        return PartialCorrelation(float("nan"), float("nan"), dof)
    rho = float(np.clip((a * b).sum() / norm, -1.0, 1.0))
    t = rho * np.sqrt(dof / max(1 - rho * rho, 1e-300))
    return PartialCorrelation(rho, float(2 * stats.t.sf(abs(t), dof)), dof)


def bootstrap_difference(
    first: np.ndarray,
    second: np.ndarray,
    effects: np.ndarray,
    draws: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(difference, low, high): Spearman's rho of `first` with the effects minus that of `second`, and a percentile
    interval of it, resampling heads with replacement (the same heads for both: a paired comparison)."""
    first, effects = _check(first, effects)
    second, _ = _check(second, effects)
    picks = np.random.default_rng(seed).integers(0, effects.size, size=(draws, effects.size))
    differences = _spearman(first[picks], effects[picks]) - _spearman(second[picks], effects[picks])
    low, high = _interval(differences, confidence)
    return float(_spearman(first, effects) - _spearman(second, effects)), low, high
