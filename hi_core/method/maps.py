"""Head maps (DESIGN 1.3): the forward step of every scoring run.

One teacher-forced forward pass over one sequence or a batch of them (`batching.collate`), with
the capture installed (`capture.py`), gives each sequence's attention rows of its selected
response tokens to its image tokens; averaged over the rows and laid out on the grid, they are
its (layers, heads, gh, gw) maps. A one-image run is a batch of one: `head_maps` and
`batch_head_maps` are the same computation. `token_maps` keeps every response token's row apart
(the per-token view).

In a batch, positions are padded to the longest row/key list by repeating a valid position, and
the padded entries are dropped before averaging, so each sequence's maps equal its one-at-a-time
maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from ..model.batching import collate, pad_token_id
from ..model.capture import capture_attention
from ..model.inputs import ModelInputs, Queries, to_model_device


def run_forward(loaded: Any, tensors: dict[str, torch.Tensor]) -> None:
    """One teacher-forced forward pass, computing no logits beyond the last position."""
    loaded.model(**to_model_device(tensors, loaded.model), use_cache=False, logits_to_keep=1)


def _padded_positions(lists: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, N) positions, each list right-padded by repeating its last entry."""
    width = max(int(p.size) for p in lists)
    return torch.as_tensor(np.stack([np.pad(p, (0, width - p.size), mode="edge") for p in lists]), dtype=torch.long)


def _captured_rows(loaded: Any, items: Sequence[ModelInputs], token_indices: Sequence[np.ndarray], queries: Queries):
    """One batched forward pass; yields each sequence's (layers, heads, rows, cells) rows and its inputs."""
    rows = [item.query_positions(tokens, queries) for item, tokens in zip(items, token_indices)]
    keys = [item.layout.keys for item in items]
    batch = collate(items, pad_token_id(loaded.processor.tokenizer))
    with capture_attention(loaded.model, loaded.adapter, _padded_positions(rows), _padded_positions(keys)) as cache:
        run_forward(loaded, batch)
    captured = cache.stacked()  # (layers, batch, heads, rows, keys)
    for index, item in enumerate(items):
        yield captured[:, index, :, : rows[index].size, : keys[index].size], item


@overload
def batch_head_maps(
    loaded: Any,
    items: Sequence[ModelInputs],
    token_indices: Sequence[np.ndarray],
    queries: Queries,
    views: Literal[False] = False,
) -> list[np.ndarray]: ...
@overload
def batch_head_maps(
    loaded: Any,
    items: Sequence[ModelInputs],
    token_indices: Sequence[np.ndarray],
    queries: Queries,
    views: Literal[True],
) -> list[tuple[np.ndarray, np.ndarray]]: ...
@torch.inference_mode()
def batch_head_maps(
    loaded: Any,
    items: Sequence[ModelInputs],
    token_indices: Sequence[np.ndarray],
    queries: Queries,
    views: bool = False,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Each sequence's (layers, heads, gh, gw) float32 maps, from one batched forward pass:
    the mean attention of its query rows (`queries`, for its `token_indices`) to each grid cell. With `views`,
    each as (maps, (layers, heads, views) each view's share of the head's image attention)."""
    rows = [(own.mean(dim=2), item) for own, item in _captured_rows(loaded, items, token_indices, queries)]
    if views:
        return [(item.layout.place(mean), shares(view_sums(item.layout, mean))) for mean, item in rows]
    return [item.layout.place(mean) for mean, item in rows]


@torch.inference_mode()
def token_maps(loaded: Any, inputs: ModelInputs, queries: Queries) -> tuple[np.ndarray, np.ndarray]:
    """(layers, heads, tokens, gh, gw) float32: the map of every response token's own query row
    (`queries`), not averaged: the per-token view; and (layers, heads, tokens, views): each token's attention
    to each view's image tokens (`ImageLayout.views`). Averaged over a token set, the maps are that set's
    `head_maps`, and the view sums give its `view_shares`."""
    every_token = np.arange(inputs.num_response_tokens)
    ((own, item),) = _captured_rows(loaded, [inputs], [every_token], queries)
    return item.layout.place(own), view_sums(item.layout, own)


def view_sums(layout: Any, attention: torch.Tensor) -> np.ndarray:
    """(..., K) attention to the keys -> (..., views) float32: the attention to each view's tokens."""
    return (
        torch.stack([attention[..., view.start : view.stop].sum(dim=-1) for view in layout.views], dim=-1)
        .float()
        .numpy()
    )


def shares(sums: np.ndarray) -> np.ndarray:
    """(..., views) attention per view -> each view's share of the image attention."""
    total = sums.sum(axis=-1, keepdims=True)
    return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)


def head_maps_and_views(
    loaded: Any, inputs: ModelInputs, token_indices: np.ndarray, queries: Queries
) -> tuple[np.ndarray, np.ndarray]:
    """`head_maps` of one sequence, and (layers, heads, views) each view's share of each head's image attention."""
    return batch_head_maps(loaded, [inputs], [token_indices], queries, views=True)[0]


def head_maps(loaded: Any, inputs: ModelInputs, token_indices: np.ndarray, queries: Queries) -> np.ndarray:
    """(layers, heads, gh, gw) float32 maps of one sequence: a batch of one."""
    return batch_head_maps(loaded, [inputs], [token_indices], queries)[0]
