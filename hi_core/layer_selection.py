"""Which language-model layers LoRA adapts (DESIGN 1.9): a strategy applied to a layer ranking.

A `Ranking` is every layer of the language model ordered by its layer score, best first: the
`layers` list of a `score` JSON (one image or a dataset), or the scores of a dataset computed on
the fly. A strategy picks k layers from it: `top` (highest HI), `bottom` (lowest HI), `random`
(seeded, the ranking is not needed), `all`, or an explicit list of layer indices.
Everything here is pure and cheap; layers are numbered from 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .errors import InputError
from .scoring import rank_layers

Strategy = Literal["top", "bottom", "random", "all"]
#: A strategy's name, or the layers themselves.
LayerChoice = Strategy | tuple[int, ...]


@dataclass(frozen=True)
class Ranking:
    """Layers by layer score, best first. layers: (num_layers,) indices; scores: the same order."""

    layers: tuple[int, ...]
    scores: tuple[float, ...]
    source: str

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def from_scores(cls, scores: np.ndarray, source: str) -> Ranking:
        """From (layers,) layer scores: descending, ties by layer index (as `score` writes them)."""
        order = rank_layers(np.asarray(scores, dtype=np.float64))
        return cls(layers=tuple(order), scores=tuple(float(scores[i]) for i in order), source=source)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "layers": [{"layer": l, "score": s} for l, s in zip(self.layers, self.scores)]}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> Ranking:
        """From a `score` JSON (its `layers` list [{layer, score}], descending); validated."""
        entries = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise InputError(f"ranking {source!r} has no `layers` list (expected the JSON written by `score`)")
        try:
            layers = tuple(int(entry["layer"]) for entry in entries)
            scores = tuple(float(entry["score"]) for entry in entries)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"ranking {source!r}: every entry of `layers` needs an integer `layer` and a `score`") from None
        if sorted(layers) != list(range(len(layers))):
            raise InputError(f"ranking {source!r} does not list each layer 0..{len(layers) - 1} exactly once")
        declared = data.get("num_layers")
        if declared is not None and declared != len(layers):
            raise InputError(f"ranking {source!r} lists {len(layers)} layers but says num_layers={declared}")
        return cls(layers=layers, scores=scores, source=source)


def read_ranking(path: str | Path) -> Ranking:
    """The ranking in a `score` JSON file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"ranking file {str(path)!r} is a folder (give the JSON written by `score`)")
    if not path.is_file():
        raise InputError(f"ranking file {str(path)!r} does not exist (give the JSON written by `score`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"ranking file {str(path)!r} is not JSON ({error})") from None
    return Ranking.from_json(data, str(path))


def parse_layer_choice(text: str) -> LayerChoice:
    """`top`, `bottom`, `random`, `all`, or comma-separated layer indices such as `0,5,7`."""
    text = text.strip()
    if text in get_args(Strategy):
        return text  # type: ignore[return-value]
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"layers must be one of {', '.join(get_args(Strategy))} or indices like 0,5,7; got {text!r}") from None
    return layers


def needs_ranking(choice: LayerChoice) -> bool:
    return choice in ("top", "bottom")


def check_layer_choice(layers: str | LayerChoice, num_layers: int, k: int) -> None:
    """InputError unless `layers` (a strategy, layer indices, or their text such as `0,5,7`) and `k`
    can be applied to a model of `num_layers` layers. Needs no ranking, so a front door can check
    the choice before it ranks anything (top/bottom then still need a ranking of the same model)."""
    choice = parse_layer_choice(layers) if isinstance(layers, str) else layers
    if isinstance(choice, tuple):
        check_layers(choice, num_layers)
    elif choice != "all" and not 1 <= k <= num_layers:
        raise InputError(f"k must be between 1 and the language model's {num_layers} layers, got {k}")


def select_layers(choice: LayerChoice, num_layers: int, k: int, ranking: Ranking | None = None, seed: int = 0) -> tuple[int, ...]:
    """The layers to adapt, ascending. `k` applies to top/bottom/random; `seed` to random."""
    if isinstance(choice, str) and choice not in get_args(Strategy):
        raise InputError(f"layers must be one of {', '.join(get_args(Strategy))} or a list of indices, got {choice!r}")
    check_layer_choice(choice, num_layers, k)
    if isinstance(choice, tuple):
        return tuple(sorted(choice))
    if choice == "all":
        return tuple(range(num_layers))
    if choice == "random":
        return tuple(sorted(int(i) for i in np.random.default_rng(seed).choice(num_layers, size=k, replace=False)))
    if ranking is None:
        raise InputError(f"layers {choice!r} needs a ranking: give --ranking SCORE.json (or a dataset to score)")
    if ranking.num_layers != num_layers:
        raise InputError(f"ranking {ranking.source!r} covers {ranking.num_layers} layers but the model has {num_layers}; "
                         "it was made with another model")
    picked = ranking.layers[:k] if choice == "top" else ranking.layers[-k:]
    return tuple(sorted(picked))


def check_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Explicit layer indices, validated: within 0..num_layers-1, no repeats, at least one."""
    if not layers:
        raise InputError("give at least one layer index")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise InputError(f"layer {bad[0]} does not exist: the language model has layers 0..{num_layers - 1}")
    if len(set(layers)) != len(layers):
        raise InputError(f"layers {list(layers)} repeat an index")
    return tuple(sorted(layers))
