"""A fine-tuning run on disk: one folder per run, complete or absent, reused when finished.

A run folder holds the peft adapter (`adapter_config.json`, `adapter_model.safetensors`; none for the
untuned baseline), the held-out captions (`captions.jsonl`) and `run.json` (`RunRecord`). It is written
under a temporary name and renamed into place, `run.json` last, so an interrupted run leaves nothing
behind; a rerun with the same settings (`run_settings`) finds the finished run (`finished_run`) and
reuses it. The output folder must be new or empty (or hold that finished run): a file there, or a
folder with anything else in it, is refused before any work, and nothing the user owns is ever
renamed or replaced. The runs themselves are `runs.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import InputError
from ..base.outputs import check_output_folder, write_json
from ..method.head_selection import HeadRanking
from ..method.layer_selection import Ranking
from ..model.loading import LoadedModel
from .finetune import DataConfig, FinetuneConfig

RUN_FILE = "run.json"
CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class RunRecord:
    """What `run.json` holds. strategy: top/bottom/random/all/list, or `pretrained` (no tuning).
    losses: (steps,) training loss per step. metrics: held-out caption metrics, or answer accuracy
    for task `vqa` (may be empty). task: `caption` or `vqa` (runs written before tasks: caption).
    metric_intervals: {metric: {"low", "high"}} 95% intervals over the held-out records (accuracy).
    Head-level runs (strategy `*-heads`) also have: heads, the chosen [layer, head] pairs; kv_heads,
    {layer: [KV heads trained]}; num_heads, num_kv_heads per layer (`head_lora.HeadPlan`); their
    `layers` are the layers holding those heads and `trainable_parameters` counts the unmasked entries."""

    strategy: str
    settings: dict[str, Any]
    layers: list[int]
    num_layers: int
    targets: list[str]
    ranking: dict[str, Any] | None
    trainable_parameters: int
    total_parameters: int
    losses: list[float]
    metrics: dict[str, float]
    metric_notes: list[str]
    samples: list[dict[str, str]]
    split: dict[str, Any]
    timings: dict[str, Any]
    task: str = "caption"
    metric_intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    heads: list[list[int]] | None = None
    kv_heads: dict[str, list[int]] | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None

    @property
    def trainable_share(self) -> float:
        return self.trainable_parameters / self.total_parameters

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"trainable_share": self.trainable_share}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def run_settings(
    loaded: LoadedModel,
    dataset: str | Path,
    eval_dataset: str | Path | None,
    config: FinetuneConfig | DataConfig,
    ranking: Ranking | HeadRanking | None = None,
) -> dict[str, Any]:
    """What a run's result depends on; a finished run is reused only when these are equal.
    `ranking`: the one its layers (heads) were chosen from (top/bottom), else None."""
    chosen = asdict(config)
    if chosen.get("heads", ...) is None:  # a layer run: its settings as before head-level runs existed
        del chosen["heads"]
    order: dict[str, Any] | None = None
    if isinstance(ranking, HeadRanking):
        order = {"source": ranking.source, "heads": [list(head) for head in ranking.heads]}
    elif ranking is not None:
        order = {"source": ranking.source, "layers": list(ranking.layers)}
    settings = {
        "model": loaded.name,
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "dataset": str(Path(dataset).resolve()),
        "eval_dataset": None if eval_dataset is None else str(Path(eval_dataset).resolve()),
        "config": chosen,
        "ranking": order,
    }
    return json.loads(json.dumps(settings))  # tuples as lists, as they come back from run.json


def check_run_folder(folder: str | Path, what: str = "run folder") -> Path:
    """`folder` if a run can be written there or read back from it: absent, empty, or holding a
    `run.json`; else InputError (a file, a folder under a file, a folder with other things in it)."""
    folder = check_output_folder(folder, what)
    if folder.is_dir() and not (folder / RUN_FILE).is_file() and any(folder.iterdir()):
        raise InputError(
            f"{what} {str(folder)!r} exists and is not a run folder (no {RUN_FILE}); choose a new or empty folder"
        )
    return folder


def _with_task(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings read back from a run.json written before runs had a task: those were caption runs."""
    config = settings.get("config")
    if not isinstance(config, dict):
        return settings
    if isinstance(config.get("data"), dict) and "task" not in config["data"]:  # a tuned run: FinetuneConfig
        return settings | {"config": config | {"data": config["data"] | {"task": "caption"}}}
    if "eval_fraction" in config and "task" not in config:  # the untuned baseline: DataConfig
        return settings | {"config": config | {"task": "caption"}}
    return settings


def finished_run(folder: str | Path, settings: dict[str, Any]) -> RunRecord | None:
    """The run in `folder` if it finished with these settings; None if there is none yet."""
    path = check_run_folder(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError) as error:
        raise InputError(
            f"{str(path)!r} is not a {RUN_FILE} written by a run ({error}); delete the folder or choose another"
        ) from None
    if _with_task(record.settings) != settings:
        differing = sorted(
            key for key in settings.keys() | record.settings.keys() if settings.get(key) != record.settings.get(key)
        )
        raise InputError(
            f"{str(folder)!r} holds a run made with other settings ({', '.join(differing)}); "
            "delete it or choose another output folder"
        )
    return record


def _check_replaceable(folder: Path) -> None:
    """A run folder may take the place of nothing, or of an empty folder: never of a user's file or
    of a folder with anything in it (a finished run is reused or refused by `finished_run` first)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{str(folder)!r} is a file, not a folder: choose a new or empty folder for the run")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{str(folder)!r} exists and is not empty; choose a new or empty folder")


@contextlib.contextmanager
def run_folder(folder: str | Path) -> Iterator[Path]:
    """A temporary folder beside `folder`, renamed onto it when the block succeeds; removed when the
    block fails or is interrupted. `folder` must be absent or an empty folder (checked before and
    after the block): nothing the user owns is renamed, replaced or deleted."""
    folder = check_output_folder(folder, "run folder")
    _check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        _check_replaceable(folder)  # something may have appeared there while the run was written
        os.replace(partial, folder)  # onto an absent or empty folder: one atomic rename
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_run(
    folder: Path, record: RunRecord, captions: list[dict[str, str]], save_adapter: Callable[[Path], None] | None
) -> None:
    """Write the run folder `folder` under a temporary name (`run_folder`): the adapter (`save_adapter`;
    None for the untuned baseline), the held-out captions, then `run.json`."""
    with run_folder(folder) as partial:
        if save_adapter is not None:
            save_adapter(partial)
        (partial / CAPTIONS_FILE).write_text("".join(json.dumps(c) + "\n" for c in captions), encoding="utf-8")
        write_json(partial / RUN_FILE, record.to_json())  # last: its presence marks a finished run
