"""Caption metrics: perfect captions score highest; a wrong word lowers every metric."""

from __future__ import annotations

import pytest

from hi_core.metrics import caption_metrics, normalize_caption

REFS = {"1": ["a big red circle at the top"], "2": ["a small blue star at the left"], "3": ["a big green square at the center"]}


def test_perfect_captions_beat_wrong_ones():
    perfect = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()})
    wrong = caption_metrics(REFS, {"1": "a big red circle at the top", "2": "a small red star at the left", "3": "a dog"})
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    for name in ("bleu4", "rouge_l", "cider"):
        assert wrong[name] < perfect[name]


def test_normalization_and_id_mismatch():
    assert normalize_caption("A Big, red circle.") == "a big red circle"
    with pytest.raises(ValueError):
        caption_metrics(REFS, {"1": "a"})
