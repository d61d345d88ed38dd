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

The cache folder (`score_cache`) holds the settings and one part file per process; a record edited
or whose files were replaced since it was cached is scored again.

The memory held is one batch of images and their maps, plus a (images, layers, heads) array of
HI and mass for the intervals (a few KB per image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from ..base.distributed import process_state
from ..base.errors import InputError
from ..method.image_scoring import AnalysisConfig, PreparedImage, prepare_image
from ..method.maps import batch_head_maps
from ..method.scoring import layer_scores
from ..model.loading import LoadedModel
from .dataset_analysis import DatasetAnalysis, DatasetConfig, ImageScore
from .datasets import INDEX, Cancelled, Record, RecordLine, Stop, count_records, load_record, scan_dataset
from .score_cache import (
    Entries,
    PartWriter,
    cache_settings,
    check_cache_folder,
    open_cache,
    read_cache,
    record_fingerprint,
)

logger = logging.getLogger(__name__)


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
    done: set[tuple[str, str]] = set()  # (id, fingerprint) of the records scored before
    writer = None
    if cache is not None:
        open_cache(cache, cache_settings(loaded, folder, config), process == 0)
        barrier()
        done = {
            key for key, entry in read_cache(cache).items() if isinstance(entry, ImageScore)
        }  # failures are retried
        writer = PartWriter(cache / f"part-{process}.jsonl")
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
    writer: PartWriter | None, fresh: Entries, results: list[tuple[ImageScore, str]], failures: list[dict[str, Any]]
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
            if line.problem is not None or line.id is None:  # malformed (a record without an id has a problem)
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
