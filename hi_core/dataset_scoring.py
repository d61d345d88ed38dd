"""Dataset HI (DESIGN 1.7): every head's mean HI over a dataset, with a 95% bootstrap interval.

`score_dataset` streams the records of a dataset folder (never the whole set in memory), scores
them in batched forward passes (`batching.py`: each image's maps equal its one-at-a-time maps),
and appends each image's per-head HI and mass to a JSON-lines file in a cache folder as soon as
its batch is done. A rerun with the same settings, or a run after an interruption, reads the
cache and scores only the images that are missing. Intervals are percentile bootstrap intervals
over images (scipy.stats.bootstrap), and layers are ranked by the layer score of the mean HI.

Data-parallel: under `accelerate launch`, each process scores every num_processes-th record
(its shard) into its own part file; after a barrier the main process merges all parts into the
result. The result is the same as one process's, whatever the number of processes.

The memory held is one batch of images and their maps, plus a (images, layers, heads) array of
HI and mass for the intervals (a few KB per image).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from .analysis import AnalysisConfig, mask_grid, score_maps
from .batching import batch_head_maps
from .datasets import Problems, Record, count_records, read_dataset, record_ids
from .errors import InputError
from .inputs import ModelInputs, build_inputs, key_phrase_tokens
from .loading import LoadedModel
from .outputs import atomic_path, write_json
from .scoring import layer_scores, rank_heads, rank_layers

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PART_PATTERN = "part-*.jsonl"


@dataclass(frozen=True)
class DatasetConfig:
    """How a dataset is scored.

    analysis: the per-image options (prompt, queries, scoring). key phrases: with
    `use_key_phrases`, a record's own `key_phrase` selects its response tokens (the words naming
    the key object); otherwise `analysis.key_phrase`, or every token.
    """

    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    use_key_phrases: bool = True
    batch_size: int = 8
    limit: int | None = None
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be at least 1, got {self.limit}")
        if not 0 < self.confidence < 1:
            raise InputError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.resamples < 1:
            raise InputError(f"resamples must be at least 1, got {self.resamples}")


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
        entry = {key: value for key, value in asdict(self).items() if key not in ("hi", "mass")}
        return entry | {"hi": np.round(self.hi, 7).tolist(), "mass": np.round(self.mass, 7).tolist()}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ImageScore:
        return cls(**entry | {"hi": np.asarray(entry["hi"], dtype=np.float64), "mass": np.asarray(entry["mass"], dtype=np.float64)})


@dataclass(frozen=True)
class DatasetAnalysis:
    """Every head's HI over a dataset.

    image_hi, image_mass: (images, layers, heads), in dataset order; hi, hi_low, hi_high, mass:
    (layers, heads) means and interval bounds; layer_scores: (layers,) from the mean HI.
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

    def ranked_heads(self) -> list[tuple[int, int]]:
        return rank_heads(self.hi)

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
            "chance": float(np.mean([image.chance for image in self.images])),
            "response_tokens": float(np.mean([image.response_tokens for image in self.images])),
            "queries": self.queries,
            "key_phrases": "record" if self.config.use_key_phrases else self.config.analysis.key_phrase,
            "scoring": asdict(self.config.analysis.scoring),
            "interval": {"confidence": self.config.confidence, "method": "percentile bootstrap over images",
                         "resamples": self.config.resamples, "seed": self.config.seed},
            "heads": [
                {"layer": layer, "head": head, "hi": float(self.hi[layer, head]), "hi_low": float(self.hi_low[layer, head]),
                 "hi_high": float(self.hi_high[layer, head]), "mass": float(self.mass[layer, head])}
                for layer, head in self.ranked_heads()
            ],
            "layers": [{"layer": layer, "score": float(self.layer_scores[layer])} for layer in rank_layers(self.layer_scores)],
        }

    def to_csv(self) -> str:
        """Per-image results, one row per (image, head): id, layer, head, hi, mass, object_patches, chance."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "layer", "head", "hi", "mass", "object_patches", "chance"])
        for image in self.images:
            for (layer, head), hi in np.ndenumerate(image.hi):
                writer.writerow([image.id, layer, head, f"{hi:.6f}", f"{image.mass[layer, head]:.6f}", image.object_patches, f"{image.chance:.6f}"])
        return text.getvalue()

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def save_csv(self, path: str | Path) -> None:
        with atomic_path(path) as temporary:
            temporary.write_text(self.to_csv(), encoding="utf-8")


#: A record's result by id: its score, or its failure {"id", "skipped": reason, "line"?: n}.
Entries = dict[str, "ImageScore | dict[str, Any]"]


# --- the cache: config.json + one JSON-lines part file per process ---------------------------


def _cache_settings(loaded: LoadedModel, folder: Path, config: DatasetConfig) -> dict[str, Any]:
    """What a cached per-image result depends on; a cache made with other settings is refused."""
    analysis = config.analysis
    return {
        "model": loaded.name,
        "dataset": str(folder.resolve()),
        "dtype": str(loaded.model.dtype),
        "prompt": analysis.prompt,
        "queries": analysis.queries,
        "key_phrase": analysis.key_phrase,
        "use_key_phrases": config.use_key_phrases,
        "scoring": asdict(analysis.scoring),
    }


def open_cache(cache: Path, settings: dict[str, Any], main_process: bool) -> None:
    """Create the cache folder, or check that an existing one was made with the same settings."""
    path = cache / CONFIG_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differing = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
        if differing:
            raise InputError(
                f"the cache {str(cache)!r} holds results made with other settings ({', '.join(differing)}); "
                "delete it or choose another cache folder"
            )
    elif main_process:
        cache.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


def read_cache(cache: Path) -> Entries:
    """Every cached record by id (scored images and failures), from all part files, streamed.

    A line cut short by an interruption is ignored (its image is scored again); a score wins over
    a failure of the same record.
    """
    entries: Entries = {}
    for part in sorted(cache.glob(PART_PATTERN)):
        with open(part, encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "skipped" not in entry:
                    entries[entry["id"]] = ImageScore.from_json(entry)
                elif not isinstance(entries.get(entry["id"]), ImageScore):  # a failure, unless scored later
                    entries[entry["id"]] = entry
    return entries


class _PartWriter:
    """Appends entries to this process's part file, one flushed and synced line each batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file():  # drop a last line cut short by an interruption before appending
            text = path.read_bytes()
            if text and not text.endswith(b"\n"):
                path.write_bytes(text[: text.rfind(b"\n") + 1])

    def append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with open(self.path, "a", encoding="utf-8") as part:
            part.write("".join(json.dumps(entry) + "\n" for entry in entries))
            part.flush()
            os.fsync(part.fileno())


