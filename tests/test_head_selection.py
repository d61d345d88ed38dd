"""Head selection: strategies over a head ranking, the score JSON read back, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hi_core.base.errors import InputError
from hi_core.method.head_selection import (
    HeadRanking,
    check_head_choice,
    format_heads,
    parse_head_choice,
    read_head_ranking,
    select_heads,
)

HI = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.8]])  # ranking: 0:1, 1:2, 1:0, 0:2, 1:1, 0:0


def test_ranking_orders_heads_by_hi_and_leaves_unscored_layers_out():
    ranking = HeadRanking.from_hi(HI, "test")
    assert ranking.heads == ((0, 1), (1, 2), (1, 0), (0, 2), (1, 1), (0, 0))
    assert ranking.scores[0] == 0.9
    hybrid = HeadRanking.from_hi(np.vstack([HI[:1], np.full((1, 3), np.nan)]), "hybrid")
    assert hybrid.heads == ((0, 1), (0, 2), (0, 0)) and hybrid.num_layers == 2


def test_top_bottom_random_and_lists():
    ranking = HeadRanking.from_hi(HI, "test")
    assert select_heads("top", [0, 1], 3, 2, ranking) == ((0, 1), (1, 2))
    assert select_heads("bottom", [0, 1], 3, 2, ranking) == ((0, 0), (1, 1))
    first, again, other = (select_heads("random", [0, 1], 3, 3, seed=s) for s in (0, 0, 1))
    assert first == again and len(set(first)) == 3 and first == tuple(sorted(first))
    assert any(select_heads("random", [0, 1], 3, 3, seed=s) != first for s in range(1, 6))
    assert select_heads(parse_head_choice("1:2,0:0"), [0, 1], 3, 1) == ((0, 0), (1, 2))
    assert set(select_heads("random", [1], 3, 3, seed=0)) == {(1, 0), (1, 1), (1, 2)}  # only scored layers


def test_score_json_round_trip(tmp_path):
    ranking = HeadRanking.from_hi(HI, "test")
    score = {"num_layers": 2, "num_heads": 3,
             "heads": [{"layer": l, "head": h, "hi": s, "mass": 0.0} for (l, h), s in zip(ranking.heads, ranking.scores)]}
    path = tmp_path / "score.json"
    path.write_text(json.dumps(score))
    assert read_head_ranking(path).heads == ranking.heads
    assert HeadRanking.from_json(ranking.to_json(), "again").heads == ranking.heads
    assert parse_head_choice(format_heads(ranking.heads[:2])) == ranking.heads[:2]


@pytest.mark.parametrize("text, message", [
    ("best", "heads must be one of"), ("1-2", "heads must be one of"), ("3:0", "layer 3 is not a scored layer"),
    ("0:3", "heads 0..2"), ("0:1,0:1", "repeat a head"),
])
def test_bad_choices_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        check_head_choice(text, [0, 1], 3, 1)


def test_bad_k_ranking_and_files(tmp_path):
    with pytest.raises(InputError, match="between 1 and"):
        check_head_choice("top", [0, 1], 3, 7)
    with pytest.raises(InputError, match="needs a ranking"):
        select_heads("top", [0, 1], 3, 2)
    with pytest.raises(InputError, match="another model"):
        select_heads("top", [0, 1, 2], 3, 2, HeadRanking.from_hi(HI, "small"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not JSON"):
        read_head_ranking(tmp_path / "bad.json")
    with pytest.raises(InputError, match="no `heads` list"):
        HeadRanking.from_json({"layers": []}, "layers only")
    with pytest.raises(InputError, match="of a 2 x 3 model"):
        HeadRanking.from_json({"num_layers": 2, "num_heads": 3, "heads": [{"layer": 2, "head": 0, "hi": 0.1}]}, "x")
