"""`finetune` (LoRA on chosen layers or heads, before/after) and `compare` (strategies over seeds)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

import torch

from ..base.distributed import is_main_process
from ..base.errors import InputError
from ..data.datasets import count_records
from ..method.head_selection import HeadRanking, check_head_choice, format_heads, parse_head_choice, read_head_ranking
from ..method.layer_selection import Ranking, check_layer_choice, parse_layer_choice, read_ranking
from ..model.inputs import DEFAULT_PROMPT
from ..model.loading import LoadedModel
from ..tuning.compare import CompareConfig, CompareStrategy, check_compare_folder, run_compare
from ..tuning.finetune import DataConfig, FinetuneConfig, Schedule, Task, check_task
from ..tuning.head_lora import check_targets, head_counts
from ..tuning.rankings import dataset_head_ranking, dataset_ranking
from ..tuning.run_folders import RUN_FILE, RunRecord, check_run_folder
from ..tuning.runs import (
    ADAPTER_FOLDER,
    PRETRAINED_FOLDER,
    check_before_after_folder,
    needs_run_ranking,
    run_before_after,
    run_finetune,
)
from ..tuning.training import attention_targets
from . import common
from .common import add_model_options


def _add_tuning_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `finetune` and `compare` (defaults: DESIGN 1.9 and FinetuneConfig)."""
    defaults = FinetuneConfig()
    parser.add_argument("--model", required=True, help="`demo`, a Hub id (owner/name) or a local model folder")
    parser.add_argument(
        "--dataset", required=True, metavar="DIR", help="a dataset folder (data.jsonl + images + masks)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "-k",
        type=int,
        default=defaults.k,
        help="how many layers (finetune --heads: heads) top/bottom/random adapt (default: %(default)s)",
    )
    parser.add_argument(
        "--ranking",
        metavar="SCORE.json",
        help="the layer (and head) ranking: a JSON written by `score` (default: score the dataset now)",
    )
    parser.add_argument("--ranking-limit", type=int, metavar="N", help="score only the first N records for the ranking")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="LoRA alpha (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=defaults.dropout, help="LoRA dropout (default: %(default)s)")
    parser.add_argument(
        "--targets",
        help="comma-separated linear modules of the attention to adapt "
        "(default: all of them, e.g. q_proj,k_proj,v_proj,o_proj)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="records per step and process (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=float, default=defaults.warmup, help="warm-up share of the steps (default: %(default)s)"
    )
    parser.add_argument(
        "--schedule", choices=get_args(Schedule), default=defaults.schedule, help="default: %(default)s"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed (compare: the first seed) (default: %(default)s)"
    )
    add_evaluation_options(
        parser,
        defaults.data,
        task="how the held-out records are scored: caption metrics, or for vqa (records whose prompt is a question "
        "and text its answer) answer accuracy, normalized exact match with a 95%% interval (default: %(default)s)",
        fraction="share of records held out for the caption metrics, by a hash of the id (default: %(default)s)",
        eval_dataset="a separate held-out dataset (its ids are left out of training)",
    )


def add_evaluation_options(
    parser: argparse.ArgumentParser, defaults: DataConfig, task: str, fraction: str, eval_dataset: str
) -> None:
    """The held-out evaluation's options (finetune, compare, ablate: `data_config` reads them back), the
    threads and the model's options."""
    parser.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="the prompt of the records without their own `prompt` (default: %(default)r)",
    )
    parser.add_argument("--task", choices=get_args(Task), default=defaults.task, help=task)
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction, help=fraction)
    parser.add_argument("--eval-dataset", metavar="DIR", help=eval_dataset)
    parser.add_argument("--eval-limit", type=int, metavar="N", help="caption at most N held-out records")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        help="caption length limit (default: %(default)s)",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java process)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    add_model_options(parser)


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        prompt=args.prompt,
        task=args.task,
        eval_fraction=args.eval_fraction,
        eval_limit=args.eval_limit,
        max_new_tokens=args.max_new_tokens,
        meteor=not args.no_meteor,
    )


