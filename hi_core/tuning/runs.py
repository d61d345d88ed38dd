"""A fine-tuning run on disk: one folder per run, complete or absent, reused when finished.

`run_finetune` does one run end to end: the held-out split, layer selection (`layer_selection.py`),
LoRA training (`finetune.py`), greedy captions of the held-out records (`captioning.py`; each asked
with its own prompt if it has one; scored as captions, or as VQA answers by answer accuracy when the
task is `vqa`), then a run folder with the peft adapter (`adapter_config.json`, `adapter_model.safetensors`),
the held-out captions (`captions.jsonl`) and `run.json` (`RunRecord`). The folder is written under a temporary
name and renamed into place, `run.json` last, so an interrupted run leaves nothing behind; a rerun
with the same settings finds the finished run and returns it without training again. The output
folder must be new or empty (or hold that finished run): a file there, or a folder with anything
else in it, is refused before any work, and nothing the user owns is ever renamed or replaced.
`run_pretrained` is the no-tuning baseline in the same format. `run_before_after` is the two on
the same held-out records (OUT/pretrained, OUT/adapter): what the model gained from the tuning.
Under `accelerate launch` every process trains, and the main process alone evaluates and writes.

The layer ranking top/bottom choose from is given, or scored now (`dataset_ranking`), or reused
from dataset scores made earlier with the same model on the same records (`reuse_ranking`).
A head-level run (`FinetuneConfig.heads`, `head_lora.py`) chooses heads instead, from a head ranking
(`dataset_head_ranking`), and records them in run.json with the KV heads it trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..base.distributed import is_distributed
from ..base.errors import InputError
from ..base.outputs import check_output_folder, write_json
from ..data.dataset_scoring import DatasetAnalysis, DatasetConfig, score_dataset
from ..data.datasets import INDEX
from ..method.head_selection import HeadRanking, needs_head_ranking, select_heads
from ..method.layer_selection import Ranking, needs_ranking, select_layers
from ..model.captioning import CaptionEvaluation, evaluate_answers, evaluate_captions, generate_captions
from ..model.images import ImageLimits
from ..model.loading import LoadConfig, LoadedModel
from .finetune import (
    DataConfig,
    FinetuneConfig,
    Split,
    TrainCallbacks,
    attention_targets,
    check_task,
    lora_attached,
    lora_config,
    make_accelerator,
    split_dataset,
    train_lora,
    trainable_parameters,
)
from .head_lora import HeadPlan, check_targets, head_counts, head_masks, heads_only, plan_heads

logger = logging.getLogger(__name__)

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
    order = None
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


def evaluate_held_out(loaded: LoadedModel, split: Split, data: DataConfig) -> CaptionEvaluation:
    """The held-out records captioned (each with its own prompt, else the run's) and scored for the task."""
    if not split.held_out:
        return CaptionEvaluation(metrics={}, notes=["no held-out records: metrics not computed"])
    held_out = split.held_out
    prompts = [line.fields["prompt"] or data.prompt for line in held_out.lines]  # from the index: no image opened
    images = (record.image for record in held_out)  # each record read when its batch is captioned
    generated = generate_captions(loaded, images, prompts, data.max_new_tokens, data.eval_batch_size)
    references = {line.id: line.fields["text"] for line in held_out.lines}
    answers = dict(zip(held_out.ids, generated))
    own_prompts = {line.id: line.fields["prompt"] for line in held_out.lines if line.fields["prompt"]}
    if data.task == "vqa":
        return evaluate_answers(references, answers, own_prompts)
    return evaluate_captions(references, answers, data.meteor, own_prompts)


def _check_task(task: str, dataset: str | Path, eval_dataset: str | Path | None) -> None:
    """A VQA run's training set and held-out set must have questions (prompts): InputError before any work."""
    for folder in (dataset, eval_dataset):
        if folder is not None:
            check_task(task, folder)  # type: ignore[arg-type]


def _write_run(
    folder: Path, record: RunRecord, captions: list[dict[str, str]], save_adapter: Callable[[Path], None] | None
) -> None:
    with run_folder(folder) as partial:
        if save_adapter is not None:
            save_adapter(partial)
        (partial / CAPTIONS_FILE).write_text("".join(json.dumps(c) + "\n" for c in captions), encoding="utf-8")
        write_json(partial / RUN_FILE, record.to_json())  # last: its presence marks a finished run


def _split_summary(split: Split) -> dict[str, Any]:
    return {"train": len(split.train), "held_out": len(split.held_out), "how": split.description}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def needs_run_ranking(config: FinetuneConfig) -> bool:
    """Whether the run's choice (top/bottom layers or heads) needs a ranking."""
    return needs_head_ranking(config.heads) if config.heads is not None else needs_ranking(config.layers)  # type: ignore[arg-type]


def select_targets(
    loaded: LoadedModel, config: FinetuneConfig, ranking: Ranking | HeadRanking | None
) -> tuple[tuple[int, ...], HeadPlan | None]:
    """The layers LoRA wraps, and for a head-level run the heads it trains in them (None for a
    layer run). `ranking`: a layer `Ranking` for top/bottom layers, a `HeadRanking` for top/bottom
    heads. InputError for a choice the model cannot take."""
    adaptable = loaded.adapter.scored_layers(loaded.model)  # softmax-attention layers: all but a hybrid's others
    if config.heads is None:
        if isinstance(ranking, HeadRanking):
            raise TypeError("a layer choice needs a layer Ranking, got a HeadRanking")
        return select_layers(config.layers, adaptable, config.k, ranking, config.seed), None  # type: ignore[arg-type]
    if isinstance(ranking, Ranking):
        raise TypeError("a head choice needs a HeadRanking, got a layer Ranking")
    num_heads, _ = head_counts(loaded)
    plan = plan_heads(loaded, select_heads(config.heads, adaptable, num_heads, config.k, ranking, config.seed))
    return plan.layers, plan


def run_finetune(
    loaded: LoadedModel,
    dataset: str | Path,
    out: str | Path,
    config: FinetuneConfig = FinetuneConfig(),
    ranking: Ranking | HeadRanking | None = None,
    eval_dataset: str | Path | None = None,
    callbacks: TrainCallbacks | None = None,
    split: Split | None = None,
) -> RunRecord:
    """Select layers (or heads), train LoRA, caption the held-out records, write `out` (adapter + run.json).

    A head-level run (`config.heads`) wraps the layers of the chosen heads and trains only their
    slices (`head_lora.py`); `ranking` is then a `HeadRanking`.
    A finished run in `out` with the same settings is returned as it is (logged), not retrained.
    `split` may be passed to reuse records already read (compare does).
    """
    num_layers = len(loaded.adapter.decoder_layers(loaded.model))
    layers, plan = select_targets(loaded, config, ranking)  # input errors before any work
    targets = attention_targets(loaded, config.targets)
    if plan is not None:
        check_targets(targets)
    _check_task(config.data.task, dataset, eval_dataset)
    settings = run_settings(loaded, dataset, eval_dataset, config, ranking if needs_run_ranking(config) else None)
    done = finished_run(out, settings)
    if done is not None:
        logger.info("%s already holds this finished run: not training again", out)
        return done
    split = split or split_dataset(dataset, config.data, eval_dataset)
    accelerator = make_accelerator(loaded)
    started = _now()
    with contextlib.ExitStack() as attached:
        peft_model = attached.enter_context(lora_attached(loaded, lora_config(loaded, layers, config), config.seed))
        masks = attached.enter_context(heads_only(head_masks(loaded, plan))) if plan is not None else None
        trainable = trainable_parameters(peft_model, masks)
        clock = time.perf_counter()
        losses = train_lora(loaded, split.train, config, callbacks, accelerator)
        train_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        main = accelerator.is_main_process  # the other processes of a multi-GPU run only train
        evaluation = evaluate_held_out(loaded, split, config.data) if main else CaptionEvaluation(metrics={})
        eval_seconds = time.perf_counter() - clock
        total = sum(parameter.numel() for name, parameter in peft_model.named_parameters() if "lora_" not in name)
        record = RunRecord(
            strategy=config.strategy,
            settings=settings,
            layers=list(layers),
            num_layers=num_layers,
            targets=targets,
            ranking=ranking.to_json() if ranking is not None else None,
            trainable_parameters=trainable,
            total_parameters=total,
            losses=losses,
            metrics=evaluation.metrics,
            metric_notes=evaluation.notes,
            samples=evaluation.samples,
            split=_split_summary(split),
            timings={
                "started": started,
                "finished": _now(),
                "train_seconds": train_seconds,
                "seconds_per_step": train_seconds / config.steps,
                "eval_seconds": eval_seconds,
            },
            task=config.data.task,
            metric_intervals=evaluation.intervals,
            **(_head_fields(plan) if plan is not None else {}),
        )
        if main:
            _write_run(Path(out), record, evaluation.captions, peft_model.save_pretrained)
        accelerator.wait_for_everyone()
    return record


def _head_fields(plan: HeadPlan) -> dict[str, Any]:
    return {
        "heads": [list(head) for head in plan.heads],
        "kv_heads": plan.kv_heads_json(),
        "num_heads": plan.num_heads,
        "num_kv_heads": plan.num_kv_heads,
    }


def run_pretrained(
    loaded: LoadedModel,
    dataset: str | Path,
    out: str | Path,
    data: DataConfig = DataConfig(),
    eval_dataset: str | Path | None = None,
    split: Split | None = None,
) -> RunRecord:
    """The baseline without tuning: the held-out captions of the model as it is, in a run folder."""
    _check_task(data.task, dataset, eval_dataset)
    settings = run_settings(loaded, dataset, eval_dataset, data)
    done = finished_run(out, settings)
    if done is not None:
        logger.info("%s already holds this finished run: not evaluating again", out)
        return done
    split = split or split_dataset(dataset, data, eval_dataset)
    accelerator = make_accelerator(loaded)
    main = accelerator.is_main_process  # under `accelerate launch` the main process alone evaluates
    started, clock = _now(), time.perf_counter()
    evaluation = evaluate_held_out(loaded, split, data) if main else CaptionEvaluation(metrics={})
    total = sum(parameter.numel() for parameter in loaded.model.parameters())
    record = RunRecord(
        strategy="pretrained",
        settings=settings,
        layers=[],
        num_layers=len(loaded.adapter.decoder_layers(loaded.model)),
        targets=[],
        ranking=None,
        trainable_parameters=0,
        total_parameters=total,
        losses=[],
        metrics=evaluation.metrics,
        metric_notes=evaluation.notes,
        samples=evaluation.samples,
        split=_split_summary(split),
        timings={
            "started": started,
            "finished": _now(),
            "train_seconds": 0.0,
            "seconds_per_step": 0.0,
            "eval_seconds": time.perf_counter() - clock,
        },
        task=data.task,
        metric_intervals=evaluation.intervals,
    )
    if main:
        _write_run(Path(out), record, evaluation.captions, None)
    accelerator.wait_for_everyone()
    return record


def dataset_rankings(
    loaded: LoadedModel, dataset: str | Path, limit: int | None = None, image_limits: ImageLimits | None = None
) -> tuple[Ranking, HeadRanking]:
    """Layers and heads ranked by dataset HI (`score --dataset` with default options, the records
    decoded within `image_limits`), from one scoring pass computed now."""
    if is_distributed():
        raise InputError("under accelerate launch, score the dataset first (score --dataset) and give --ranking")
    analysis = score_dataset(loaded, dataset, DatasetConfig(limit=limit, image_limits=image_limits))
    if analysis is None:
        raise RuntimeError("score_dataset returned no result on a single process")
    source = f"dataset HI of {dataset} ({len(analysis.images)} images)"
    return Ranking.from_scores(analysis.layer_scores, source), HeadRanking.from_hi(analysis.hi, source)


def dataset_ranking(
    loaded: LoadedModel, dataset: str | Path, limit: int | None = None, image_limits: ImageLimits | None = None
) -> Ranking:
    """Layers ranked by dataset HI (`score --dataset` with default options), computed now."""
    return dataset_rankings(loaded, dataset, limit, image_limits)[0]


def dataset_head_ranking(loaded: LoadedModel, dataset: str | Path, limit: int | None = None) -> HeadRanking:
    """Heads ranked by dataset HI (`score --dataset` with default options), computed now."""
    return dataset_rankings(loaded, dataset, limit)[1]


def reuse_ranking(
    scored: DatasetAnalysis | None,
    scored_load: LoadConfig | None,
    scored_folder: Path | None,
    load: LoadConfig,
    folder: Path,
) -> Ranking | None:
    """The layer ranking of dataset scores made earlier (`scored`, by the model of `scored_load`, on
    the dataset in `scored_folder`), if they fit a run of the model of `load` on `folder`: the same
    model configuration and the same records (byte-identical data.jsonl); else None (rank anew).
    Scores whose dataset files are gone are not reused."""
    if scored is None or scored_load is None or scored_folder is None or scored_load != load:
        return None
    try:
        same_records = (Path(scored_folder) / INDEX).read_bytes() == (Path(folder) / INDEX).read_bytes()
    except OSError:  # either dataset is gone (cleaned up), or unreadable
        return None
    if not same_records:
        return None
    return Ranking.from_scores(
        scored.layer_scores, f"dataset HI of {Path(folder).name} ({len(scored.images)} images, scored earlier)"
    )


@dataclass(frozen=True)
class BeforeAfter:
    """The model before and after tuning, captioning the same held-out records.
    ranking: what top/bottom chose the layers (heads) from (None for random/all/a list)."""

    before: RunRecord
    after: RunRecord
    ranking: Ranking | HeadRanking | None


PRETRAINED_FOLDER = "pretrained"
ADAPTER_FOLDER = "adapter"


def check_before_after_folder(out: str | Path, what: str = "output folder") -> Path:
    """`out` if a before/after run can be written there: absent, empty, or holding only the two run
    folders of an earlier one (each new, empty, or a finished run); else InputError."""
    out = check_output_folder(out, what)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (PRETRAINED_FOLDER, ADAPTER_FOLDER))
        if others:
            raise InputError(
                f"{what} {str(out)!r} holds other things ({', '.join(others[:3])}): choose a new or empty folder "
                f"(a before/after run writes {PRETRAINED_FOLDER}/ and {ADAPTER_FOLDER}/ there)"
            )
    for name in (PRETRAINED_FOLDER, ADAPTER_FOLDER):
        check_run_folder(out / name, f"{what}'s {name}/")
    return out