# --- scoring ------------------------------------------------------------------------------------


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_batch(loaded: LoadedModel, records: list[Record], config: DatasetConfig) -> tuple[list[ImageScore], list[tuple[str, str]]]:
    """Score records in one forward pass: (their results, (id, reason) of those that failed)."""
    analysis = config.analysis
    prepared: list[tuple[Record, ModelInputs, np.ndarray, Any]] = []
    failed: list[tuple[str, str]] = []
    for record in records:
        phrase = record.key_phrase if config.use_key_phrases and record.key_phrase else analysis.key_phrase
        try:
            inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, record.image, analysis.prompt, record.text)
            prepared.append((record, inputs, key_phrase_tokens(inputs, phrase), mask_grid(loaded, inputs, record.mask)))
        except InputError as error:
            failed.append((record.id, str(error)))
    if not prepared:
        return [], failed
    maps = batch_head_maps(loaded, [p[1] for p in prepared], [p[2] for p in prepared], analysis.queries)
    results = []
    for (record, inputs, tokens, grid), image_maps in zip(prepared, maps):
        hi, mass, chance = score_maps(image_maps, grid, inputs.layout.valid, analysis.scoring)
        results.append(
            ImageScore(
                id=record.id,
                text=record.text,
                key_phrase=record.key_phrase,
                object_patches=int(grid.object_patches.sum()),
                cells=int(inputs.layout.valid.sum()),
                chance=float(chance),
                response_tokens=int(tokens.size),
                hi=hi,
                mass=mass,
            )
        )
    return results, failed


