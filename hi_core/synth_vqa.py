"""A closed-form VQA dataset of generated scenes, in the dataset format (DESIGN 5).

One record per scene: `prompt` is the question, `text` its templated answer ("red", "top left",
"yes"), `mask` the mask of the object the question is about (`synth.make_question`; for a "no" to
"Is there a blue star?", the scene's one star, whose colour was checked), and `kind` the question
kind (an extra field: readers ignore it, per-kind reports use it). No `key_phrase`: the answer is
the whole text, so HI scores all of its tokens. The kinds take turns (record i asks
`QUESTION_KINDS[i % 4]`), so every kind has the same share; the same seed writes the same files.
(The captioning set, `datasets.write_synthetic`, is the same scenes described.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import write_generated
from .errors import InputError
from .synth import QUESTION_KINDS, make_vqa


def write_synthetic_vqa(folder: str | Path, n: int = 100, seed: int = 0, size: int = 96, max_objects: int = 3) -> Path:
    """Write `n` generated scenes with one question each (images/, masks/, data.jsonl) to `folder`."""
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)

    def records():
        for index in range(n):
            kind = QUESTION_KINDS[index % len(QUESTION_KINDS)]
            scene, question = make_vqa(rng, kind, size=size, max_objects=max_objects)
            yield (f"synth-vqa-{seed}-{index:05d}", scene.image, scene.masks[question.target],
                   {"text": question.answer, "prompt": question.text, "kind": question.kind})

    return write_generated(folder, records())
