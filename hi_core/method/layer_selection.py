"""Which language-model layers LoRA adapts (DESIGN 1.9): a strategy applied to a layer ranking.

A `Ranking` is every scored layer of the language model ordered by its layer score, best first: the
`layers` list of a `score` JSON (one image or a dataset), or the scores of a dataset computed on
the fly. A strategy picks k layers from it: `top` (highest HI), `bottom` (lowest HI), `random`
(seeded, the ranking is not needed), `all`, or an explicit list of layer indices.
Only layers with softmax attention are scored, ranked and picked (in a hybrid language model the
linear-attention layers are not: see `FamilyAdapter.scored_layers`); layers keep the model's own
indices, numbered from 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from ..base.errors import InputError
from .scoring import rank_layers

Strategy = Literal["top", "bottom", "random", "all"]
#: A strategy's name, or the layers themselves.
LayerChoice = Strategy | tuple[int, ...]


@dataclass(frozen=True)
class Ranking:
    """Scored layers by layer score, best first. layers: indices; scores: the same order.

    unscored: the model's layers that were not scored (no softmax attention: a hybrid language
    model's linear-attention layers), ascending; they are never ranked or picked. Empty for most models.
    """

    layers: tuple[int, ...]
    scores: tuple[float, ...]
    source: str
    unscored: tuple[int, ...] = ()

    @property
    def num_layers(self) -> int:
        """Every layer of the model, scored or not."""
        return len(self.layers) + len(self.unscored)

    @classmethod
    def from_scores(cls, scores: np.ndarray, source: str) -> Ranking:
        """From (layers,) layer scores: descending, ties by layer index (as `score` writes them);
        NaN scores (layers not scored) are left out of the order."""
        scores = np.asarray(scores, dtype=np.float64)
        order = rank_layers(scores)
        unscored = tuple(int(i) for i in np.flatnonzero(~np.isfinite(scores)))
        return cls(layers=tuple(order), scores=tuple(float(scores[i]) for i in order), source=source, unscored=unscored)

    def to_json(self) -> dict[str, Any]:
        """{source, layers: [{layer, score}]}: the ranked layers, then those not scored with score null."""
        ranked = [{"layer": layer, "score": score} for layer, score in zip(self.layers, self.scores)]
        return {"source": self.source, "layers": ranked + [{"layer": layer, "score": None} for layer in self.unscored]}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> Ranking:
        """From a `score` JSON (its `layers` list [{layer, score}], descending, score null for a layer
        not scored); validated."""
        entries = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise InputError(f"ranking {source!r} has no `layers` list (expected the JSON written by `score`)")
        try:
            layers = tuple(int(entry["layer"]) for entry in entries)
            scores = tuple(float("nan") if entry["score"] is None else float(entry["score"]) for entry in entries)
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"ranking {source!r}: every entry of `layers` needs an integer `layer` and a `score`"
            ) from None
        if sorted(layers) != list(range(len(layers))):
            raise InputError(f"ranking {source!r} does not list each layer 0..{len(layers) - 1} exactly once")
        declared = data.get("num_layers")
        if declared is not None and declared != len(layers):
            raise InputError(f"ranking {source!r} lists {len(layers)} layers but says num_layers={declared}")
        ranked = [(layer, score) for layer, score in zip(layers, scores) if np.isfinite(score)]
        if not ranked:
            raise InputError(f"ranking {source!r} has no scored layer (every `score` is null)")
        unscored = tuple(sorted(layer for layer, score in zip(layers, scores) if not np.isfinite(score)))
        return cls(
            layers=tuple(layer for layer, _ in ranked),
            scores=tuple(score for _, score in ranked),
            source=source,
            unscored=unscored,
        )


def read_score_file(path: str | Path) -> Any:
    """The JSON a ranking is read from (written by `score`); InputError for a folder, a missing file or not JSON."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"ranking file {str(path)!r} is a folder (give the JSON written by `score`)")
    if not path.is_file():
        raise InputError(f"ranking file {str(path)!r} does not exist (give the JSON written by `score`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"ranking file {str(path)!r} is not JSON ({error})") from None


def read_ranking(path: str | Path) -> Ranking:
    """The layer ranking in a `score` JSON file."""
    return Ranking.from_json(read_score_file(path), str(path))


def parse_layer_choice(text: str) -> LayerChoice:
    """`top`, `bottom`, `random`, `all`, or comma-separated layer indices such as `0,5,7`."""
    text = text.strip()
    if text in get_args(Strategy):
        return cast(Strategy, text)  # checked against its options just above
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"layers must be one of {', '.join(get_args(Strategy))} or indices like 0,5,7; got {text!r}"
        ) from None
    return layers


