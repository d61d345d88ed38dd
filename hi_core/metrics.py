"""Caption metrics from pycocoevalcap: BLEU-4, ROUGE-L and CIDEr (pure Python, no Java), and
METEOR where Java is installed (pycocoevalcap's METEOR 1.5 jar runs in a Java subprocess).

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