def add_finetune(subcommands: argparse._SubParsersAction) -> None:
    finetune = subcommands.add_parser(
        "finetune",
        help="LoRA on the top-HI (or other) language-model layers",
        description="Train LoRA on the attention projections of the chosen language-model layers (--layers top: "
        "the k best by layer score), caption the held-out records, and write a peft adapter and run.json to --out.",
    )
    _add_tuning_options(finetune)
    choice = finetune.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--layers",
        metavar="top|bottom|random|all|L1,L2,..",
        help="which layers: by the ranking (top/bottom k), k random ones (seeded), all, or a list",
    )
    choice.add_argument(
        "--heads",
        metavar="top|bottom|random|L:H,..",
        help="head-level LoRA instead: k heads by the head ranking (top/bottom), k random ones (seeded), "
        "or layer:head pairs; LoRA trains only those heads' rows of q/k/v (k/v: the KV heads they read) "
        "and their input columns of o",
    )
    finetune.add_argument(
        "--before",
        action="store_true",
        help="also caption the held-out records with the untuned model, and report both metric sets: "
        "OUT/pretrained holds that run, OUT/adapter the tuned one",
    )
    finetune.set_defaults(run=_run_finetune)


def add_compare(subcommands: argparse._SubParsersAction) -> None:
    compare = subcommands.add_parser(
        "compare",
        help="top-k HI layers against random-k, bottom-k, all layers and no tuning",
        description="Fine-tune with each layer strategy and several seeds on the same budget, and write "
        "report.md, results.json and figures to --out (each run in OUT/runs/; a rerun reuses finished runs).",
    )
    _add_tuning_options(compare)
    compare.add_argument(
        "--seeds", type=int, default=CompareConfig().seeds, help="runs per strategy (default: %(default)s)"
    )
    compare.add_argument(
        "--strategies",
        default=",".join(CompareConfig().strategies),
        help="comma-separated strategies among " + ", ".join(get_args(CompareStrategy)) + " (default: %(default)s)",
    )
    compare.add_argument(
        "--heads-k",
        type=int,
        metavar="N",
        help="heads each head strategy (top-heads, random-heads, bottom-heads) trains (default: k x the "
        "heads of a layer, as many heads as k layers hold)",
    )
    compare.set_defaults(run=_run_compare)


def _finetune_config(args: argparse.Namespace, layers: str | None, heads: str | None = None) -> FinetuneConfig:
    data = data_config(args)
    targets = tuple(name.strip() for name in args.targets.split(",")) if args.targets else ()
    return FinetuneConfig(
        layers=None if layers is None else parse_layer_choice(layers),
        heads=None if heads is None else parse_head_choice(heads),
        k=args.k,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        targets=targets,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        warmup=args.warmup,
        schedule=args.schedule,
        seed=args.seed,
        data=data,
    )


def tuning_inputs(
    args: argparse.Namespace, layer_ranking: bool = True, head_ranking: bool = False
) -> tuple[Ranking | None, HeadRanking | None, LoadedModel]:
    """Check the dataset and the ranking file (before the slow model load), then load the model.
    The file's layer ranking is read if `layer_ranking`, its head ranking if `head_ranking`."""
    for folder in filter(None, (args.dataset, args.eval_dataset)):
        if count_records(folder) == 0:
            raise InputError(f"dataset {folder!r} is empty: its data.jsonl has no records")
        check_task(args.task, folder)
    ranking = read_ranking(args.ranking) if args.ranking and layer_ranking else None
    heads = read_head_ranking(args.ranking) if args.ranking and head_ranking else None
    if args.ranking_limit is not None and args.ranking_limit < 1:
        raise InputError(f"--ranking-limit must be at least 1, got {args.ranking_limit}")
    if args.threads is not None:
        cpus = os.cpu_count() or 1
        if not 1 <= args.threads <= cpus:  # far more threads than CPUs only exhausts memory
            raise InputError(f"threads must be between 1 and this machine's {cpus} CPUs, got {args.threads}")
        torch.set_num_threads(args.threads)
    return ranking, heads, common.load(args)


