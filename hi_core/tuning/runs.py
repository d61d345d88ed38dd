"""A fine-tuning run end to end, written as a run folder (`run_folders.py`).

`run_finetune` does one run: the held-out split, layer selection (`layer_selection.py`), LoRA
training (`training.py`), greedy captions of the held-out records (`captioning.py`; each asked
with its own prompt if it has one; scored as captions, or as VQA answers by answer accuracy when the
task is `vqa`), then a run folder with the peft adapter, the held-out captions and `run.json`
(`RunRecord`). A rerun with the same settings finds the finished run and returns it without
training again; the output folder must be new or empty (or hold that finished run).
`run_pretrained` is the no-tuning baseline in the same format. `run_before_after` is the two on
the same held-out records (OUT/pretrained, OUT/adapter): what the model gained from the tuning.
Under `accelerate launch` every process trains, and the main process alone evaluates and writes.

The layer ranking top/bottom choose from is given, or scored now or reused (`rankings.py`).
A head-level run (`FinetuneConfig.heads`, `head_lora.py`) chooses heads instead, from a head ranking
(`rankings.dataset_head_ranking`), and records them in run.json with the KV heads it trained.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import InputError
from ..base.outputs import check_output_folder
from ..method.head_selection import HeadRanking, needs_head_ranking, select_heads
from ..method.layer_selection import Ranking, needs_ranking, select_layers
from ..model.captioning import CaptionEvaluation, evaluate_answers, evaluate_captions, generate_captions
from ..model.images import ImageLimits
from ..model.loading import LoadedModel
from .finetune import DataConfig, FinetuneConfig, Split, Task, check_task, split_dataset
from .head_lora import HeadPlan, check_targets, head_counts, head_masks, heads_only, plan_heads
from .run_folders import RunRecord, check_run_folder, finished_run, run_settings, write_run
from .training import (
    TrainCallbacks,
    attention_targets,
    lora_attached,
    lora_config,
    make_accelerator,
    train_lora,
    trainable_parameters,
)

logger = logging.getLogger(__name__)


def evaluate_held_out(loaded: LoadedModel, split: Split, data: DataConfig) -> CaptionEvaluation:
    """The held-out records captioned (each with its own prompt, else the run's) and scored for the task."""
    if not split.held_out:
        return CaptionEvaluation(metrics={}, notes=["no held-out records: metrics not computed"])
    held_out = split.held_out
    prompts = [line.fields["prompt"] or data.prompt for line in held_out.lines]  # from the index: no image opened
    images = (record.image for record in held_out)  # each record read when its batch is captioned
    generated = generate_captions(loaded, images, prompts, data.max_new_tokens, data.eval_batch_size)
    # a held-out line is well-formed (`DatasetRecords`): its text is a string, as its id (`ids`)
    references = {record_id: str(line.fields["text"]) for record_id, line in zip(held_out.ids, held_out.lines)}
    answers = dict(zip(held_out.ids, generated))
    own_prompts = {
        record_id: prompt for record_id, line in zip(held_out.ids, held_out.lines) if (prompt := line.fields["prompt"])
    }
    if data.task == "vqa":
        return evaluate_answers(references, answers, own_prompts)
    return evaluate_captions(references, answers, data.meteor, own_prompts)


def _check_task(task: Task, dataset: str | Path, eval_dataset: str | Path | None) -> None:
    """A VQA run's training set and held-out set must have questions (prompts): InputError before any work."""
    for folder in (dataset, eval_dataset):
        if folder is not None:
            check_task(task, folder)


def _split_summary(split: Split) -> dict[str, Any]:
    return {"train": len(split.train), "held_out": len(split.held_out), "how": split.description}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def needs_run_ranking(config: FinetuneConfig) -> bool:
    """Whether the run's choice (top/bottom layers or heads) needs a ranking."""
    return needs_head_ranking(config.heads) if config.heads is not None else needs_ranking(config.layer_choice)


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
        return select_layers(config.layer_choice, adaptable, config.k, ranking, config.seed), None
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
            write_run(Path(out), record, evaluation.captions, peft_model.save_pretrained)
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
        write_run(Path(out), record, evaluation.captions, None)
    accelerator.wait_for_everyone()
    return record


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
