"""Caption metrics: perfect captions score highest; a wrong word lowers every metric. Answer accuracy:
the VQA normalization on hand-made cases, the share of matches, and its Wilson interval."""

from __future__ import annotations

import pytest

from scipy import stats

from hi_core.model.metrics import accuracy_interval, answer_accuracy, answer_correct, caption_metrics, normalize_answer, normalize_caption

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


@pytest.mark.parametrize("text, normalized", [
    ("Red", "red"), ("  red.  ", "red"), ("RED!", "red"), ("The circle", "circle"), ("a red circle", "red circle"),
    ("An apple", "apple"), ("yes, it is", "yes it is"), ("two", "2"), ("Ten", "10"), ("none", "0"),
    ("1,000", "1000"), ("3.5", "3.5"), ("3.", "3"), ("t-shirt", "t shirt"), ("top-left", "top left"),
    ("bottom   right", "bottom right"), ("\tleft\n", "left"), ("the", ""), ("?", ""), ("theme", "theme"),
])
def test_answers_are_normalized_as_the_vqa_evaluation_does(text, normalized):
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize("reference, answer, correct", [
    ("red", "Red.", True), ("circle", "the circle", True), ("yes", "Yes", True), ("2", "two", True),
    ("top left", "top-left", True), ("red", "red circle", False), ("red", "blue", False), ("no", "not", False),
    ("red", "", False), ("the", "a", False),  # an answer that normalizes to nothing is never right
])
def test_an_answer_is_right_when_it_equals_the_reference_after_normalization(reference, answer, correct):
    assert answer_correct(reference, answer) is correct


def test_answer_accuracy_is_the_share_of_matches():
    references = {"1": "red", "2": "circle", "3": "yes", "4": "2"}
    assert answer_accuracy(references, {"1": "Red", "2": "square", "3": "yes.", "4": "two"}) == 0.75
    assert answer_accuracy(references, {"1": "", "2": "", "3": "no", "4": "3"}) == 0.0
    with pytest.raises(ValueError):
        answer_accuracy(references, {"1": "red"})


@pytest.mark.parametrize("correct, total", [(0, 4), (3, 4), (10, 10), (37, 50)])
def test_the_accuracy_interval_is_wilsons(correct, total):
    low, high = accuracy_interval(correct, total)
    # the Wilson score interval by its formula: (p + z2/2n -+ z sqrt(p(1-p)/n + z2/4n2)) / (1 + z2/n)
    z, p = stats.norm.ppf(0.975), correct / total
    centre, half = p + z**2 / (2 * total), z * (p * (1 - p) / total + z**2 / (4 * total**2)) ** 0.5
    assert (low, high) == pytest.approx(((centre - half) / (1 + z**2 / total), (centre + half) / (1 + z**2 / total)), abs=1e-9)
    assert 0 <= low <= p <= high <= 1 and high - low > 0
