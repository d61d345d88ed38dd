"""Dataset HI (DESIGN 1.7): every head's mean HI over a dataset, with a 95% bootstrap interval.

`score_dataset` streams the records of a dataset folder (never the whole set in memory), scores them with the
per-image steps of a one-image run (`image_scoring.py`), the forward step batched (`maps.batch_head_maps`: each
image's maps equal its one-at-a-time maps), and appends each image's per-head HI and mass to a JSON-lines file in a
cache folder as soon as its batch is done. A rerun with the same settings, or a run after an interruption, reads the
cache and scores only the images that are missing. Intervals are percentile bootstrap intervals over images
(scipy.stats.bootstrap), and layers are ranked by the layer score of the mean HI.

Data-parallel: under `accelerate launch`, each process scores every num_processes-th record
(its shard) into its own part file; after a barrier the main process merges all parts into the
result. The result is the same as one process's, whatever the number of processes.

Which records count is decided by the dataset's one scan (`datasets.scan_dataset`): the first
record of an id is scored and a later one is a skipped duplicate, in full, resumed and sharded runs
alike; the summary lists every skipped record under its line in data.jsonl, by the same scan, so a
result never depends on which run scored what. A record's own `prompt` replaces the run's prompt
for that record (`DatasetConfig.record_analysis`).

The cache folder holds `config.json` (the settings its results depend on; a cache of other
settings, a file, or a folder of part files without config.json is refused with an InputError
before any image is scored: `check_cache_folder`) and one part file per process: scored images and
records whose files failed, by id and the record's fingerprint (its fields, and its image's and
mask's size and modification time: `record_fingerprint`), so a record edited or whose files were
replaced since it was cached is scored again. Lines of a part file that cannot be read (cut short
by a kill, or edited) are ignored, and those records scored again.

The memory held is one batch of images and their maps, plus a (images, layers, heads) array of
HI and mass for the intervals (a few KB per image).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from ..base.distributed import process_state
from ..base.errors import InputError, check_number, check_whole
from ..base.outputs import atomic_path, csv_number, write_json
from ..method.image_scoring import AnalysisConfig, PreparedImage, prepare_image
from ..method.maps import batch_head_maps
from ..method.scoring import layer_scores, rank_heads, ranking_json, scored_layers
from ..model.images import ImageLimits
from ..model.loading import LoadedModel
from .datasets import INDEX, Cancelled, Record, RecordLine, Stop, count_records, load_record, scan_dataset

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PART_PATTERN = "part-*.jsonl"


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
        return entry | {
            key: np.where(np.isfinite(values), np.round(values, 7), None).tolist()
            for key, values in (("hi", self.hi), ("mass", self.mass))
        }

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
                        csv_number(hi),
                        csv_number(image.mass[layer, head]),
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


#: A record's result by (id, fingerprint): its score, or its failure {"id", "skipped": reason, "line"?: n}.
Entries = dict[tuple[str, str], "ImageScore | dict[str, Any]"]


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
    } | ({"image_limits": asdict(config.image_limits)} if config.image_limits is not None else {})


def check_cache_folder(cache: str | Path) -> Path:
    """Refuse a cache path that cannot be a cache folder, before any model work: an existing file,
    a path under a file, or a folder holding part files but no config.json (results of unknown
    settings). The CLI can call this before loading the model."""
    cache = Path(cache)
    for parent in (cache, *cache.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == cache else f"is under {str(parent)!r}, which is a file"
            raise InputError(f"the cache {str(cache)!r} {what}: give a folder (it is created if missing)")
        if parent.is_dir():
            break
    if cache.is_dir():
        if not (cache / CONFIG_FILE).is_file() and ((cache / CONFIG_FILE).exists() or any(cache.glob(PART_PATTERN))):
            raise InputError(
                f"the folder {str(cache)!r} holds results without a readable {CONFIG_FILE}: "
                "it is not a cache of this program; delete it or choose another cache folder"
            )
        odd = sorted(part.name for part in cache.glob(PART_PATTERN) if not part.is_file())
        if odd:
            raise InputError(f"the cache {str(cache)!r} holds {', '.join(odd)}, which should be files: delete them")
        if not os.access(cache, os.W_OK | os.X_OK):
            raise InputError(f"the cache folder {str(cache)!r} is not writable")
    return cache


def open_cache(cache: Path, settings: dict[str, Any], main_process: bool) -> None:
    """Create the cache folder, or check that an existing one was made with the same settings."""
    check_cache_folder(cache)
    path = cache / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            saved = None
        if not isinstance(saved, dict):
            raise InputError(
                f"the cache {str(cache)!r} has an unreadable {CONFIG_FILE}; delete the folder or choose another"
            )
        differing = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
        if differing:
            raise InputError(
                f"the cache {str(cache)!r} holds results made with other settings ({', '.join(differing)}); "
                "delete it or choose another cache folder"
            )
    elif main_process:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            write_json(path, settings)
        except OSError as error:
            raise InputError(f"cannot create the cache folder {str(cache)!r} ({error.strerror or error})") from None


def record_fingerprint(folder: Path, line: RecordLine) -> str:
    """What a record's score depends on besides the run's settings: its checked fields (text, key
    phrase, prompt, file names) and its image's and mask's size and modification time. A cached
    result whose fingerprint differs from the record's now is stale and scored again."""
    parts = [json.dumps(line.fields, sort_keys=True)]
    for key in ("image", "mask"):
        try:
            stat = (folder / line.fields[key]).stat()
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except (KeyError, TypeError, OSError, ValueError):  # no such field, or no such file (it fails when loaded)
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_entry(line: bytes) -> tuple[str, ImageScore | dict[str, Any]] | None:
    """A part file's line as (fingerprint, a score or a failure {"id", "skipped", "line"?}); None if
    unreadable or written without a fingerprint."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    fingerprint = entry.pop("record", None)
    if not isinstance(fingerprint, str):
        return None
    if "skipped" in entry:
        return (fingerprint, entry) if isinstance(entry["skipped"], str) else None
    try:
        score = ImageScore.from_json(entry)
    except (TypeError, ValueError):  # missing or extra keys, ragged arrays
        return None
    return (fingerprint, score) if score.hi.ndim == 2 and score.hi.shape == score.mass.shape else None


def read_cache(cache: Path) -> Entries:
    """Every cached record by (id, fingerprint) (scored images and failures), from all part files,
    streamed.

    A line that cannot be read (cut short by an interruption, or edited) is ignored (its image is
    scored again); a score wins over a failure of the same record.
    """
    entries: Entries = {}
    for part in sorted(cache.glob(PART_PATTERN)):
        with open(part, "rb") as lines:
            for line in lines:
                read = _cache_entry(line)
                if read is None:
                    continue
                fingerprint, entry = read
                key = (entry.id if isinstance(entry, ImageScore) else entry["id"], fingerprint)
                if isinstance(entry, ImageScore) or not isinstance(
                    entries.get(key), ImageScore
                ):  # a failure, unless scored
                    entries[key] = entry
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


def score_batch(
    loaded: LoadedModel, records: list[Record], config: DatasetConfig
) -> tuple[list[ImageScore], list[tuple[str, str]]]:
    """Score records in one forward pass: (their results, (id, reason) of those that failed).

    The steps of a one-image run (`image_scoring`), in its order: each record prepared with the
    options `config.record_analysis(record)` gives it (what the app's gallery uses too), the maps of
    all in one batch, then each record's scores.
    """
    prepared: list[tuple[Record, AnalysisConfig, PreparedImage]] = []
    failed: list[tuple[str, str]] = []
    for record in records:
        options = config.record_analysis(record)
        try:
            prepared.append((record, options, prepare_image(loaded, record.image, record.mask, record.text, options)))
        except InputError as error:
            failed.append((record.id, str(error)))
    if not prepared:
        return [], failed
    # record_analysis keeps the run's query rows, so one batch has one kind
    maps = batch_head_maps(
        loaded, [p.inputs for _, _, p in prepared], [p.tokens for _, _, p in prepared], config.analysis.queries
    )
    results = []
    for (record, options, image), image_maps in zip(prepared, maps):
        hi, mass, chance = image.score(image_maps, options.scoring)
        results.append(
            ImageScore(
                id=record.id,
                text=record.text,
                key_phrase=record.key_phrase,
                object_patches=int(image.grid.object_patches.sum()),
                cells=int(image.valid.sum()),
                chance=float(chance),
                response_tokens=int(image.tokens.size),
                hi=hi,
                mass=mass,
            )
        )
    return results, failed


def bootstrap_interval(
    values: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0, for every other entry at once; NaN where
    the values are (heads not scored)."""
    if values.shape[0] < 2:
        return values.mean(axis=0), values.mean(axis=0)
    every = values.reshape(values.shape[0], -1)
    scored = np.isfinite(every).all(axis=0)
    low_all, high_all = np.full(every.shape[1], np.nan), np.full(every.shape[1], np.nan)
    flat = every[:, scored]
    if not flat.size:
        return low_all.reshape(values.shape[1:]), high_all.reshape(values.shape[1:])
    batch = max(1, 1_000_000 // flat.size)  # resamples per step: ~8 MB at a time (larger is slower, too)
    result = stats.bootstrap(
        (flat,),
        np.mean,
        axis=0,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        batch=batch,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    # a head with the same HI on every image has a zero-width interval (scipy gives NaN there)
    mean = flat.mean(axis=0)
    low_all[scored] = np.where(np.isnan(low), mean, low)
    high_all[scored] = np.where(np.isnan(high), mean, high)
    return low_all.reshape(values.shape[1:]), high_all.reshape(values.shape[1:])


def score_dataset(
    loaded: LoadedModel,
    folder: str | Path,
    config: DatasetConfig = DatasetConfig(),
    cache: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: Stop | None = None,
) -> DatasetAnalysis | None:
    """Dataset HI of every head. Returns None on the non-main processes of a data-parallel run.

    cache: a folder for per-image results (resume); without one, nothing is written.
    progress(done, total): called after every batch (for the app); a tqdm bar is shown too.
    stop: looked at while data.jsonl is scanned and between batches; once it says so, `Cancelled` is
    raised (a cache keeps the batches finished before, as after any interruption).
    """
    folder = Path(folder)
    total = count_records(folder, config.limit, stop)  # raises InputError on a folder without data.jsonl
    if cache is not None:
        cache = check_cache_folder(cache)
    process, processes, barrier = process_state(cpu=loaded.device.type == "cpu")
    if processes > 1 and cache is None:
        raise InputError("a data-parallel run needs a cache folder (--cache, or --out) to merge its parts")
    done: set[str] = set()
    writer = None
    if cache is not None:
        open_cache(cache, _cache_settings(loaded, folder, config), process == 0)
        barrier()
        done = {
            key for key, entry in read_cache(cache).items() if isinstance(entry, ImageScore)
        }  # failures are retried
        writer = _PartWriter(cache / f"part-{process}.jsonl")
        if done:
            logger.info("resuming: %d records already in %s", len(done), cache)

    shard = _Shard(folder, config, process, processes, done, stop)
    bar = tqdm(
        total=shard.size,
        initial=shard.already,
        desc=f"scoring {folder.name}",
        unit="img",
        disable=None,
        position=process,
    )
    fresh: Entries = {}  # this run's results, kept only when there is no cache to read them back from
    shown = shard.already
    try:
        for batch in _batches(shard.records(), config.batch_size):
            if stop is not None and stop():
                raise Cancelled(f"stopped after {shard.passed - len(batch)} of {shard.size} records")
            results, failed = score_batch(loaded, batch, config)
            lines = {record.id: record.line for record in batch}
            fingerprints = {record.id: shard.fingerprints.pop(record.id) for record in batch}
            failures = shard.take_failures() + [
                {"id": rid, "skipped": reason, "line": lines[rid], "record": fingerprints[rid]}
                for rid, reason in failed
            ]
            _keep(writer, fresh, [(result, fingerprints[result.id]) for result in results], failures)
            bar.update(shard.passed - shown)
            shown = shard.passed
            if progress is not None:
                progress(shard.passed, shard.size)
        _keep(writer, fresh, [], shard.take_failures())  # records after the last batch that failed to load
        bar.update(shard.passed - shown)
    finally:
        bar.close()
    barrier()
    if process != 0:
        return None
    entries = read_cache(cache) if cache is not None else fresh
    return _summarize(loaded, folder, config, total, entries)


def _keep(
    writer: _PartWriter | None, fresh: Entries, results: list[tuple[ImageScore, str]], failures: list[dict[str, Any]]
) -> None:
    """Store a batch's (score, record fingerprint) pairs and failures (with their "record"): in the
    cache's part file, or in memory without a cache (rounded as the cache rounds them, so a run
    gives the same numbers with or without a cache)."""
    if writer is not None:
        writer.append([result.to_json() | {"record": fingerprint} for result, fingerprint in results] + failures)
    else:
        fresh.update(
            ((result.id, fingerprint), ImageScore.from_json(result.to_json())) for result, fingerprint in results
        )
        fresh.update(
            ((failure["id"], failure["record"]), {k: v for k, v in failure.items() if k != "record"})
            for failure in failures
        )


class _Shard:
    """This process's records: every processes-th record of the scan, less those already cached
    (same id and fingerprint).

    Malformed records and duplicates are passed over here (the summary reports them from the same
    scan); records whose files fail to load are collected as failures, by id. `fingerprints`: the
    fingerprint of each record yielded and not yet taken, by id.
    """

    def __init__(
        self,
        folder: Path,
        config: DatasetConfig,
        process: int,
        processes: int,
        done: set[tuple[str, str]],
        stop: Stop | None = None,
    ) -> None:
        self.folder, self.limit, self.process, self.processes, self.done = (
            folder,
            config.limit,
            process,
            processes,
            done,
        )
        self.limits, self.stop = config.image_limits, stop
        lines = (
            line
            for position, line in enumerate(scan_dataset(folder, self.limit, stop))
            if position % processes == process
        )
        self.size, self.already = 0, 0
        for line in lines:
            self.size += 1
            self.already += self._cached(line)
        self.passed = self.already  # records of the shard looked at so far (for progress)
        self.fingerprints: dict[str, str] = {}
        self._failures: list[dict[str, Any]] = []

    def _cached(self, line: RecordLine) -> bool:
        return bool(self.done) and line.id is not None and (line.id, record_fingerprint(self.folder, line)) in self.done

    def records(self) -> Iterator[Record]:
        for position, line in enumerate(scan_dataset(self.folder, self.limit, self.stop)):
            if position % self.processes != self.process or self._cached(line):
                continue
            self.passed += 1
            if line.problem is not None:
                continue
            fingerprint = self.fingerprints[line.id] = record_fingerprint(self.folder, line)
            try:
                yield load_record(self.folder, line, self.limits)
            except InputError as error:
                logger.warning("skipping %s line %d: %s", INDEX, line.number, error)
                self._failures.append(
                    {"id": line.id, "skipped": str(error), "line": line.number, "record": fingerprint}
                )

    def take_failures(self) -> list[dict[str, Any]]:
        failures, self._failures = self._failures, []
        return failures


def _summarize(
    loaded: LoadedModel, folder: Path, config: DatasetConfig, total: int, entries: Entries
) -> DatasetAnalysis:
    """Merge per-image entries into the dataset result, in dataset order: the scan of data.jsonl
    decides which record each id means and which records are skipped, under their own line numbers."""
    images: list[ImageScore] = []
    skipped: list[tuple[int, str | None, str]] = []
    for line in scan_dataset(folder, total):
        entry = (
            entries.get((line.id, record_fingerprint(folder, line)))
            if line.id is not None and line.problem is None
            else None
        )
        if line.problem is not None:
            skipped.append((line.number, line.id, line.problem))
        elif isinstance(entry, ImageScore):
            images.append(entry)
        else:
            skipped.append((line.number, line.id, entry["skipped"] if entry is not None else "not scored"))
    if not images:
        reasons = "; ".join(sorted({reason for _, _, reason in skipped})[:3]) or f"its {INDEX} holds no records"
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
