"""Replaying the parts of a forward pass that removing a head cannot change.

Removing heads of layer l (or above) leaves the image features and the outputs of decoder layers 0..l-1
as they were. `validate` removes heads hundreds of times over the same batches, so it records those
outputs once (`PassCache`) and, inside `replaying(...)`, returns them instead of computing them: a pass
with its first removed head in layer l computes only layers l and up. On a real model the vision tower
is most of a pass (Qwen2-VL-2B: 99 of 134 s at a megapixel), and it runs once per batch instead of once
per pass; on the 6-layer demo a validation takes about half the time (bench/validate_speed.py).

`install_replay(loaded)` wraps the language model's decoder layers and the inner model's
`get_image_features` (an instance attribute over the class's method, removed again when the last user
leaves: the installations are counted per model, under a lock). The wrappers act only in the context
(thread) that set a plan with `replaying`; every other forward on the same shared model computes as if
they were not there. Outputs are reused by reference: the modules around them do not modify their
inputs in place (tests/test_replay.py checks every family's result against a full pass).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .loading import LoadedModel


@dataclass
class PassCache:
    """What one pass over a list of batches produced, per batch index: the image features and each decoder
    layer's output (`layers[(batch, layer)]`, kept only with `keep_layers`: they are the big part)."""

    keep_layers: bool = True
    vision: dict[int, Any] = field(default_factory=dict)
    vision_seconds: float = 0.0  # computing the image features it recorded (what reusing them saves per pass)
    layers: dict[tuple[int, int], Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """One batch's pass: reuse `source`'s image features and its outputs of the layers below `start` (None:
    compute everything), and record what the pass produces into `record` (None: keep nothing). `frozen_vision`:
    compute the image features without gradients (a backward pass then stops at the language model: the vision
    tower's graph, most of a real model's activations, is never built)."""

    batch: int
    start: int = 0
    source: PassCache | None = None
    record: PassCache | None = None
    frozen_vision: bool = False


_PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("hi_replay_plan", default=None)
_LOCK = threading.Lock()
_INSTALLED: dict[int, tuple[int, list[tuple[Any, str, Any]]]] = {}  # id(model) -> (users, (object, name, previous))


def _inner_model(loaded: LoadedModel) -> Any:
    """The module whose forward calls `self.get_image_features` (the conditional-generation model's `model`)."""
    inner = getattr(loaded.model, "model", None)
    return inner if inner is not None and hasattr(inner, "get_image_features") else None


def _layer_forward(index: int, original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        plan = _PLAN.get()
        if plan is None:
            return original(*args, **kwargs)
        if plan.source is not None and index < plan.start:
            output = plan.source.layers[(plan.batch, index)]
        else:
            output = original(*args, **kwargs)
        if plan.record is not None and plan.record.keep_layers:
            plan.record.layers[(plan.batch, index)] = output
        return output

    return forward


def _vision_forward(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_image_features(*args: Any, **kwargs: Any) -> Any:
        plan = _PLAN.get()
        if plan is None:
            return original(*args, **kwargs)
        if plan.source is not None and plan.batch in plan.source.vision:
            output = plan.source.vision[plan.batch]
        else:
            begin = time.perf_counter()
            with torch.no_grad() if plan.frozen_vision else contextlib.nullcontext():
                output = original(*args, **kwargs)
            if plan.record is not None:
                plan.record.vision_seconds += time.perf_counter() - begin
        if plan.record is not None:
            plan.record.vision[plan.batch] = output
        return output

    return get_image_features


@contextlib.contextmanager
def install_replay(loaded: LoadedModel) -> Iterator[None]:
    """Inside the block, `replaying` plans act on this model's forward passes (in the thread that sets them).
    Nested and concurrent blocks on one model share one installation; the last to leave restores the model."""
    key = id(loaded.model)
    with _LOCK:
        users, patched = _INSTALLED.get(key, (0, []))
        if not users:
            targets: list[tuple[Any, str, Callable[..., Any]]] = []
            for index, layer in enumerate(loaded.adapter.decoder_layers(loaded.model)):
                targets.append((layer, "forward", _layer_forward(index, layer.forward)))
            inner = _inner_model(loaded)
            if inner is not None:
                targets.append((inner, "get_image_features", _vision_forward(inner.get_image_features)))
            for owner, name, wrapper in targets:
                patched.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, wrapper)
        _INSTALLED[key] = (users + 1, patched)
    try:
        yield
    finally:
        with _LOCK:
            users, patched = _INSTALLED[key]
            if users > 1:
                _INSTALLED[key] = (users - 1, patched)
            else:
                del _INSTALLED[key]
                for owner, name, previous in reversed(patched):
                    if previous is None:
                        delattr(owner, name)
                    else:
                        setattr(owner, name, previous)


@contextlib.contextmanager
def replaying(plan: Plan) -> Iterator[None]:
    """Inside the block, forward passes in this context follow `plan` (needs `install_replay`)."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def layer_output_bytes(loaded: LoadedModel, tokens: int) -> int:
    """About what recording every decoder layer's output for `tokens` sequence positions (all batches) holds."""
    config = loaded.model.config.get_text_config()
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    return int(tokens) * int(config.hidden_size) * layers * loaded.model.dtype.itemsize
