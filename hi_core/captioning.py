"""Captions the model writes: one image's description (`generate_description`, which a one-image
run scores when no text is given), and held-out caption evaluation: greedy captions of many images,
scored against their references.

`generate_captions` builds each image's prefix with the family adapter (exactly as for one image),
pads the prefixes on the left so that every sequence ends where generation starts, and decodes
greedily in batches; images whose tensors cannot share a batch (tiles of other sizes) go alone. It
reads its images as it batches them, so held-out records stream from disk a batch at a time.
`evaluate_captions` scores the captions with `metrics.py` (BLEU-4, ROUGE-L, CIDEr, exact match,
METEOR where Java is installed; SPICE is skipped with a note) and keeps a few samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .batching import TOKEN_PAD_VALUES, pad_token_id
from .errors import InputError
from .inputs import DEFAULT_PROMPT, model_image, to_model_device
from .metrics import SPICE_NOTE, caption_metrics, meteor_score, normalize_caption

SAMPLES = 5  # captions kept in a run record


@dataclass(frozen=True)
class CaptionEvaluation:
    """Metrics of generated captions against references, with notes on metrics not computed.

    captions: one {"id", "reference", "generated"} per evaluated record, in order.
    """

    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    captions: list[dict[str, str]] = field(default_factory=list)

    @property
    def samples(self) -> list[dict[str, str]]:
        return self.captions[:SAMPLES]


@torch.inference_mode()
def generate_description(loaded: Any, image: Image.Image, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64) -> str:
    """The model's own description of the image (greedy decoding), to be scored afterwards."""
    image = model_image(loaded.adapter, loaded.processor, image)
    prefix = to_model_device(loaded.adapter.prefix_inputs(loaded.processor, image, prompt), loaded.model)
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
        per_token = all(v.dim() == 2 and v.shape == p["input_ids"].shape for v, p in zip(values, prefixes))
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
        return tuple((key, tuple(value.shape[1:])) for key, value in prefix.items() if not (value.dim() == 2 and value.shape == prefix["input_ids"].shape))

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
    loaded: Any, images: Iterable[Image.Image], prompt: str, max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy captions of the images, in order (left-padded batches of up to `batch_size`). The
    images are taken one by one as batches are made, so an iterator that reads them from disk
    (held-out records) keeps one batch of images and prefixes in memory, not the whole set."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    pad_id = pad_token_id(tokenizer)
    prefixes = (loaded.adapter.prefix_inputs(loaded.processor, image, prompt) for image in images)
    captions: list[str] = []
    for group in tqdm(_groups(prefixes, batch_size), desc="captions", unit="batch", disable=None, leave=False):
        batch = to_model_device(left_padded(group, pad_id), model)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        start = batch["input_ids"].shape[1]
        captions.extend(tokenizer.decode(sequence[start:], skip_special_tokens=True).strip() for sequence in output)
    return captions


def evaluate_captions(references: dict[str, str], generated: dict[str, str], meteor: bool = True) -> CaptionEvaluation:
    """Corpus metrics of `generated` (id -> caption) against one reference per id."""
    refs = {key: [text] for key, text in references.items()}
    metrics = caption_metrics(refs, generated)
    metrics["exact"] = sum(normalize_caption(generated[key]) == normalize_caption(text) for key, text in references.items()) / len(references)
    notes = [SPICE_NOTE]
    if meteor:
        value, note = meteor_score(refs, generated)
        if value is not None:
            metrics["meteor"] = value
        else:
            notes.append(note or "METEOR skipped")
    else:
        notes.append("METEOR not asked for")
    captions = [{"id": key, "reference": text, "generated": generated[key]} for key, text in references.items()]
    return CaptionEvaluation(metrics=metrics, notes=notes, captions=captions)
