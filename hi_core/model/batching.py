"""Batches of sequences: several `ModelInputs` as one right-padded batch, each read as if alone.

`collate` joins sequences built one at a time (`build_inputs`, so every image goes through the
processor exactly as in single-image scoring) into one batch, padded on the right: per-token
tensors (input_ids, attention_mask, token_type_ids, ...) are padded to the longest sequence with
the attention mask 0 on padding, so every real token keeps its position and, under the causal
mask, never sees a padding token. Image tensors are concatenated along their first axis, and where
images differ in size (tiles, views) their other axes are zero-padded, as the processors do for a
batch (the models drop all-zero tiles, or read the real size from `image_sizes`).

Scoring runs the batch with the capture installed (`maps.batch_head_maps`); training runs it with
labels (`training.training_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .inputs import ModelInputs, is_per_token

#: Padding value of each per-token tensor; input_ids use the tokenizer's pad (or eos) id.
TOKEN_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


def pad_token_id(tokenizer: Any) -> int:
    """The id written on padding positions (never attended to): pad, else eos, else 0."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


def _stack_padded(values: Sequence[torch.Tensor], pad: int | float | bool) -> torch.Tensor:
    """Concatenate along axis 0, right-padding every other axis to the largest size with `pad`."""
    shape = [max(v.shape[axis] for v in values) for axis in range(values[0].dim())]
    padded = []
    for value in values:
        widths: list[int] = []
        for axis in reversed(range(1, value.dim())):
            widths += [0, shape[axis] - value.shape[axis]]
        if any(widths):
            if value.dtype == torch.bool:
                value = F.pad(value.to(torch.uint8), widths, value=int(pad)).bool()
            else:
                value = F.pad(value, widths, value=pad)
        padded.append(value)
    return torch.cat(padded, dim=0)


def collate(items: Sequence[ModelInputs], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch from single sequences (each with a batch axis of 1)."""
    if not items:
        raise ValueError("collate needs at least one sequence")
    keys = list(items[0].tensors)
    if any(list(item.tensors) != keys for item in items):
        raise ValueError("the sequences have different input tensors; they come from different processors")
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [item.tensors[key] for item in items]
        if all(is_per_token(value, item.tensors["input_ids"]) for value, item in zip(values, items)):
            pad = pad_id if key == "input_ids" else TOKEN_PAD_VALUES.get(key, 0)
            batch[key] = _stack_padded(values, pad)
        elif all(isinstance(value, torch.Tensor) for value in values):
            batch[key] = _stack_padded(values, 0)
        else:
            raise ValueError(f"cannot batch the non-tensor input {key!r}")
    return batch
