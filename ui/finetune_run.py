"""One fine-tune as the Fine-tune tab runs it (in a worker thread, see `ui.jobs`): the dataset (for VQA,
checked to have questions before the model loads), a private copy of the model (so the Explorer's cached model never carries LoRA, and keeps serving), the layer
ranking, the untuned baseline, LoRA, and what the page shows while it runs."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from hi_core.finetune import FinetuneConfig, TrainCallbacks, TrainingCancelled, check_task
from hi_core.layer_selection import Ranking, check_layer_choice, needs_ranking
from hi_core.loading import LoadConfig, LoadedModel, load_model
from hi_core.runs import ADAPTER_FOLDER, RunRecord, dataset_ranking, reuse_ranking, run_before_after

from .jobs import Progress
from .sources import UPLOADED_ZIP, dataset_folder

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
    progress: Progress = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.progress = self.progress or Progress(total=self.steps)


def layer_ranking(scored, load: LoadConfig, folder: Path, name: str, loaded: LoadedModel) -> Ranking:
    """Layers by Dataset HI: the Dataset tab's scores when they fit this run (`reuse_ranking`: the same model,
    the same records); else scored now (default options, at most RANKING_LIMIT records)."""
    if scored is not None:
        reused = reuse_ranking(scored.analysis, scored.load, scored.folder, load, folder)
        if reused is not None:
            return dataclasses.replace(reused, source=f"the Dataset tab's scores of {scored.name} ({len(scored.analysis.images)} images)")
    ranking = dataset_ranking(loaded, folder, limit=RANKING_LIMIT)
    return dataclasses.replace(ranking, source=f"Dataset HI of {name}, scored for this run (default options, at most {RANKING_LIMIT} records)")


def finetune_job(load: LoadConfig, config: FinetuneConfig, source: str, archive: str | None, run_folder: Path,
                 scored, live: Live, stop: threading.Event) -> FinetuneSession:
    """One run, reporting to `live`; stops (TrainingCancelled) once `stop` is set. `scored`: the session's
    Dataset tab results (a `DatasetSession`), whose ranking top/bottom reuse when they fit."""

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
    folder, name = dataset_folder(source, archive, run_folder, config.data.task)
    check_task(config.data.task, folder, name)  # VQA without questions: said in the page, before the model loads
    stage("loading a private copy of the model")
    loaded = load_model(load)
    check_layer_choice(config.layers, loaded.adapter.scored_layers(loaded.model), config.k)  # before the slow steps
    ranking = None
    if needs_ranking(config.layers):
        stage("ranking the layers by Dataset HI")
        ranking = layer_ranking(scored, load, folder, name, loaded)
    tuned = run_before_after(loaded, folder, run_folder, config, ranking, TrainCallbacks(on_step, stop.is_set), on_stage=stage)
    return FinetuneSession(load, name, tuned.ranking, tuned.before, tuned.after, run_folder)
