"""Scoring: binarization, HI, mass, chance, layer scores, rankings (pure NumPy, property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hi_core.base.errors import InputError
from hi_core.method.scoring import (
    ScoringConfig,
    attention_mass,
    binarize,
    chance_iou,
    head_impact,
    iou,
    layer_scores,
    otsu_threshold,
    rank_heads,
    rank_layers,
    score_maps,
)

finite = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32)


@st.composite
def map_and_object(draw, max_cells=40):
    cells = draw(st.integers(2, max_cells))
    maps = draw(arrays(np.float32, (3, cells), elements=finite))
    target = draw(arrays(bool, cells, elements=st.booleans()))
    if not target.any():
        target[draw(st.integers(0, cells - 1))] = True
    return maps, target


@given(map_and_object(), st.sampled_from(["area", "quantile", "otsu"]))
def test_head_impact_is_an_iou_in_unit_interval(case, method):
    maps, target = case
    hi = head_impact(maps, target, ScoringConfig(binarize=method))
    assert hi.shape == (3,)
    assert np.all((hi >= 0) & (hi <= 1))


@given(map_and_object(), st.sampled_from(["area", "quantile", "otsu"]))
def test_map_equal_to_the_mask_scores_one(case, method):
    _, target = case
    assume(method == "area" or not target.all())  # a constant map has no threshold between classes
    maps = target.astype(np.float32)[None]
    if method == "quantile":
        # The q-quantile of a 0/1 map falls on 1 only when at least 1 - q of the cells are 1.
        config = ScoringConfig(binarize="quantile", quantile=max(0.01, 1 - target.mean() - 1e-6))
    else:
        config = ScoringConfig(binarize=method)
    assert head_impact(maps, target, config)[0] == pytest.approx(1.0)


@given(map_and_object())
def test_area_binarization_keeps_k_patches_with_the_highest_values(case):
    maps, target = case
    k = int(target.sum())
    kept = binarize(maps, k)
    assert np.all(kept.sum(axis=-1) == k)
    for row, keep in zip(maps, kept):
        if keep.all():  # k is every cell: nothing is left out to compare with
            assert k == row.size
        else:
            assert row[keep].min() >= row[~keep].max()


def test_area_binarization_breaks_ties_by_token_order():
    kept = binarize(np.array([[0.5, 0.2, 0.5, 0.5]]), 2)
    np.testing.assert_array_equal(kept, [[True, False, True, False]])


def test_quantile_binarization_keeps_values_at_or_above_the_quantile():
    values = np.arange(10, dtype=float)[None]
    kept = binarize(values, 1, ScoringConfig(binarize="quantile", quantile=0.8))
    np.testing.assert_array_equal(kept[0], values[0] >= np.quantile(values[0], 0.8))
    assert kept.sum() == 2


def test_otsu_separates_two_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.01, 50), rng.normal(0.9, 0.01, 10)])
    threshold = otsu_threshold(values)
    assert values[:50].max() <= threshold < values[50:].min()
    assert binarize(values[None], 1, ScoringConfig(binarize="otsu"))[0].sum() == 10


@given(map_and_object())
def test_mass_is_the_share_on_object_cells(case):
    maps, target = case
    mass = attention_mass(maps, target)
    for row, value in zip(maps, mass):
        total = row.sum(dtype=np.float64)
        expected = row[target].sum(dtype=np.float64) / total if total > 0 else 0.0
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert np.all((mass >= 0) & (mass <= 1 + 1e-6))


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_chance_equals_monte_carlo_estimate(case):
    cells, k = case
    rng = np.random.default_rng(cells * 1000 + k)
    target = np.zeros(cells, dtype=bool)
    target[:k] = True
    draws = 20000
    picks = np.argsort(rng.random((draws, cells)), axis=1)[:, :k]
    kept = np.zeros((draws, cells), dtype=bool)
    np.put_along_axis(kept, picks, True, axis=1)
    estimate = iou(kept, target).mean()
    assert chance_iou(cells, k) == pytest.approx(estimate, abs=4 * iou(kept, target).std() / np.sqrt(draws) + 1e-9)


@pytest.mark.parametrize("binarize", ["area", "quantile", "otsu"])
@pytest.mark.parametrize("shape", [(6, 8), (24, 24)])
def test_chance_follows_the_binarization(binarize, shape):
    """`score_maps`'s chance is the mean IoU that random maps get under the same binarization: heads whose maps are
    random (i.i.d. values, so the cells a binarization keeps are a uniform random set of its own size), scored as
    heads are, have a mean HI equal to the chance within Monte Carlo error."""
    rng = np.random.default_rng(shape[0])
    objects = np.zeros(shape, dtype=bool)
    objects[1:4, 2:6] = True  # 12 cells
    valid = np.ones(shape, dtype=bool)
    valid[-1] = False  # a row of padding, not counted
    maps = rng.gamma(0.5, size=(40, 100) + shape)  # skewed, so Otsu and the quantile keep varying counts
    config = ScoringConfig(binarize=binarize, quantile=0.8)
    hi, _, chance = score_maps(maps, objects, valid, config)
    assert chance == pytest.approx(hi.mean(), abs=4 * hi.std() / np.sqrt(hi.size))
    if binarize != "area":  # a different number of cells than k is kept, so k-of-k would be the wrong chance
        k, cells = int(objects[valid].sum()), int(valid.sum())
        assert abs(chance - chance_iou(cells, k)) > 8 * hi.std() / np.sqrt(hi.size)


def test_chance_edge_cases():
    assert chance_iou(10, 10) == pytest.approx(1.0)
    assert chance_iou(10, 3, kept=0) == 0.0
    assert chance_iou(10, 3, kept=10) == pytest.approx(0.3)  # every cell kept: IoU = k / cells
    assert chance_iou(100, 1) == pytest.approx(0.01)


def test_empty_object_is_an_input_error():
    with pytest.raises(InputError, match="covers no patch"):
        head_impact(np.ones((1, 4)), np.zeros(4, dtype=bool))


def test_layer_scores_max_mean_topn():
    hi = np.array([[0.1, 0.9, 0.2], [0.5, 0.6, 0.7], [0.0, 0.05, 0.3]])
    np.testing.assert_allclose(layer_scores(hi, ScoringConfig(layer_score="max")), [0.9, 0.7, 0.3])
    np.testing.assert_allclose(layer_scores(hi, ScoringConfig(layer_score="mean")), hi.mean(axis=1))
    # top 4 heads overall: 0.9 (L0), 0.7, 0.6, 0.5 (L1) -> counts 1, 3, 0
    np.testing.assert_allclose(layer_scores(hi, ScoringConfig(layer_score="topn", top_n=4)), [1, 3, 0])
    # default N = 2 x heads = 6: adds 0.3 (L2) and 0.3? no: 0.2 (L0) vs 0.3 (L2) -> 0.3 (L2), then 0.2 (L0)
    np.testing.assert_allclose(layer_scores(hi, ScoringConfig(layer_score="topn")), [2, 3, 1])


@given(arrays(np.float64, (4, 3), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])))
def test_rank_heads_is_sorted_by_hi_then_layer_then_head(hi):
    ranked = rank_heads(hi)
    assert sorted(ranked) == [(l, h) for l in range(4) for h in range(3)]
    keys = [(-hi[l, h], l, h) for l, h in ranked]
    assert keys == sorted(keys)


def test_rank_layers_descending_ties_by_index():
    assert rank_layers(np.array([0.2, 0.9, 0.2, 0.5])) == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"binarize": "median"}, "binarize must be one of area, quantile, otsu"),
        ({"layer_score": "sum"}, "layer_score must be one of max, mean, topn"),
        ({"quantile": 1.5}, "quantile must be strictly between 0 and 1, got 1.5"),
        ({"quantile": float("nan")}, "quantile must be strictly between 0 and 1, got nan"),
        ({"quantile": float("inf")}, "quantile must be strictly between 0 and 1, got inf"),
        ({"quantile": "0.5"}, "quantile must be strictly between 0 and 1, got '0.5'"),
        ({"top_n": 0}, "top_n must be a whole number of at least 1"),
        ({"top_n": float("nan")}, "top_n must be a whole number of at least 1, got nan"),
    ],
)
def test_scoring_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        ScoringConfig(**kwargs)


@pytest.mark.parametrize("binarize, layer_score", [("area", "max"), ("quantile", "mean"), ("otsu", "topn")])
def test_nan_maps_are_not_scored_and_left_out_of_every_ranking(binarize, layer_score):
    """A layer without softmax attention (NaN maps) keeps its index: NaN HI, mass and layer score, in no ranking."""
    rng = np.random.default_rng(0)
    maps = rng.random((3, 2, 4, 4))
    maps[1] = np.nan
    objects, valid = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    objects[:2, :2] = True
    config = ScoringConfig(binarize=binarize, layer_score=layer_score)
    hi, mass, _ = score_maps(maps, objects, valid, config)
    alone, alone_mass, _ = score_maps(maps[[0, 2]], objects, valid, config)
    assert np.isnan(hi[1]).all() and np.isnan(mass[1]).all()
    np.testing.assert_array_equal(hi[[0, 2]], alone)
    np.testing.assert_array_equal(mass[[0, 2]], alone_mass)
    scores = layer_scores(hi, config)
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2]]).all()
    assert {layer for layer, _ in rank_heads(hi)} == {0, 2} and len(rank_heads(hi)) == 4
    assert sorted(rank_layers(scores)) == [0, 2]
