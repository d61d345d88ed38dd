"""Capture the attention rows HI needs (response queries x image keys) without eager attention.

`capture_attention(model, adapter, query_positions, key_positions)` is a context manager. Inside
it, the language model's attention runs through a registered `AttentionInterface` function that
computes the layer's output with PyTorch SDPA, exactly as the `sdpa` implementation does, and
beside it the softmax rows of only the wanted query positions (normalized over all keys, with the
model's own mask), sliced to the image keys. Nothing of size T x T is kept.

That implementation is installed on the model's text sub-config once (`install_capture`) and
never switched back per call. Switching it on entry and back on exit raced in a threaded server
sharing one model (the app): one analysis switched the model back to plain SDPA under another's
forward, which then captured nothing ("no attention was captured": 17 of 80 analyses with two
threads). With no recorder active the installed function *is* SDPA (same output, same mask), so
plain forwards, `generate()` and training of an SDPA model are unchanged (a text model loaded with
eager attention computes with SDPA from its first capture on, as it did inside captures before;
the vision tower keeps its own implementation). The per-call state lives only in the
recorder, in a `ContextVar`: concurrent forwards on other threads never write into each other's
cache, and the recorder is cleared in `finally`, also when the forward raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .families import FamilyAdapter

IMPLEMENTATION = "hi_capture"


@dataclass
class AttentionCache:
    """Captured attention probabilities, one tensor per scored language-model layer.

    rows[l]: (batch, heads, queries, image_keys) float32 on CPU, detached; probabilities from
    each query row to each image key, normalized over all keys of the sequence. Only the layers in
    `scored` (those with softmax attention: `FamilyAdapter.scored_layers`) are recorded; the model's
    other layers (linear attention, convolutions) keep their index and are NaN in `stacked()`.
    """

    num_layers: int
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    scored: tuple[int, ...] | None = None  # None: every layer

    def __post_init__(self) -> None:
        if self.scored is None:
            self.scored = tuple(range(self.num_layers))

    def __repr__(self) -> str:
        shapes = {layer: tuple(t.shape) for layer, t in sorted(self.rows.items())}
        return f"AttentionCache(num_layers={self.num_layers}, scored={list(self.scored)}, rows={shapes})"

    def stacked(self) -> torch.Tensor:
        """(layers, batch, heads, queries, image_keys) over all `num_layers` layers, NaN in the
        layers that are not scored; every scored layer must have been recorded."""
        missing = [layer for layer in self.scored if layer not in self.rows]
        if missing or not self.scored:
            raise RuntimeError(f"no attention was captured for layers {missing or 'any'}")
        blank = torch.full_like(self.rows[self.scored[0]], float("nan"))  # a layer without softmax attention
        return torch.stack([self.rows.get(layer, blank) for layer in range(self.num_layers)])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.rows.values())


@dataclass
class _Recorder:
    layer_of: dict[int, int]  # id(attention module) -> layer index
    query_positions: torch.Tensor  # (batch, queries) long
    key_positions: torch.Tensor  # (batch, image_keys) long
    cache: AttentionCache


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("hi_capture_recorder", default=None)


def _row_probabilities(
    recorder: _Recorder,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    causal: bool = True,
) -> torch.Tensor:
    """Softmax rows of the recorded queries over all keys, sliced to the image keys.

    query: (B, H, T, D) after rotary embedding; key: (B, KV, S, D) with H = KV * groups.
    `causal`: what SDPA does when there is no mask (the module's `is_causal`; False for a
    bidirectional text model such as PaliGemma's when the mask was skipped).
    Returns (B, H, R, V) float32.
    """
    batch, heads, _, dim = query.shape
    kv_heads, key_length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    rows = recorder.query_positions.to(query.device)  # (B, R)
    cols = recorder.key_positions.to(query.device)  # (B, V)
    num_rows = rows.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    picked = query.gather(2, rows[:, None, :, None].expand(batch, heads, num_rows, dim)).float()
    # Grouped-query attention: fold each KV head's query group into the row axis instead of
    # repeating the keys, (B, KV, groups * R, D) @ (B, KV, D, S).
    picked = picked.reshape(batch, kv_heads, groups * num_rows, dim)
    scores = torch.matmul(picked, key.float().transpose(-1, -2)) * scale
    scores = scores.reshape(batch, heads, num_rows, key_length)
    if attention_mask is None and not causal:  # SDPA runs unmasked: every key is allowed
        allowed = None
    elif attention_mask is None:  # the pure causal case that SDPA runs with is_causal=True
        allowed = torch.arange(key_length, device=query.device)[None, None, :] <= rows[:, :, None]
        allowed = allowed[:, None]  # (B, 1, R, S)
    else:
        mask_rows = attention_mask[:, :, :, :key_length]
        mask_rows = mask_rows.expand(batch, mask_rows.shape[1], mask_rows.shape[2], key_length)
        mask_rows = mask_rows.gather(2, rows[:, None, :, None].expand(batch, mask_rows.shape[1], num_rows, key_length))
        if mask_rows.dtype == torch.bool:
            allowed = mask_rows
        else:
            scores = scores + mask_rows.float()
            allowed = None
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    return probabilities.gather(3, cols[:, None, None, :].expand(batch, heads, num_rows, cols.shape[1]))


def _capturing_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also records the wanted rows when a recorder is active."""
    softcap = kwargs.pop("softcap", None)
    if softcap is not None:
        raise NotImplementedError("attention logit soft-capping is not supported by the SDPA-based capture")
    recorder = _ACTIVE.get()
    if recorder is not None and id(module) in recorder.layer_of and query.shape[2] > 1:
        with torch.no_grad():
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", True) if causal is None else causal
            rows = _row_probabilities(recorder, query, key, attention_mask, kwargs.get("scaling"), causal)
        recorder.cache.rows[recorder.layer_of[id(module)]] = rows.detach().cpu()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(IMPLEMENTATION, _capturing_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


# `set_attn_implementation` rewrites the configs of every sub-model in turn and is not
# thread-safe: installs (rare, once per loaded model) happen one at a time. A plain forward that
# overlaps an install is unaffected: sdpa and the capture compute the same thing.
_INSTALL_LOCK = threading.Lock()


def install_capture(model: Any, adapter: FamilyAdapter) -> str:
    """Make the language model's attention capture-capable, once; returns the implementation it had.

    Idempotent and thread-safe. Only the text sub-config changes (the vision tower keeps its own
    implementation). The installed state lives in the model's config, so a deep copy keeps it and
    a freshly loaded model gets it on its first capture; outside `capture_attention` the model
    computes exactly what SDPA computes. Returns `IMPLEMENTATION` when it was already installed.
    """
    config_key = adapter.text_config_key(model)
    with _INSTALL_LOCK:
        previous = getattr(model.config, config_key)._attn_implementation
        if previous != IMPLEMENTATION:
            model.set_attn_implementation({config_key: IMPLEMENTATION})
        return previous


def remove_capture(model: Any, adapter: FamilyAdapter, implementation: str = "sdpa") -> None:
    """Give the language model `implementation` back (e.g. what `install_capture` returned).

    Nothing in hi_core needs this; only call it while no forward with a capture runs on `model`.
    """
    config_key = adapter.text_config_key(model)
    with _INSTALL_LOCK:
        if getattr(model.config, config_key)._attn_implementation == IMPLEMENTATION:
            model.set_attn_implementation({config_key: implementation})


def _as_batch(positions: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(positions), dtype=torch.long)
    return tensor[None] if tensor.dim() == 1 else tensor


@contextlib.contextmanager
def capture_attention(
    model: Any,
    adapter: FamilyAdapter,
    query_positions: np.ndarray | torch.Tensor,
    key_positions: np.ndarray | torch.Tensor,
) -> Iterator[AttentionCache]:
    """Record attention from `query_positions` to `key_positions` in every language-model layer
    with softmax attention (`adapter.scored_layers`; the cache's other layers stay empty, NaN when stacked).

    query_positions: (R,) or (B, R); key_positions: (V,) or (B, V). The cache fills during the
    forward pass(es) run inside the block, in this thread (context) only. The capture
    implementation stays installed after the block (see the module docstring); the recorder does
    not, also when the forward raises.
    """
    install_capture(model, adapter)
    modules = adapter.attention_modules(model)  # None for a layer without softmax attention
    cache = AttentionCache(num_layers=len(modules), scored=adapter.scored_layers(model))
    recorder = _Recorder(
        layer_of={id(module): index for index, module in enumerate(modules) if module is not None},
        query_positions=_as_batch(query_positions),
        key_positions=_as_batch(key_positions),
        cache=cache,
    )
    token = _ACTIVE.set(recorder)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