def needs_ranking(choice: LayerChoice) -> bool:
    return choice in ("top", "bottom")


#: The layers a choice picks from: the language model's layers with softmax attention
#: (`FamilyAdapter.scored_layers`), or their count when that is every layer 0..n-1.
Adaptable = int | Sequence[int]


def _adaptable(layers: Adaptable) -> tuple[int, ...]:
    return tuple(range(layers)) if isinstance(layers, (int, np.integer)) else tuple(int(layer) for layer in layers)


def _described(adaptable: tuple[int, ...]) -> str:
    """The adaptable layers in words, for messages."""
    if adaptable == tuple(range(len(adaptable))):
        return f"the language model's {len(adaptable)} layers"
    return f"the language model's {len(adaptable)} softmax-attention layers ({', '.join(map(str, adaptable))})"


def check_layer_choice(layers: str | LayerChoice, adaptable: Adaptable, k: int) -> None:
    """InputError unless `layers` (a strategy, layer indices, or their text such as `0,5,7`) and `k`
    can be applied to a model whose adaptable layers are `adaptable` (its softmax-attention layers,
    or their count when that is every layer). Needs no ranking, so a front door can check
    the choice before it ranks anything (top/bottom then still need a ranking of the same model)."""
    choice = parse_layer_choice(layers) if isinstance(layers, str) else layers
    adaptable = _adaptable(adaptable)
    if isinstance(choice, tuple):
        check_layers(choice, adaptable)
    elif choice != "all" and not 1 <= k <= len(adaptable):
        raise InputError(f"k must be between 1 and {_described(adaptable)}, got {k}")


def select_layers(
    choice: LayerChoice, adaptable: Adaptable, k: int, ranking: Ranking | None = None, seed: int = 0
) -> tuple[int, ...]:
    """The layers to adapt, ascending, among `adaptable` (the model's softmax-attention layers, or
    their count when that is every layer: layers that are not scored are never picked).
    `k` applies to top/bottom/random; `seed` to random."""
    if isinstance(choice, str) and choice not in get_args(Strategy):
        raise InputError(f"layers must be one of {', '.join(get_args(Strategy))} or a list of indices, got {choice!r}")
    adaptable = _adaptable(adaptable)
    check_layer_choice(choice, adaptable, k)
    if isinstance(choice, tuple):
        return tuple(sorted(choice))
    if choice == "all":
        return adaptable
    if choice == "random":
        picks = np.random.default_rng(seed).choice(len(adaptable), size=k, replace=False)
        return tuple(sorted(adaptable[int(i)] for i in picks))
    if ranking is None:
        raise InputError(f"layers {choice!r} needs a ranking: give --ranking SCORE.json (or a dataset to score)")
    if sorted(ranking.layers) != list(adaptable):
        if not ranking.unscored and adaptable == tuple(range(len(adaptable))):
            raise InputError(
                f"ranking {ranking.source!r} covers {ranking.num_layers} layers but the model has {len(adaptable)}; "
                "it was made with another model"
            )
        raise InputError(
            f"ranking {ranking.source!r} ranks layers {', '.join(map(str, sorted(ranking.layers)))} but the model's "
            f"scored layers are {', '.join(map(str, adaptable))}; it was made with another model"
        )
    picked = ranking.layers[:k] if choice == "top" else ranking.layers[-k:]
    return tuple(sorted(picked))


def check_layers(layers: Sequence[int], adaptable: Adaptable) -> tuple[int, ...]:
    """Explicit layer indices, validated: among `adaptable` (the softmax-attention layers, or their
    count when that is every layer), no repeats, at least one."""
    adaptable = _adaptable(adaptable)
    if not layers:
        raise InputError("give at least one layer index")
    bad = [layer for layer in layers if layer not in adaptable]
    if bad and adaptable == tuple(range(len(adaptable))):
        raise InputError(f"layer {bad[0]} does not exist: the language model has layers 0..{len(adaptable) - 1}")
    if bad:
        raise InputError(
            f"layer {bad[0]} cannot be adapted: LoRA goes only on {_described(adaptable)}, the layers that are scored"
        )
    if len(set(layers)) != len(layers):
        raise InputError(f"layers {list(layers)} repeat an index")
    return tuple(sorted(layers))
