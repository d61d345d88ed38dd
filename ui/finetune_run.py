"""One fine-tune as the Fine-tune tab runs it (in a worker thread, see `ui.jobs`): the dataset, a private
copy of the model (so the Explorer's cached model never carries LoRA, and keeps serving), the layer
ranking, the untuned baseline, LoRA, and what the page shows while it runs."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hi_core.datasets import INDEX
from hi_core.finetune import FinetuneConfig, TrainCallbacks, TrainingCancelled, split_dataset
from hi_core.layer_selection import Ranking, needs_ranking, select_layers
from hi_core.loading import LoadConfig, LoadedModel, load_model
from hi_core.runs import RunRecord, dataset_ranking, run_finetune, run_pretrained

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
        return self.run_folder / "adapter"

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
    """Layers by Dataset HI: the Dataset tab's scores when this session scored the same records (the same
    data.jsonl) with the same model there; else scored now (default options, at most RANKING_LIMIT records)."""
    try:
        same = scored is not None and scored.load == load and (scored.folder / INDEX).read_bytes() == (folder / INDEX).read_bytes()
    except OSError:  # the Dataset tab's files were cleaned up
        same = False
    if same:
        return Ranking.from_scores(scored.analysis.layer_scores,
                                   f"the Dataset tab's scores of {scored.name} ({len(scored.analysis.images)} images)")
    ranking = dataset_ranking(loaded, folder, limit=RANKING_LIMIT)
    return dataclasses.replace(ranking, source=f"Dataset HI of {name}, scored for this run (default options, at most {RANKING_LIMIT} records)")


def finetune_job(load: LoadConfig, config: FinetuneConfig, source: str, archive: str | None, run_folder: Path,
                 scored, live: Live, stop: threading.Event) -> FinetuneSession:
    """One run, reporting to `live`; stops (TrainingCancelled) once `stop` is set."""

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
    folder, name = dataset_folder(source, archive, run_folder)
    stage("loading a private copy of the model")
    loaded = load_model(load)
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    # a bad k or layer list fails now, before the slow steps (any ranking of the right size checks them)
    select_layers(config.layers, layers, config.k, Ranking.from_scores(np.zeros(layers), "check"), config.seed)
    ranking = None
    if needs_ranking(config.layers):
        stage("ranking the layers by Dataset HI")
        ranking = layer_ranking(scored, load, folder, name, loaded)
    split = split_dataset(folder, config.data)
    stage(f"captioning the {len(split.held_out)} held-out record(s) with the model as it is")
    before = run_pretrained(loaded, folder, run_folder / "pretrained", config.data, split=split)
    stage("training")
    after = run_finetune(loaded, folder, run_folder / "adapter", config, ranking, callbacks=TrainCallbacks(on_step, stop.is_set),
                         split=split)
    return FinetuneSession(load, name, ranking, before, after, run_folder)
