"""Layer selection: each strategy picks the right layers from a ranking; bad input is an InputError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hi_core.base.errors import InputError
from hi_core.method.layer_selection import Ranking, check_layer_choice, parse_layer_choice, read_ranking, select_layers

# layer scores of an 8-layer model: best 5, 2, 7, 0, ...; worst 3
SCORES = np.array([0.40, 0.20, 0.70, 0.05, 0.30, 0.90, 0.10, 0.50])
RANKING = Ranking.from_scores(SCORES, "test")


def test_ranking_orders_layers_by_score_descending_ties_by_index():
    assert RANKING.layers == (5, 2, 7, 0, 4, 1, 6, 3)
    assert list(RANKING.scores) == sorted(SCORES, reverse=True)
    assert Ranking.from_scores(np.array([0.5, 0.5, 0.7]), "t").layers == (2, 0, 1)


@pytest.mark.parametrize(
    "choice, k, expected",
    [
        ("top", 1, (5,)),
        ("top", 3, (2, 5, 7)),
        ("bottom", 1, (3,)),
        ("bottom", 3, (1, 3, 6)),
        ("all", 3, tuple(range(8))),
        ((6, 0, 4), 3, (0, 4, 6)),
        ((7,), 1, (7,)),
    ],
)
def test_strategies_pick_the_right_layers(choice, k, expected):
    assert select_layers(choice, 8, k, RANKING) == expected


def test_random_is_seeded_reproducible_and_needs_no_ranking():
    picks = [select_layers("random", 8, 3, None, seed) for seed in range(10)]
    assert picks == [select_layers("random", 8, 3, RANKING, seed) for seed in range(10)]
    assert all(len(set(p)) == 3 and list(p) == sorted(p) and all(0 <= l < 8 for l in p) for p in picks)
    assert len(set(picks)) > 1  # seeds differ


def test_parse_layer_choice():
    assert parse_layer_choice("top") == "top"
    assert parse_layer_choice(" 0,5 ,7") == (0, 5, 7)
    with pytest.raises(InputError, match="layers must be one of top, bottom, random, all"):
        parse_layer_choice("best")


@pytest.mark.parametrize(
    "choice, k, ranking, message",
    [
        ((0, 8), 1, RANKING, "layer 8 does not exist: the language model has layers 0..7"),
        ((1, 1), 1, RANKING, "repeat"),
        ("top", 9, RANKING, "k must be between 1 and the language model's 8 layers, got 9"),
        ("random", 0, None, "k must be between 1"),
        ("top", 2, None, "needs a ranking: give --ranking"),
        ("bottom", 2, Ranking.from_scores(np.zeros(28), "big.json"), "covers 28 layers but the model has 8"),
    ],
)
def test_bad_choices_are_input_errors(choice, k, ranking, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_layers(choice, 8, k, ranking)


def test_read_ranking_from_a_score_json(tmp_path):
    path = tmp_path / "score.json"
    path.write_text(json.dumps({"num_layers": 8, "layers": RANKING.to_json()["layers"]}))
    assert read_ranking(path).layers == RANKING.layers
    assert read_ranking(path).source == str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        (json.dumps({"heads": []}), "has no `layers` list"),
        (json.dumps({"layers": [{"layer": 0, "score": 1.0}, {"layer": 0, "score": 0.5}]}), "exactly once"),
        (json.dumps({"layers": [{"layer": "x"}]}), "needs an integer `layer`"),
        (json.dumps({"num_layers": 3, "layers": [{"layer": 0, "score": 1.0}]}), "says num_layers=3"),
    ],
)
def test_bad_ranking_files(tmp_path, content, message):
    path = tmp_path / "score.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_ranking(path)


@pytest.mark.parametrize("layers, k", [("top", 1), ("bottom", 8), ("random", 3), ("all", 0), ("all", 99), ("0,7", 0), ((2, 5), 1), ("top", 8)])
def test_check_layer_choice_accepts_what_select_layers_can_apply(layers, k):
    assert check_layer_choice(layers, 8, k) is None
    choice = parse_layer_choice(layers) if isinstance(layers, str) else layers
    assert len(select_layers(choice, 8, k, RANKING)) in (k, 8, 2)


@pytest.mark.parametrize(
    "layers, k, message",
    [
        ("top", 9, "k must be between 1 and the language model's 8 layers, got 9"),
        ("bottom", 0, "k must be between 1 and the language model's 8 layers, got 0"),
        ("random", 9, "got 9"),
        ("0,8", 1, "layer 8 does not exist: the language model has layers 0..7"),
        ((3, 3), 1, "repeat"),
        ("best", 1, "layers must be one of top, bottom, random, all"),
        ("", 1, "layers must be one of"),
    ],
)
def test_check_layer_choice_refuses_what_no_ranking_could_fix(layers, k, message):
    """The same errors select_layers gives with a ranking of the right size: no fake ranking needed."""
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_layer_choice(layers, 8, k)
    if layers not in ("best", ""):
        choice = parse_layer_choice(layers) if isinstance(layers, str) else layers
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            select_layers(choice, 8, k, RANKING)


# a hybrid model of 6 layers whose softmax-attention layers are 1, 3, 5 (the others NaN: not scored)
HYBRID_SCORES = np.array([np.nan, 0.2, np.nan, 0.7, np.nan, 0.4])
HYBRID = Ranking.from_scores(HYBRID_SCORES, "hybrid")
ADAPTABLE = (1, 3, 5)


def test_a_hybrid_ranking_orders_only_the_scored_layers_and_round_trips_through_json():
    assert HYBRID.layers == (3, 5, 1) and HYBRID.unscored == (0, 2, 4) and HYBRID.num_layers == 6
    data = json.loads(json.dumps(HYBRID.to_json(), allow_nan=False))
    assert data["layers"][3:] == [{"layer": 0, "score": None}, {"layer": 2, "score": None}, {"layer": 4, "score": None}]
    assert Ranking.from_json(data | {"num_layers": 6}, "hybrid") == HYBRID
    with pytest.raises(InputError, match="has no scored layer"):
        Ranking.from_json({"layers": [{"layer": 0, "score": None}]}, "empty")


@pytest.mark.parametrize("choice, k, expected", [("top", 2, (3, 5)), ("bottom", 1, (1,)), ("all", 0, ADAPTABLE), ((5, 1), 0, (1, 5))])
def test_selection_in_a_hybrid_model_picks_only_scored_layers(choice, k, expected):
    assert select_layers(choice, ADAPTABLE, k, HYBRID) == expected


def test_random_in_a_hybrid_model_picks_only_scored_layers_and_matches_a_full_model_by_seed():
    picks = {select_layers("random", ADAPTABLE, 2, None, seed) for seed in range(30)}
    assert set().union(*picks) == set(ADAPTABLE)
    assert select_layers("random", tuple(range(8)), 3, None, 4) == select_layers("random", 8, 3, None, 4)


@pytest.mark.parametrize(
    "choice, k, ranking, message",
    [
        ((0, 3), 1, HYBRID, "layer 0 cannot be adapted: LoRA goes only on the language model's 3 softmax-attention layers (1, 3, 5)"),
        ("top", 4, HYBRID, "k must be between 1 and the language model's 3 softmax-attention layers (1, 3, 5), got 4"),
        ("top", 1, RANKING, "ranks layers 0, 1, 2, 3, 4, 5, 6, 7 but the model's scored layers are 1, 3, 5"),
    ],
)
def test_a_hybrid_models_other_layers_are_refused(choice, k, ranking, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_layers(choice, ADAPTABLE, k, ranking)
