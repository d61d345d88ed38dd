"""Caption metrics from pycocoevalcap: BLEU-4, ROUGE-L and CIDEr (pure Python, no Java).

CIDEr's IDF comes from the evaluated references, so it is only meaningful over a corpus.
Captions are lower-cased and split on whitespace and punctuation before scoring.
"""

from __future__ import annotations

import re

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_WORD = re.compile(r"[a-z0-9]+")


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
