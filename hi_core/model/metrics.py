"""Caption metrics from pycocoevalcap: BLEU-4, ROUGE-L and CIDEr (pure Python, no Java), and
METEOR where Java is installed (pycocoevalcap's METEOR 1.5 jar runs in a Java subprocess); and the
closed-form VQA metric, answer accuracy: normalized exact match, with a 95% Wilson interval.

CIDEr's IDF comes from the evaluated references, so it is only meaningful over a corpus.
SPICE is not computed: it downloads Stanford CoreNLP at first use, which fails offline.
Captions are lower-cased and split on whitespace and punctuation before scoring.
"""

from __future__ import annotations

import logging
import re
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from scipy import stats

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")
SPICE_NOTE = "SPICE skipped: it needs Stanford CoreNLP, which pycocoevalcap downloads at first use"


def normalize_caption(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def caption_metrics(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """Corpus BLEU-4, ROUGE-L and CIDEr of `candidates` (id -> caption) against `references`."""
    if set(references) != set(candidates) or not candidates:
        raise ValueError("references and candidates must have the same, non-empty set of ids")
    gts = {key: [normalize_caption(r) for r in refs] for key, refs in references.items()}
    res = {key: [normalize_caption(c) or "empty"] for key, c in candidates.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider)}


def meteor_score(references: dict[str, list[str]], candidates: dict[str, str]) -> tuple[float | None, str | None]:
    """(corpus METEOR, None), or (None, why it was skipped) where Java is missing or fails."""
    if set(references) != set(candidates) or not candidates:
        raise ValueError("references and candidates must have the same, non-empty set of ids")
    if shutil.which("java") is None:
        return None, "METEOR skipped: Java is not installed (pycocoevalcap runs METEOR 1.5 in Java)"
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {key: [normalize_caption(r) for r in refs] for key, refs in references.items()}
    res = {key: [normalize_caption(c) or "empty"] for key, c in candidates.items()}
    try:
        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(gts, res)
        finally:
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    except (OSError, ValueError) as error:  # java failed to start or answered nothing
        logger.warning("METEOR failed: %s", error)
        return None, f"METEOR skipped: the Java METEOR process failed ({error})"
    return float(score), None


# --- closed-form VQA: answer accuracy -----------------------------------------------------------

# The VQA evaluation's normalization (Antol et al. 2015, vqaEval.py), on one reference answer:
# lower-case; punctuation to spaces ("t-shirt" -> "t shirt"), except a decimal point between two
# digits (kept) and a thousands separator (dropped); number words to digits; articles dropped.
_NUMBERS = dict(
    zip(
        ["none", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
        ["0", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
    )
)
_ARTICLES = {"a", "an", "the"}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it: "The Two circles." -> "2 circles"."""
    text = _PUNCTUATION.sub(" ", _THOUSANDS.sub("", text.lower()))
    words = [_NUMBERS.get(word, word) for word in text.split()]
    return " ".join(word for word in words if word not in _ARTICLES)


def answer_correct(reference: str, answer: str) -> bool:
    """Whether the answer equals the reference after normalization (an empty answer never does)."""
    normalized = normalize_answer(answer)
    return bool(normalized) and normalized == normalize_answer(reference)


def answer_accuracy(references: dict[str, str], answers: dict[str, str]) -> float:
    """Share of ids whose answer matches its reference (normalized exact match)."""
    if set(references) != set(answers) or not answers:
        raise ValueError("references and answers must have the same, non-empty set of ids")
    return sum(answer_correct(references[key], answers[key]) for key in references) / len(references)


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `correct / total`: unlike the normal approximation it
    stays inside [0, 1] and has a width at 0 or `total` correct (e.g. 10 of 10: [0.72, 1])."""
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct} of {total}")
    interval = stats.binomtest(correct, total).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)
