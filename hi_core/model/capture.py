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
threads). With no recorder active the installed function *is* SDPA (same output, same mask;
the eager formula in soft-capped layers, below), so plain forwards, `generate()` and training of
an SDPA model are unchanged (a text model loaded with eager attention computes with SDPA from its
first capture on, as it did inside captures before; the vision tower keeps its own implementation).
The per-call state lives only in the recorder, in a `ContextVar`: concurrent forwards on other
threads never write into each other's cache, and the recorder is cleared in `finally`, also when
the forward raises.

Soft-capped attention (Gemma 2, so PaliGemma 2): the logits are `tanh(q.k * scaling / cap) * cap`
before the mask and the softmax. SDPA cannot do that, so in a layer whose module passes `softcap`
both the recorded rows and the layer's output follow that eager formula (scaling, cap, then the
model's own mask — sliding-window layers get their sliding mask from transformers like any other
— then softmax; such a layer holds its T x T weights while it runs, as eager does, and keeps
nothing of them); every other layer keeps plain SDPA. A text model without an SDPA implementation
(Gemma 2) is loaded with eager attention and switched to this one at its first capture, which
transformers accepts for it (the name is registered, and it is not "sdpa").

Attention features this formula cannot reproduce exactly are refused when the model is loaded
(`check_capturable`, called by `loading.load_model`, as `InputError` naming the feature):
attention sinks (`s_aux`/`sinks`, e.g. gpt-oss), ALiBi (`alibi`) and relative position bias
(`position_bias`). Should one still reach the attention function, it raises naming the feature
instead of computing something else.
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

from ..base.errors import InputError
from ..families import FamilyAdapter

IMPLEMENTATION = "hi_capture"

#: Keyword arguments transformers 5.24 may pass to an attention function that change its result
#: in ways neither SDPA nor our formula reproduce, with the feature's name for messages.
UNSUPPORTED_ATTENTION_KWARGS = {
    "s_aux": "attention sinks (s_aux)",
    "sinks": "attention sinks (sinks)",
    "alibi": "ALiBi position bias (alibi)",
    "position_bias": "relative position bias (position_bias)",
}


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

    @property
    def scored_layers(self) -> tuple[int, ...]:
        """The indices of the layers recorded: `scored`, or every layer."""
        return tuple(range(self.num_layers)) if self.scored is None else self.scored

    def __repr__(self) -> str:
        shapes = {layer: tuple(t.shape) for layer, t in sorted(self.rows.items())}
        return f"AttentionCache(num_layers={self.num_layers}, scored={list(self.scored_layers)}, rows={shapes})"

    def stacked(self) -> torch.Tensor:
        """(layers, batch, heads, queries, image_keys) over all `num_layers` layers, NaN in the
        layers that are not scored; every scored layer must have been recorded."""
        scored = self.scored_layers
        missing = [layer for layer in scored if layer not in self.rows]
        if missing or not scored:
            raise RuntimeError(f"no attention was captured for layers {missing or 'any'}")
        blank = torch.full_like(self.rows[scored[0]], float("nan"))  # a layer without softmax attention
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


def _masked_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    scaling: float | None,
    softcap: float | None,
    causal: bool,
) -> torch.Tensor:
    """Attention logits of the query positions `rows` over all keys, masked as SDPA masks them.

    query: (B, H, T, D) after rotary embedding; key: (B, KV, S, D) with H = KV * groups;
    rows: (B, R) query positions. Logits are `q.k * scaling`, then `tanh(logits / softcap) *
    softcap` when `softcap` is set, then the mask (boolean: False -> -inf; float: added).
    `causal`: what SDPA does when there is no mask (the module's `is_causal`; False for a
    bidirectional text model such as PaliGemma's when the mask was skipped).
    Returns (B, H, R, S) float32.
    """
    batch, heads, _, dim = query.shape
    kv_heads, key_length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    num_rows = rows.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    picked = query.gather(2, rows[:, None, :, None].expand(batch, heads, num_rows, dim)).float()
    # Grouped-query attention: fold each KV head's query group into the row axis instead of
    # repeating the keys, (B, KV, groups * R, D) @ (B, KV, D, S).
    picked = picked.reshape(batch, kv_heads, groups * num_rows, dim)
    scores = torch.matmul(picked, key.float().transpose(-1, -2)) * scale
    scores = scores.reshape(batch, heads, num_rows, key_length)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
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
    return scores