def run_before_after(
    loaded: LoadedModel,
    folder: str | Path,
    out: str | Path,
    config: FinetuneConfig,
    ranking: Ranking | HeadRanking | None,
    callbacks: TrainCallbacks | None = None,
    on_stage: Callable[[str], None] | None = None,
    eval_dataset: str | Path | None = None,
    image_limits: ImageLimits | None = None,
) -> BeforeAfter:
    """The untuned model's held-out captions (`run_pretrained` into out/pretrained), then a LoRA run
    (`run_finetune` into out/adapter), on one held-out split made once. Each is reused when finished.

    The layer (or head) choice (and the ranking, for top/bottom) is checked before any work; `on_stage(text)`
    is told each slow stage as it starts (it may raise to stop the run there). image_limits: how far the
    records' files are decoded (None: full size; a server passes its own).
    """
    out = Path(out)
    stage = on_stage or (lambda text: None)
    select_targets(loaded, config, ranking)  # a bad choice fails before the slow steps
    _check_task(config.data.task, folder, eval_dataset)
    for name in (PRETRAINED_FOLDER, ADAPTER_FOLDER):
        check_run_folder(out / name, f"{name} run folder")
    stage("reading the held-out split")
    split = split_dataset(folder, config.data, eval_dataset, image_limits=image_limits)
    stage(f"captioning the {len(split.held_out)} held-out record(s) with the model as it is")
    before = run_pretrained(loaded, folder, out / PRETRAINED_FOLDER, config.data, eval_dataset, split=split)
    stage("training")
    after = run_finetune(loaded, folder, out / ADAPTER_FOLDER, config, ranking, eval_dataset, callbacks, split=split)
    return BeforeAfter(before=before, after=after, ranking=ranking if needs_run_ranking(config) else None)
