"""A dataset's scoring settings and its result (DESIGN 1.7): `DatasetConfig` (how a dataset is scored),
`ImageScore` (one image's per-head HI and mass, a line of the cache) and `DatasetAnalysis` (every head's mean HI
over the dataset with its bootstrap interval, ranked; saved as the `score --dataset` JSON and CSV).

`dataset_scoring.score_dataset` makes them; `score_cache` stores the `ImageScore`s between runs.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import InputError, check_number, check_whole
from ..base.outputs import atomic_path, csv_number, write_json
from ..method.image_scoring import AnalysisConfig
from ..method.scoring import rank_heads, ranking_json, scored_layers
from ..model.images import ImageLimits
from .datasets import Record


@dataclass(frozen=True)
class DatasetConfig:
    """How a dataset is scored.

    analysis: the per-image options (prompt, queries, scoring). key phrases: with
    `use_key_phrases`, a record's own `key_phrase` selects its response tokens (the words naming
    the key object); otherwise `analysis.key_phrase`, or every token. image_limits: how far each
    record's files are decoded (None: the library's pixel cap, at full size; a server passes its own).
    """

    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    use_key_phrases: bool = True
    batch_size: int = 8
    limit: int | None = None
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    image_limits: ImageLimits | None = None

    def __post_init__(self) -> None:
        check_whole("batch_size", self.batch_size)
        check_whole("limit", self.limit, optional=True)
        check_number("confidence", self.confidence, "a number in (0, 1)", lambda v: 0 < v < 1)
        check_whole("resamples", self.resamples)
        check_whole("seed", self.seed, 0)

    def record_analysis(self, record: Record) -> AnalysisConfig:
        """The per-image options a record is scored with: its own prompt, if it has one, and its own
        key phrase with `use_key_phrases` (else the run's key phrase, or every token)."""
        phrase = record.key_phrase if self.use_key_phrases and record.key_phrase else self.analysis.key_phrase
        return replace(self.analysis, prompt=record.prompt or self.analysis.prompt, key_phrase=phrase)


def _rounded_or_null(values: np.ndarray) -> list[Any]:
    """`values` as nested lists for JSON, rounded to 7 decimals, with null where a value is not finite."""
    rounded = np.round(values, 7).astype(object)
    rounded[~np.isfinite(values)] = None
    return rounded.tolist()


@dataclass(frozen=True)
class ImageScore:
    """One image's result: per-head HI and mass (layers, heads), and what they were measured on."""

    id: str
    text: str
    key_phrase: str | None
    object_patches: int
    cells: int
    chance: float
    response_tokens: int
    hi: np.ndarray
    mass: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The cache's line; heads not scored (NaN: no softmax attention) are null."""
        entry = {key: value for key, value in asdict(self).items() if key not in ("hi", "mass")}
        return entry | {key: _rounded_or_null(values) for key, values in (("hi", self.hi), ("mass", self.mass))}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ImageScore:
        return cls(
            **entry
            | {"hi": np.asarray(entry["hi"], dtype=np.float64), "mass": np.asarray(entry["mass"], dtype=np.float64)}
        )


@dataclass(frozen=True)
class DatasetAnalysis:
    """Every head's HI over a dataset.

    images: each scored image's `ImageScore`, in dataset order (`image_hi` stacks their HI: (images, layers,
    heads)); hi, hi_low, hi_high, mass: (layers, heads) means and interval bounds; layer_scores: (layers,) from
    the mean HI. Layers without softmax attention keep their index and are NaN throughout (not scored).
    skipped: (line, id, reason) of each record that could not be scored.
    """

    model: str
    family: str
    dataset: str
    queries: str
    images: list[ImageScore]
    hi: np.ndarray
    hi_low: np.ndarray
    hi_high: np.ndarray
    mass: np.ndarray
    layer_scores: np.ndarray
    skipped: list[tuple[int, str | None, str]]
    config: DatasetConfig

    @property
    def image_hi(self) -> np.ndarray:
        return np.stack([image.hi for image in self.images])

    @property
    def mean_chance(self) -> float:
        """The chance IoU (DESIGN 1.6) averaged over the scored images: what a mean HI is set against."""
        return float(np.mean([image.chance for image in self.images]))

    def extremes(self, layer: int, head: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into `images` of the `count` images where this head's HI is highest (descending)
        and lowest (ascending); equal HI keeps dataset order. Fewer when there are fewer images."""
        num_layers, num_heads = self.hi.shape
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise InputError(
                f"head ({layer}, {head}) does not exist: "
                f"the model has layers 0..{num_layers - 1}, heads 0..{num_heads - 1}"
            )
        if count < 0:
            raise InputError(f"count must be at least 0, got {count}")
        per_image = np.array([image.hi[layer, head] for image in self.images])
        if not np.isfinite(per_image).all():
            raise InputError(
                f"layer {layer} was not scored (it has no softmax attention): choose a head of layers "
                f"{', '.join(map(str, self.scored_layers))}"
            )
        highest = np.argsort(-per_image, kind="stable")[:count]
        lowest = np.argsort(per_image, kind="stable")[:count]
        return highest, lowest

    def ranked_heads(self) -> list[tuple[int, int]]:
        """The scored heads, by mean HI descending."""
        return rank_heads(self.hi)

    @property
    def scored_layers(self) -> list[int]:
        """The layers scored: those with softmax attention (every layer, except in hybrid models)."""
        return scored_layers(self.hi)

    def to_json(self) -> dict[str, Any]:
        """The `score --dataset` JSON (DESIGN 6): per-head mean HI with its interval, ranked."""
        num_layers, num_heads = self.hi.shape
        return {
            "model": self.model,
            "family": self.family,
            "dataset": self.dataset,
            "images": len(self.images),
            "skipped": [{"line": line, "id": rid, "reason": reason} for line, rid, reason in self.skipped],
            "num_layers": int(num_layers),
            "num_heads": int(num_heads),
            "object_patches": float(np.mean([image.object_patches for image in self.images])),
            "chance": self.mean_chance,
            "response_tokens": float(np.mean([image.response_tokens for image in self.images])),
            "queries": self.queries,
            "key_phrases": "record" if self.config.use_key_phrases else self.config.analysis.key_phrase,
            "scoring": asdict(self.config.analysis.scoring),
            "interval": {
                "confidence": self.config.confidence,
                "method": "percentile bootstrap over images",
                "resamples": self.config.resamples,
                "seed": self.config.seed,
            },
            **ranking_json(self.hi, self.layer_scores, hi_low=self.hi_low, hi_high=self.hi_high, mass=self.mass),
        }

    def to_csv(self) -> str:
        """Per-image results, one row per (image, head): id, layer, head, hi, mass, object_patches, chance
        (hi and mass empty for a head not scored)."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "layer", "head", "hi", "mass", "object_patches", "chance"])
        for image in self.images:
            for (layer, head), hi in np.ndenumerate(image.hi):
                writer.writerow(
                    [
                        image.id,
                        layer,
                        head,
                        csv_number(float(hi)),
                        csv_number(float(image.mass[layer, head])),
                        image.object_patches,
                        f"{image.chance:.6f}",
                    ]
                )
        return text.getvalue()

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def save_csv(self, path: str | Path) -> None:
        with atomic_path(path) as temporary:
            temporary.write_text(self.to_csv(), encoding="utf-8")
