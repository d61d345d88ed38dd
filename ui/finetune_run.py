"""One fine-tune as the Fine-tune tab runs it (in a worker thread, see `ui.jobs`): the dataset (for VQA,
checked to have questions before the model loads), a private copy of the model (so the Explorer's cached model
never carries LoRA, and keeps serving), the layer ranking, the untuned baseline, LoRA, and what the page shows
while it runs."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from hi_core.data.datasets import count_records
from hi_core.method.layer_selection import Ranking, check_layer_choice, needs_ranking
from hi_core.model.loading import LoadConfig, LoadedModel, load_model
from hi_core.model.model_cache import ModelCache
from hi_core.tuning.finetune import FinetuneConfig, check_task
from hi_core.tuning.rankings import dataset_ranking, reuse_ranking
from hi_core.tuning.run_folders import RunRecord
from hi_core.tuning.runs import ADAPTER_FOLDER, run_before_after
from hi_core.tuning.training import TrainCallbacks, TrainingCancelled

from .jobs import Progress
from .settings import Settings
from .sources import UPLOADED_ZIP, dataset_folder, record_limits
from .storage import RunStorage

RANKING_LIMIT = 200  # records scored when a run ranks the layers itself


@dataclass
class FinetuneSession:
    """One browser session's last finished fine-tune (in `gr.State`); `run_folder` is removed with it."""

    load: LoadConfig  # the base model
    dataset: str  # the dataset's name in the page
    ranking: Ranking | None  # what top/bottom chose from
    before: RunRecord  # the model as it is, on the held-out records
    after: RunRecord  # the tuned model, on the same records
    run_folder: Path  # adapter/ (peft adapter, run.json, captions), its zip, pretrained/, an unpacked upload
    ranking_work: RankingWork = field(default_factory=lambda: RankingWork())

    @property
    def adapter(self) -> Path:
        return self.run_folder / ADAPTER_FOLDER

    @property
    def archive(self) -> Path:
        return self.run_folder / "lora-adapter.zip"

    def remove_files(self) -> None:
        shutil.rmtree(self.run_folder, ignore_errors=True)


@dataclass
class Live:
    """A running fine-tune as the page shows it: its progress and the loss of every step so far."""

    steps: int
    losses: list[float] = field(default_factory=list)  # (steps done,)
    progress: Progress = field(init=False)  # of `steps`

    def __post_init__(self) -> None:
        self.progress = Progress(total=self.steps)


def ranking_key(load: LoadConfig, source: str, task: str, rank_limit: int) -> tuple:
    """What a cached ranking of one of the app's own datasets depends on: the model, the dataset, its task, the
    records scored."""
    return (load, source, task, rank_limit)


class RankingCache:
    """Layer rankings made for runs on the app's own datasets (the demo set, the generated scenes: files that never
    change), by model and record limit, shared by every session: a second launch on the same data does not rank
    again. Bounded; thread-safe. Uploads are never cached (their folder is the run's own)."""

    def __init__(self, capacity: int = 16) -> None:
        self._rankings: OrderedDict[tuple, Ranking] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Ranking | None:
        with self._lock:
            return self._rankings.get(key)

    def put(self, key: tuple, ranking: Ranking) -> None:
        with self._lock:
            self._rankings[key] = ranking
            self._rankings.move_to_end(key)
            while len(self._rankings) > self._capacity:
                self._rankings.popitem(last=False)


@dataclass
class RankingWork:
    """How the run got its ranking: records scored for it now (0: reused) and the seconds that took."""

    ranked: int = 0
    seconds: float = 0.0