def _row_probabilities(
    recorder: _Recorder,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    causal: bool = True,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax rows of the recorded queries over all keys, sliced to the image keys: (B, H, R, V) float32."""
    rows = recorder.query_positions.to(query.device)  # (B, R)
    cols = recorder.key_positions.to(query.device)  # (B, V)
    scores = _masked_scores(query, key, attention_mask, rows, scaling, softcap, causal)
    probabilities = torch.softmax(scores, dim=-1)
    batch, heads, num_rows, _ = probabilities.shape
    return probabilities.gather(3, cols[:, None, None, :].expand(batch, heads, num_rows, cols.shape[1]))


def _softcapped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    softcap: float,
    causal: bool,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """The layer's output with soft-capped logits (the eager formula; SDPA cannot cap).

    Same result as the model's eager attention: softmax in float32, then back to the query's
    dtype before the values. Returns (B, T, H, D) like the other attention functions.
    """
    batch, heads, length, _ = query.shape
    rows = torch.arange(length, device=query.device)[None].expand(batch, length)
    # Without a mask SDPA is causal (upper-left aligned) for several queries and attends to every
    # cached key for one (a decode step): the same rule here.
    scores = _masked_scores(query, key, attention_mask, rows, scaling, softcap, causal and length > 1)
    weights = torch.softmax(scores, dim=-1).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    groups = heads // value.shape[1]
    values = value.repeat_interleave(groups, dim=1)  # (B, H, S, D): each KV head serves its query group
    return torch.matmul(weights, values).transpose(1, 2).contiguous()


def _capturing_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention (the eager formula where logits are soft-capped) that also records the wanted
    rows when a recorder is active."""
    for name, feature in UNSUPPORTED_ATTENTION_KWARGS.items():
        if kwargs.get(name) is not None:  # `check_capturable` refuses such models at load time
            raise InputError(f"this model's attention uses {feature}, which the attention capture cannot reproduce")
    softcap = kwargs.pop("softcap", None)
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    recorder = _ACTIVE.get()
    if recorder is not None and id(module) in recorder.layer_of and query.shape[2] > 1:
        with torch.no_grad():
            rows = _row_probabilities(recorder, query, key, attention_mask, kwargs.get("scaling"), causal, softcap)
        recorder.cache.rows[recorder.layer_of[id(module)]] = rows.detach().cpu()
    if softcap is not None:
        output = _softcapped_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            softcap,
            causal,
            kwargs.get("dropout", 0.0),
            kwargs.get("scaling"),
        )
        return output, None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(IMPLEMENTATION, _capturing_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def unsupported_attention_features(model: Any, adapter: FamilyAdapter) -> list[str]:
    """The attention features of the language model that the capture cannot reproduce exactly.

    Read from the attention modules and the text config, before any forward: attention sinks (a
    `sinks` parameter, passed as `s_aux`), ALiBi (`alibi` in the config) and relative position bias
    (`relative_attention_num_buckets`). Soft-capping and sliding windows are reproduced, not listed.
    """
    features = []
    if any(getattr(module, "sinks", None) is not None for module in adapter.attention_modules(model)):
        features.append(UNSUPPORTED_ATTENTION_KWARGS["s_aux"])
    text_config = model.config.get_text_config()
    if getattr(text_config, "alibi", False):
        features.append(UNSUPPORTED_ATTENTION_KWARGS["alibi"])
    if getattr(text_config, "relative_attention_num_buckets", None):
        features.append(UNSUPPORTED_ATTENTION_KWARGS["position_bias"])
    return features


def check_capturable(model: Any, adapter: FamilyAdapter) -> None:
    """Refuse (InputError) a model whose attention the capture cannot reproduce, naming the feature(s)."""
    features = unsupported_attention_features(model, adapter)
    if features:
        raise InputError(
            f"its language model's attention uses {' and '.join(features)}, which the attention capture cannot "
            "reproduce exactly (it reproduces plain, sliding-window and soft-capped softmax attention)"
        )


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