def _ranking_for(
    args: argparse.Namespace, loaded: LoadedModel, ranking: Ranking | HeadRanking | None, config: FinetuneConfig
) -> Ranking | HeadRanking | None:
    if ranking is None and needs_run_ranking(config):
        what = "head" if config.heads is not None else "layer"
        print(f"no --ranking: scoring {args.dataset} for the {what} ranking", file=sys.stderr)
        pick = dataset_head_ranking if config.heads is not None else dataset_ranking
        return pick(loaded, args.dataset, args.ranking_limit)
    return ranking


def _run_finetune(args: argparse.Namespace) -> None:
    config = _finetune_config(args, args.layers, args.heads)
    if args.before:
        check_before_after_folder(args.out, "--out")
    else:
        check_run_folder(args.out, "--out")
    layer_ranking, head_ranking, loaded = tuning_inputs(args, config.heads is None, config.heads is not None)
    adaptable = loaded.adapter.scored_layers(loaded.model)
    if config.heads is None:  # the choice is checked before any ranking is scored
        check_layer_choice(config.layer_choice, adaptable, config.k)
        ranking: Ranking | HeadRanking | None = layer_ranking
    else:
        check_head_choice(config.heads, adaptable, head_counts(loaded)[0], config.k)
        check_targets(attention_targets(loaded, config.targets))
        ranking = head_ranking
    ranking = _ranking_for(args, loaded, ranking, config)
    adapter = Path(args.out) / ADAPTER_FOLDER if args.before else Path(args.out)
    finished = (adapter / RUN_FILE).is_file()
    if args.before:
        result = run_before_after(loaded, args.dataset, args.out, config, ranking, eval_dataset=args.eval_dataset)
        record = result.after
    else:
        record = run_finetune(loaded, args.dataset, args.out, config, ranking, args.eval_dataset)
    if not is_main_process():  # another process of `accelerate launch`: the main one reports
        return
    if finished:
        print(f"{adapter} already holds this finished run: not trained again", file=sys.stderr)
    if args.before:
        print(
            f"before tuning: held-out {_metrics_line(result.before)}; wrote {Path(args.out) / PRETRAINED_FOLDER}",
            file=sys.stderr,
        )
    chosen = f"layers {record.layers}"
    if record.heads is not None:
        kv_heads = record.kv_heads or {}  # a head-level run records both
        kv = "; ".join(f"{layer}: {','.join(map(str, heads))}" for layer, heads in kv_heads.items())
        chosen = (
            f"heads {format_heads([(layer, head) for layer, head in record.heads])} (KV heads trained by layer: {kv})"
        )
    print(
        f"{chosen}: {record.trainable_parameters:,} trainable parameters "
        f"({record.trainable_share:.4%}); held-out {_metrics_line(record)}; wrote {adapter}",
        file=sys.stderr,
    )


def _metrics_line(record: RunRecord) -> str:
    def shown(name: str, value: float) -> str:
        interval = record.metric_intervals.get(name)
        return f"{name} {value:.3f}" + (f" [95% {interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")

    return ", ".join(shown(name, value) for name, value in record.metrics.items()) or "not evaluated"


def _run_compare(args: argparse.Namespace) -> None:
    # names as given: CompareConfig refuses any that is not a CompareStrategy
    strategies: tuple[CompareStrategy, ...] = tuple(name.strip() for name in args.strategies.split(","))
    config = CompareConfig(
        finetune=_finetune_config(args, "top"),
        seeds=args.seeds,
        strategies=strategies,
        heads_k=args.heads_k,
    )
    check_compare_folder(args.out, "--out")
    ranking, head_ranking, loaded = tuning_inputs(args, config.uses_layers(), config.needs_head_ranking())

    def announce(index: int, total: int, name: str, reused: bool) -> None:
        print(f"run {index}/{total} {name}: " + ("finished earlier, reused" if reused else "running"), file=sys.stderr)

    main_process = is_main_process()  # under `accelerate launch`, the main process reports
    comparison = run_compare(
        loaded,
        args.dataset,
        args.out,
        config,
        ranking,
        args.eval_dataset,
        args.ranking_limit,
        announce if main_process else None,
        head_ranking=head_ranking,
    )
    if main_process:
        print(f"{len(comparison.reused)} run(s) reused; wrote {Path(args.out) / 'report.md'}", file=sys.stderr)