def layer_ranking(
    scored,
    load: LoadConfig,
    folder: Path,
    name: str,
    loaded: LoadedModel,
    limit: int = RANKING_LIMIT,
    cache: RankingCache | None = None,
    cache_key: tuple | None = None,
    work: RankingWork | None = None,
    settings: Settings | None = None,
) -> Ranking:
    """Layers by Dataset HI: the Dataset tab's scores when they fit this run (`reuse_ranking`: the same model,
    the same records); else one made earlier for the same data (`cache` under `cache_key`); else scored now
    (default options, at most `limit` records decoded as `settings` allow; counted in `work`)."""
    if scored is not None:
        reused = reuse_ranking(scored.analysis, scored.load, scored.folder, load, folder)
        if reused is not None:
            return dataclasses.replace(
                reused, source=f"the Dataset tab's scores of {scored.name} ({len(scored.analysis.images)} images)"
            )
    if cache is not None and cache_key is not None and (cached := cache.get(cache_key)) is not None:
        return dataclasses.replace(
            cached, source=cached.source.replace("scored for this run", "scored for an earlier run")
        )
    started = time.perf_counter()
    ranking = dataset_ranking(loaded, folder, limit=limit, image_limits=record_limits(settings or Settings()))
    ranking = dataclasses.replace(
        ranking, source=f"Dataset HI of {name}, scored for this run (default options, at most {limit} records)"
    )
    if work is not None:
        work.ranked, work.seconds = count_records(folder, limit), time.perf_counter() - started
    if cache is not None and cache_key is not None:
        cache.put(cache_key, ranking)
    return ranking


def finetune_job(
    load: LoadConfig,
    config: FinetuneConfig,
    source: str,
    archive: str | None,
    run_folder: Path,
    scored,
    live: Live,
    stop: threading.Event,
    rank_limit: int = RANKING_LIMIT,
    rankings: RankingCache | None = None,
    memory: ModelCache | None = None,
    settings: Settings | None = None,
    storage: RunStorage | None = None,
) -> FinetuneSession:
    """One run, reporting to `live`; stops (TrainingCancelled) once `stop` is set. `scored`: the session's
    Dataset tab results (a `DatasetSession`), whose ranking top/bottom reuse when they fit; else a ranking of
    `rankings` made for the same model and data, else one scored now on at most `rank_limit` records. The
    private copy of the model it trains is counted in `memory`'s budget while the run lasts. An upload is held to
    `settings`' budget (`sources.dataset_folder`: room reserved in `storage`, data.jsonl bounded) and its records
    decoded as the Dataset tab decodes them."""
    settings = settings or Settings()
    if memory is None:
        return _finetune(
            load, config, source, archive, run_folder, scored, live, stop, rank_limit, rankings, settings, storage
        )
    with memory.private(load) as planned:
        return _finetune(
            planned, config, source, archive, run_folder, scored, live, stop, rank_limit, rankings, settings, storage
        )


def _finetune(
    load: LoadConfig,
    config: FinetuneConfig,
    source: str,
    archive: str | None,
    run_folder: Path,
    scored,
    live: Live,
    stop: threading.Event,
    rank_limit: int,
    rankings: RankingCache | None,
    settings: Settings,
    storage: RunStorage | None,
) -> FinetuneSession:

    def stage(text: str) -> None:
        if stop.is_set():
            raise TrainingCancelled("cancelled before training started")
        live.progress.stage = text

    def on_step(step: int, loss: float) -> None:
        live.losses.append(loss)
        live.progress.step()
        if step == config.steps:
            live.progress.stage = "captioning the held-out records with the tuned model"

    stage("unpacking the zip" if source == UPLOADED_ZIP else "preparing the dataset")
    folder, name = dataset_folder(source, archive, run_folder, config.data.task, settings, storage)
    check_task(config.data.task, folder, name)  # VQA without questions: said in the page, before the model loads
    stage("loading a private copy of the model")
    layers = config.layer_choice  # the app tunes layers, never heads
    loaded = load_model(load)
    check_layer_choice(layers, loaded.adapter.scored_layers(loaded.model), config.k)  # before the slow steps
    ranking, work = None, RankingWork()
    if needs_ranking(layers):
        stage("ranking the layers by Dataset HI")
        key = None if source == UPLOADED_ZIP else ranking_key(load, source, config.data.task, rank_limit)
        ranking = layer_ranking(scored, load, folder, name, loaded, rank_limit, rankings, key, work, settings)
    tuned = run_before_after(
        loaded,
        folder,
        run_folder,
        config,
        ranking,
        TrainCallbacks(on_step, stop.is_set),
        on_stage=stage,
        image_limits=record_limits(settings),
    )
    # `ranking`: what a layer run chose from (tuned.ranking is the same, typed for head-level runs too)
    return FinetuneSession(load, name, ranking, tuned.before, tuned.after, run_folder, work)
