"""Which attention heads an ablation or a head-level LoRA acts on: a strategy applied to a head ranking.

A `HeadRanking` is every scored head of the language model, (layer, head) by HI descending: the
`heads` list of a `score` JSON (one image or a dataset), or the mean HI of a dataset scored on the
fly. A strategy picks k heads from it: `top` (highest HI), `bottom` (lowest HI), `random` (seeded,
among the scored heads; the ranking is not needed), or an explicit list written `layer:head`
(`2:5,4:0`). Heads of layers without softmax attention (a hybrid language model's linear-attention
layers) are never ranked or picked. Layers and heads keep the model's own indices, from 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from ..base.errors import InputError
from .layer_selection import read_score_file
from .scoring import rank_heads

HeadStrategy = Literal["top", "bottom", "random"]
Head = tuple[int, int]
#: A strategy's name, or the (layer, head) pairs themselves.
HeadChoice = HeadStrategy | tuple[Head, ...]


@dataclass(frozen=True)
class HeadRanking:
    """Scored heads by HI, best first. heads: (layer, head) pairs; scores: their HI, the same order.
    num_layers, num_heads: the model's shape (every layer, scored or not)."""

    heads: tuple[Head, ...]
    scores: tuple[float, ...]
    num_layers: int
    num_heads: int
    source: str

    @classmethod
    def from_hi(cls, hi: np.ndarray, source: str) -> HeadRanking:
        """From (layers, heads) HI: descending, ties by layer then head; NaN (not scored) left out."""
        hi = np.asarray(hi, dtype=np.float64)
        order = rank_heads(hi)
        return cls(
            heads=tuple(order),
            scores=tuple(float(hi[head]) for head in order),
            num_layers=int(hi.shape[0]),
            num_heads=int(hi.shape[1]),
            source=source,
        )

    def to_json(self) -> dict[str, Any]:
        """{source, num_layers, num_heads, heads: [{layer, head, hi}]} (the scored heads, best first)."""
        return {
            "source": self.source,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "heads": [
                {"layer": layer, "head": head, "hi": score} for (layer, head), score in zip(self.heads, self.scores)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> HeadRanking:
        """From a `score` JSON (its `heads` list [{layer, head, hi}], hi null for a head not scored,
        and `num_layers`, `num_heads`), validated."""
        entries = data.get("heads") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise InputError(f"ranking {source!r} has no `heads` list (expected the JSON written by `score`)")
        try:
            num_layers, num_heads = int(data["num_layers"]), int(data["num_heads"])
            cells = [
                (int(e["layer"]), int(e["head"]), float("nan") if e["hi"] is None else float(e["hi"])) for e in entries
            ]
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"ranking {source!r}: it needs `num_layers`, `num_heads` and a `heads` list whose "
                "entries have an integer `layer` and `head` and an `hi`"
            ) from None
        hi = np.full((num_layers, num_heads), np.nan)
        for layer, head, value in cells:
            if not (0 <= layer < num_layers and 0 <= head < num_heads):
                raise InputError(f"ranking {source!r} lists head {layer}:{head} of a {num_layers} x {num_heads} model")
            hi[layer, head] = value
        if not np.isfinite(hi).any():
            raise InputError(f"ranking {source!r} has no scored head (every `hi` is null)")
        return cls.from_hi(hi, source)


def read_head_ranking(path: str | Path) -> HeadRanking:
    """The head ranking in a `score` JSON file."""
    return HeadRanking.from_json(read_score_file(path), str(path))


def parse_head_choice(text: str) -> HeadChoice:
    """`top`, `bottom`, `random`, or comma-separated `layer:head` pairs such as `2:5,4:0`."""
    text = text.strip()
    if text in get_args(HeadStrategy):
        return cast(HeadStrategy, text)  # checked against its options just above
    try:
        heads = tuple((int(layer), int(head)) for layer, head in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise InputError(
            f"heads must be one of {', '.join(get_args(HeadStrategy))} or layer:head pairs like 2:5,4:0; got {text!r}"
        ) from None
    return heads


def needs_head_ranking(choice: HeadChoice) -> bool:
    return choice in ("top", "bottom")


def check_head_choice(heads: str | HeadChoice, layers: Sequence[int], num_heads: int, k: int) -> None:
    """InputError unless `heads` (a strategy, (layer, head) pairs, or their text) and `k` can be
    applied to a model whose scored layers are `layers`, each with `num_heads` heads. Needs no
    ranking, so a front door can check the choice before it ranks anything."""
    choice = parse_head_choice(heads) if isinstance(heads, str) else heads
    layers = tuple(int(layer) for layer in layers)
    if isinstance(choice, tuple):
        if not choice:
            raise InputError("give at least one layer:head pair")
        for layer, head in choice:
            if layer not in layers:
                raise InputError(
                    f"head {layer}:{head}: layer {layer} is not a scored layer of the language model "
                    f"(its scored layers: {', '.join(map(str, layers))})"
                )
            if not 0 <= head < num_heads:
                raise InputError(f"head {layer}:{head} does not exist: each layer has heads 0..{num_heads - 1}")
        if len(set(choice)) != len(choice):
            raise InputError(f"heads {', '.join(f'{layer}:{head}' for layer, head in choice)} repeat a head")
    elif not 1 <= k <= len(layers) * num_heads:
        raise InputError(
            f"k must be between 1 and the language model's {len(layers) * num_heads} scored heads, got {k}"
        )


def select_heads(
    choice: HeadChoice, layers: Sequence[int], num_heads: int, k: int, ranking: HeadRanking | None = None, seed: int = 0
) -> tuple[Head, ...]:
    """The heads to act on, sorted by (layer, head), among the `num_heads` heads of each scored
    layer in `layers`. `k` applies to top/bottom/random; `seed` to random."""
    if isinstance(choice, str) and choice not in get_args(HeadStrategy):
        raise InputError(
            f"heads must be one of {', '.join(get_args(HeadStrategy))} or layer:head pairs, got {choice!r}"
        )
    check_head_choice(choice, layers, num_heads, k)
    if isinstance(choice, tuple):
        return tuple(sorted(choice))
    candidates = [(int(layer), head) for layer in layers for head in range(num_heads)]
    if choice == "random":
        picks = np.random.default_rng(seed).choice(len(candidates), size=k, replace=False)
        return tuple(sorted(candidates[int(i)] for i in picks))
    if ranking is None:
        raise InputError(f"heads {choice!r} needs a ranking: give --ranking SCORE.json (or a dataset to score)")
    if ranking.num_heads != num_heads or sorted(ranking.heads) != sorted(candidates):
        raise InputError(
            f"ranking {ranking.source!r} ranks the heads of a {ranking.num_layers} x {ranking.num_heads} model "
            f"whose scored heads are not this model's ({len(candidates)} heads in {len(layers)} layers); "
            "it was made with another model"
        )
    picked = ranking.heads[:k] if choice == "top" else ranking.heads[-k:]
    return tuple(sorted(picked))


def format_heads(heads: Sequence[Head]) -> str:
    """`2:5,4:0`: the text `parse_head_choice` reads back."""
    return ",".join(f"{layer}:{head}" for layer, head in heads)
