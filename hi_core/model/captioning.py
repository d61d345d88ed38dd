"""Captions the model writes: one image's description (`generate_description`, which a one-image
run scores when no text is given), and held-out evaluation: greedy captions (or answers) of many
images, each asked with its own prompt, scored against their references.

`generate_captions` builds each image's prefix with the family adapter (exactly as for one image),
pads the prefixes on the left so that every sequence ends where generation starts, and decodes
greedily in batches; images whose tensors cannot share a batch (tiles of other sizes) go alone. It
reads its images as it batches them, so held-out records stream from disk a batch at a time.
`evaluate_captions` scores the captions with `metrics.py` (BLEU-4, ROUGE-L, CIDEr, exact match,
METEOR where Java is installed; SPICE is skipped with a note) and keeps a few samples;
`evaluate_answers` scores closed-form VQA answers by answer accuracy (normalized exact match) with
its 95% Wilson interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..base.errors import InputError
from .batching import TOKEN_PAD_VALUES, pad_token_id
from .images import check_image_size
from .inputs import DEFAULT_PROMPT, check_text_fits, is_per_token, to_model_device
from .metrics import SPICE_NOTE, accuracy_interval, answer_correct, caption_metrics, meteor_score, normalize_caption

SAMPLES = 5  # captions kept in a run record


@dataclass(frozen=True)
class CaptionEvaluation:
    """Metrics of generated captions (or answers) against references, with notes on metrics not computed.

    captions: one {"id", "reference", "generated"} per evaluated record, in order, with the record's
    "prompt" when it has its own, and "correct" (bool) for VQA answers.
    intervals: {metric: {"low", "high"}} 95% intervals over the records, where computed (accuracy).
    """

    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    captions: list[dict[str, Any]] = field(default_factory=list)
    intervals: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.captions[:SAMPLES]


def _prefix(loaded: Any, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
    """The image's prefix for `prompt`, the prompt measured against the context before it is tokenized."""
    check_text_fits(loaded.model, prompt=prompt)
    return loaded.adapter.prefix_inputs(loaded.processor, image, prompt)


@torch.inference_mode()
def generate_description(
    loaded: Any, image: Image.Image, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64
) -> str:
    """The model's own description of the image (greedy decoding), to be scored afterwards."""
    check_image_size(image.size)
    prefix = to_model_device(_prefix(loaded, image, prompt), loaded.model)
    output = loaded.model.generate(**prefix, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, prefix["input_ids"].shape[1] :]
    text = loaded.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    if not text:
        raise InputError("the model generated an empty description; give the text to score instead")
    return text


def left_padded(prefixes: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch from single prefixes (batch axis 1): per-token tensors padded on the left (mask 0
    there), other tensors (images) concatenated along their first axis."""
    length = max(int(prefix["input_ids"].shape[1]) for prefix in prefixes)
    batch: dict[str, torch.Tensor] = {}
    for key in prefixes[0]:
        values = [prefix[key] for prefix in prefixes]
        per_token = all(is_per_token(v, p["input_ids"]) for v, p in zip(values, prefixes))
        if per_token:
            pad = pad_id if key == "input_ids" else TOKEN_PAD_VALUES.get(key, 0)
            batch[key] = torch.cat([F.pad(v, (length - v.shape[1], 0), value=pad) for v in values])
        else:
            batch[key] = torch.cat(values)
    return batch


def _groups(prefixes: Iterable[dict[str, torch.Tensor]], batch_size: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Prefixes batched together: consecutive ones whose image tensors have the same shape, each
    batch yielded as soon as the next prefix does not join it (one batch held at a time)."""

    def signature(prefix: dict[str, torch.Tensor]) -> tuple:
        return tuple(
            (key, tuple(value.shape[1:]))
            for key, value in prefix.items()
            if not is_per_token(value, prefix["input_ids"])
        )

    group: list[dict[str, torch.Tensor]] = []
    for prefix in prefixes:
        if group and (len(group) == batch_size or signature(group[0]) != signature(prefix)):
            yield group
            group = []
        group.append(prefix)
    if group:
        yield group


@torch.inference_mode()
def generate_captions(
    loaded: Any,
    images: Iterable[Image.Image],
    prompt: str | Iterable[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy captions of the images, in order (left-padded batches of up to `batch_size`).
    `prompt`: one for every image, or one per image (a VQA record's question). The images (and prompts)
    are taken one by one as batches are made, so an iterator that reads them from disk (held-out
    records) keeps one batch of images and prefixes in memory, not the whole set."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    pad_id = pad_token_id(tokenizer)
    pairs = zip(images, itertools.repeat(prompt)) if isinstance(prompt, str) else zip(images, prompt, strict=True)
    prefixes = (_prefix(loaded, image, text) for image, text in pairs)
    captions: list[str] = []
    for group in tqdm(_groups(prefixes, batch_size), desc="captions", unit="batch", disable=None, leave=False):
        batch = to_model_device(left_padded(group, pad_id), model)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        start = batch["input_ids"].shape[1]
        captions.extend(tokenizer.decode(sequence[start:], skip_special_tokens=True).strip() for sequence in output)
    return captions


def _samples(
    references: dict[str, str], generated: dict[str, str], prompts: dict[str, str] | None
) -> list[dict[str, Any]]:
    prompts = prompts or {}
    return [
        {
            "id": key,
            **({"prompt": prompts[key]} if key in prompts else {}),
            "reference": text,
            "generated": generated[key],
        }
        for key, text in references.items()
    ]


def evaluate_captions(
    references: dict[str, str], generated: dict[str, str], meteor: bool = True, prompts: dict[str, str] | None = None
) -> CaptionEvaluation:
    """Corpus metrics of `generated` (id -> caption) against one reference per id; `prompts`: the
    records' own prompts (id -> prompt, for those that have one), kept beside their captions."""
    refs = {key: [text] for key, text in references.items()}
    metrics = caption_metrics(refs, generated)
    metrics["exact"] = sum(
        normalize_caption(generated[key]) == normalize_caption(text) for key, text in references.items()
    ) / len(references)
    notes = [SPICE_NOTE]
    if meteor:
        value, note = meteor_score(refs, generated)
        if value is not None:
            metrics["meteor"] = value
        else:
            notes.append(note or "METEOR skipped")
    else:
        notes.append("METEOR not asked for")
    return CaptionEvaluation(metrics=metrics, notes=notes, captions=_samples(references, generated, prompts))


def evaluate_answers(
    references: dict[str, str], generated: dict[str, str], prompts: dict[str, str] | None = None
) -> CaptionEvaluation:
    """Closed-form VQA: answer accuracy (normalized exact match, `metrics.answer_correct`) of
    `generated` (id -> answer) against one reference answer per id, with its 95% Wilson interval
    over the records. The caption metrics are not computed: on one-word answers they say nothing
    that accuracy does not (and BLEU-4 is 0 for any answer shorter than four words)."""
    if set(references) != set(generated) or not generated:
        raise ValueError("references and answers must have the same, non-empty set of ids")
    captions = _samples(references, generated, prompts)
    for caption in captions:
        caption["correct"] = answer_correct(caption["reference"], caption["generated"])
    correct = sum(caption["correct"] for caption in captions)
    low, high = accuracy_interval(correct, len(captions))
    return CaptionEvaluation(
        metrics={"accuracy": correct / len(captions)},
        captions=captions,
        notes=[
            "answer accuracy: normalized exact match (the VQA evaluation's normalization), "
            "95% Wilson interval over the held-out records"
        ],
        intervals={"accuracy": {"low": low, "high": high}},
    )