def bootstrap_interval(values: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0, for every other entry at once."""
    if values.shape[0] < 2:
        return values.mean(axis=0), values.mean(axis=0)
    flat = values.reshape(values.shape[0], -1)
    batch = max(1, 1_000_000 // flat.size)  # resamples per step: ~8 MB at a time (larger is slower, too)
    result = stats.bootstrap(
        (flat,), np.mean, axis=0, vectorized=True, n_resamples=resamples, confidence_level=confidence,
        method="percentile", batch=batch, rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    # a head with the same HI on every image has a zero-width interval (scipy gives NaN there)
    mean = flat.mean(axis=0)
    low, high = np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


def process_state() -> tuple[int, int, Callable[[], None]]:
    """(process index, number of processes, barrier) under `accelerate launch`, else (0, 1, no-op)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo between CPU processes
    return state.process_index, state.num_processes, state.wait_for_everyone


def score_dataset(
    loaded: LoadedModel,
    folder: str | Path,
    config: DatasetConfig = DatasetConfig(),
    cache: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetAnalysis | None:
    """Dataset HI of every head. Returns None on the non-main processes of a data-parallel run.

    cache: a folder for per-image results (resume); without one, nothing is written.
    progress(done, total): called after every batch (for the app); a tqdm bar is shown too.
    """
    folder = Path(folder)
    process, processes, barrier = process_state()
    total = count_records(folder, config.limit)  # raises InputError on a folder without data.jsonl
    if processes > 1 and cache is None:
        raise InputError("a data-parallel run needs a cache folder (--cache, or --out) to merge its parts")
    done: set[str] = set()
    writer = None
    if cache is not None:
        cache = Path(cache)
        open_cache(cache, _cache_settings(loaded, folder, config), process == 0)
        barrier()
        done = {rid for rid, entry in read_cache(cache).items() if isinstance(entry, ImageScore)}  # failures are retried
        writer = _PartWriter(cache / f"part-{process}.jsonl")
        if done:
            logger.info("resuming: %d records already in %s", len(done), cache)

    problems = Problems()
    mine = len(range(process, total, processes))
    already = sum(1 for position, rid in enumerate(record_ids(folder, total)) if position % processes == process and rid in done)
    bar = tqdm(total=mine, initial=already, desc=f"scoring {folder.name}", unit="img", disable=None, position=process)
    fresh: Entries = {}  # this run's results, kept only when there is no cache to read them back from
    count = already
    try:
        records = read_dataset(folder, problems, config.limit, shard=(process, processes), skip_ids=done)
        for batch in _batches(records, config.batch_size):
            results, failed = score_batch(loaded, batch, config)
            failures = [{"id": rid, "skipped": reason} for rid, reason in failed]
            if writer is not None:
                writer.append([result.to_json() for result in results] + failures)
            else:
                fresh.update((result.id, result) for result in results)
                fresh.update((failure["id"], failure) for failure in failures)
            bar.update(len(batch))
            count += len(batch)
            if progress is not None:
                progress(count, mine)
    finally:
        bar.close()
    unreadable = [{"id": rid or f"line {line}", "skipped": reason, "line": line} for line, rid, reason in problems.skipped]
    fresh.update((entry["id"], entry) for entry in unreadable)
    if writer is not None:
        writer.append(unreadable)
    barrier()
    if process != 0:
        return None
    entries = read_cache(cache) if cache is not None else fresh
    return _summarize(loaded, folder, config, total, entries)


def _summarize(loaded: LoadedModel, folder: Path, config: DatasetConfig, total: int, entries: Entries) -> DatasetAnalysis:
    """Merge per-image entries (in dataset order) into the dataset result."""
    images: list[ImageScore] = []
    skipped: list[tuple[int, str | None, str]] = []
    seen: set[str] = set()
    for line, rid in enumerate(record_ids(folder, total), start=1):
        entry = entries.get(rid) if rid is not None else None
        if rid is not None and rid in seen:
            skipped.append((line, rid, "duplicate id (scored once)"))
            continue
        if entry is None:
            problem = entries.get(f"line {line}")
            skipped.append((line, rid, problem["skipped"] if problem else "not scored"))
            continue
        seen.add(rid)
        if isinstance(entry, ImageScore):
            images.append(entry)
        else:
            skipped.append((entry.get("line", line), rid, entry["skipped"]))
    if not images:
        reasons = "; ".join(sorted({reason for _, _, reason in skipped})[:3])
        raise InputError(f"no record of {str(folder)!r} could be scored ({reasons})")
    hi = np.stack([image.hi for image in images])
    mass = np.stack([image.mass for image in images])
    low, high = bootstrap_interval(hi, config.confidence, config.resamples, config.seed)
    mean_hi = hi.mean(axis=0)
    return DatasetAnalysis(
        model=loaded.name,
        family=loaded.family,
        dataset=str(folder),
        queries=config.analysis.queries,
        images=images,
        hi=mean_hi,
        hi_low=low,
        hi_high=high,
        mass=mass.mean(axis=0),
        layer_scores=layer_scores(mean_hi, config.analysis.scoring),
        skipped=skipped,
        config=config,
    )
