"""The statistics of `validate` against SciPy and against independent computations on known data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hi_core.base.errors import InputError
from hi_core.causal.validation_stats import (
    bootstrap_difference,
    bootstrap_heads,
    bootstrap_records,
    layer_partial_correlation,
    layer_permutation_test,
    rank_correlations,
)


def _heads(seed: int = 0, layers: int = 4, heads: int = 12):
    rng = np.random.default_rng(seed)
    layer = np.repeat(np.arange(layers), heads)
    return rng, layer


def test_rank_correlations_are_scipys_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    effects = scores + rng.normal(0, 2, 40)
    found = rank_correlations(scores, effects)
    assert found.spearman == pytest.approx(stats.spearmanr(scores, effects).statistic, abs=1e-12)
    assert found.spearman_p == pytest.approx(stats.spearmanr(scores, effects).pvalue, rel=1e-9)
    assert found.kendall == pytest.approx(stats.kendalltau(scores, effects).statistic, abs=1e-12)
    assert found.n == 40


def test_bootstrap_over_heads_is_the_loop_over_scipy():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=30)
    effects = scores + rng.normal(size=30)
    low, high = bootstrap_heads(scores, effects, draws=300, seed=5, confidence=0.9)
    picks = np.random.default_rng(5).integers(0, 30, size=(300, 30))
    rhos = [stats.spearmanr(scores[p], effects[p]).statistic for p in picks]
    assert (low, high) == pytest.approx(tuple(np.percentile(rhos, [5, 95])), abs=1e-9)
    assert low < rank_correlations(scores, effects).spearman < high


def test_bootstrap_over_records_is_the_loop_over_scipy():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=20)
    effects = scores[:, None] + rng.normal(0, 3, (20, 15))  # (heads, records)
    low, high = bootstrap_records(scores, effects, draws=200, seed=7)
    picks = np.random.default_rng(7).integers(0, 15, size=(200, 15))
    rhos = [stats.spearmanr(scores, effects[:, p].mean(axis=1)).statistic for p in picks]
    assert (low, high) == pytest.approx(tuple(np.percentile(rhos, [2.5, 97.5])), abs=1e-9)


def test_permutation_within_one_layer_is_scipys_permutation_test():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=25)
    effects = 0.4 * scores + rng.normal(size=25)
    ours = layer_permutation_test(scores, effects, np.zeros(25, int), permutations=5000, seed=1)
    theirs = stats.permutation_test((scores, effects), lambda x, y: stats.spearmanr(x, y).statistic,
                                    permutation_type="pairings", n_resamples=5000, random_state=1, vectorized=False)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, abs=0.02)  # two Monte Carlo estimates of one p-value


def test_depth_alone_is_not_credited_within_layers():
    """Scores and effects that both follow the layer, and nothing else: a strong pooled rho, but the within-layer
    test and the layer-partial correlation find nothing; add a within-layer relation and both find it."""
    rng, layer = _heads(6)
    scores = layer + rng.normal(0, 0.3, layer.size)
    effects = layer + rng.normal(0, 0.3, layer.size)
    assert rank_correlations(scores, effects).spearman > 0.7
    assert layer_permutation_test(scores, effects, layer, permutations=4000).p_value > 0.05
    assert abs(layer_partial_correlation(scores, effects, layer).rho) < 0.3

    effects = layer + 3 * (scores - layer) + rng.normal(0, 0.3, layer.size)  # within each layer too
    assert layer_permutation_test(scores, effects, layer, permutations=4000).p_value < 0.001
    partial = layer_partial_correlation(scores, effects, layer)
    assert partial.rho > 0.8 and partial.p_value < 1e-6


def test_layer_partial_correlation_is_the_residual_correlation_of_ranks():
    rng, layer = _heads(8, layers=3, heads=10)
    scores, effects = rng.normal(size=30) + layer, rng.normal(size=30) - layer + 0.5 * rng.normal(size=30)
    dummies = np.eye(3)[layer]
    residual = [r - dummies @ np.linalg.lstsq(dummies, r, rcond=None)[0] for r in (stats.rankdata(scores), stats.rankdata(effects))]
    expected = stats.pearsonr(*residual).statistic
    found = layer_partial_correlation(scores, effects, layer)
    assert found.rho == pytest.approx(expected, abs=1e-12)
    assert found.dof == 30 - 3 - 1
    t = expected * np.sqrt(found.dof / (1 - expected**2))
    assert found.p_value == pytest.approx(2 * stats.t.sf(abs(t), found.dof), rel=1e-9)


def test_constant_and_bad_inputs():
    assert np.isnan(rank_correlations(np.ones(5), np.arange(5.0)).spearman)
    assert np.isnan(layer_permutation_test(np.ones(6), np.arange(6.0), np.zeros(6, int), permutations=10).p_value)
    with pytest.raises(InputError, match="at least 3 heads"):
        rank_correlations(np.ones(2), np.ones(2))
    with pytest.raises(InputError, match="finite"):
        rank_correlations(np.array([1.0, np.nan, 2.0]), np.ones(3))
    with pytest.raises(InputError, match="degrees of freedom"):
        layer_partial_correlation(np.arange(4.0), np.arange(4.0), np.array([0, 1, 2, 3]))


def test_paired_difference_of_two_rankings():
    rng = np.random.default_rng(9)
    effects = rng.normal(size=40)
    good, poor = effects + rng.normal(0, 0.3, 40), rng.normal(size=40)
    difference, low, high = bootstrap_difference(good, poor, effects, draws=500, seed=2)
    expected = stats.spearmanr(good, effects).statistic - stats.spearmanr(poor, effects).statistic
    assert difference == pytest.approx(expected, abs=1e-12)
    assert 0 < low < difference < high
    same, low, high = bootstrap_difference(good, good, effects, draws=50)
    assert same == low == high == 0
