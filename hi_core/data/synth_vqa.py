"""A closed-form VQA dataset of generated scenes, in the dataset format (DESIGN 5).

One record per scene: `prompt` is the question, `text` its templated answer ("red", "top left",
"yes"), `mask` the mask of the object the question is about (`synth.make_question`; for a "no" to
"Is there a blue star?", the scene's one star, whose colour was checked), and `kind` the question
kind (an extra field: readers ignore it, per-kind reports use it). No `key_phrase`: the answer is
the whole text, so HI scores all of its tokens. The kinds asked (by default the four the demo model
learned, `QUESTION_KINDS`; `NEW_KINDS` make a task it never saw) take turns (record i asks
`kinds[i % len(kinds)]`), so every kind has the same share; the same seed and kinds write the same files.
(The captioning set, `datasets.write_synthetic`, is the same scenes described.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..base.errors import InputError, check_choice, check_whole
from .datasets import write_generated
from .synth import QUESTION_KINDS, QuestionKind, make_vqa


def write_synthetic_vqa(
    folder: str | Path,
    n: int = 100,
    seed: int = 0,
    size: int = 96,
    max_objects: int = 3,
    kinds: Sequence[str] = QUESTION_KINDS,
) -> Path:
    """Write `n` generated scenes with one question each (images/, masks/, data.jsonl) to `folder`,
    the question kinds taking turns."""
    check_whole("n", n)
    kinds = tuple(kinds)
    if not kinds:
        raise InputError("give at least one question kind")
    for kind in kinds:
        check_choice("kind", kind, QuestionKind)
    rng = np.random.default_rng(seed)

    def records():
        for index in range(n):
            kind = kinds[index % len(kinds)]
            scene, question = make_vqa(rng, kind, size=size, max_objects=max_objects)
            yield (
                f"synth-vqa-{seed}-{index:05d}",
                scene.image,
                scene.masks[question.target],
                {"text": question.answer, "prompt": question.text, "kind": question.kind},
            )

    return write_generated(folder, records())
