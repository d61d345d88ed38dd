"""Command line: `python -m hi_core SUBCOMMAND ...`, one subcommand per library entry point. Exit codes: 0 on
success, 2 on bad input, 130 on Ctrl-C, with one line on stderr and no traceback (`exits`).

Inputs and output paths are checked before anything slow starts (model load, scoring, training):
an output file may exist (it is replaced, atomically) and its missing parent folders are created,
but a folder where a file goes, a file where a folder goes, or a path under a file is refused. An
output folder of `finetune`, `compare` or `dataset` must be new or empty, or (finetune, compare)
one they wrote before: nothing else of the user's is ever renamed, replaced or deleted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from ..base.distributed import is_distributed, is_main_process, process_state
from ..base.errors import InputError, check_choice
from ..base.outputs import check_output_file, check_output_folder
from ..causal.ablation import AblationConfig, AblationMode, check_ablation, run_ablation
from ..causal.ablation_report import METRICS as ABLATION_METRICS
from ..causal.ablation_report import check_ablation_folder, write_ablation_report
from ..causal.validation import ValidationConfig
from ..causal.validation import validate as validate_heads
from ..causal.validation_report import write_validation_report
from ..data.coco import convert_coco
from ..data.dataset_scoring import DatasetConfig, score_dataset
from ..data.datasets import count_records, write_synthetic
from ..data.synth import NEW_KINDS, QUESTION_KINDS, Order, QuestionKind, check_scene_options
from ..data.synth_vqa import write_synthetic_vqa
from ..method.analysis import analyze_image
from ..method.head_selection import HeadRanking, check_head_choice, format_heads, read_head_ranking
from ..method.image_scoring import AnalysisConfig, View
from ..method.layer_selection import Ranking, check_layer_choice, read_ranking
from ..method.masks import check_mask
from ..method.scoring import Binarization, LayerScore, ScoringConfig
from ..model.images import load_image, load_mask
from ..model.inputs import DEFAULT_PROMPT, Queries
from ..model.loading import Device, DType, LoadConfig, LoadedModel, ModelCache, resolve_device
from ..tuning.compare import CompareConfig, CompareStrategy, check_compare_folder, run_compare
from ..tuning.finetune import DataConfig, FinetuneConfig, Schedule, Task, attention_targets, check_task
from ..tuning.head_lora import check_targets, head_counts
from ..tuning.runs import (
    ADAPTER_FOLDER,
    PRETRAINED_FOLDER,
    RUN_FILE,
    RunRecord,
    check_before_after_folder,
    check_run_folder,
    dataset_head_ranking,
    dataset_ranking,
    needs_run_ranking,
    run_before_after,
    run_finetune,
)
from .exits import check_text_arguments, exit_code


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2), like every other input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_score(subcommands: argparse._SubParsersAction) -> None:
    score = subcommands.add_parser(
        "score",
        help="HI of every attention head on one image, or over a dataset",
        description="Score every language-model attention head by Head Impact (IoU of its binarized "
        "image map with the key-object mask) on one image and its description (--image, --mask, "
        "--text/--generate), or over a dataset folder (--dataset: mean HI with 95%% bootstrap intervals).",
    )
    score.add_argument("--model", required=True, help="`demo`, a Hub id (owner/name) or a local model folder")
    score.add_argument("--image", help="image file")
    score.add_argument("--mask", help="key-object mask: an image of the same size, nonzero = object")
    text = score.add_mutually_exclusive_group()
    text.add_argument("--text", help="the description to score (teacher-forced)")
    text.add_argument("--generate", action="store_true", help="let the model describe the image, then score that")
    data = score.add_argument_group("dataset scoring")
    data.add_argument("--dataset", help="a dataset folder (data.jsonl + images + masks) to score instead of one image")
    data.add_argument("--limit", type=int, help="score only the first N records")
    data.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    data.add_argument("--cache", help="folder of per-image results, for resuming (default: OUT with .cache for .json)")
    data.add_argument(
        "--images-csv", help="per-image results, one row per image and head (default: OUT with .images.csv)"
    )
    data.add_argument(
        "--all-tokens",
        action="store_true",
        help="average over every response token instead of each record's key phrase",
    )
    data.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples for the intervals (default: %(default)s)"
    )
    data.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    score.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="the prompt; with --dataset, of the records without their own `prompt` (default: %(default)r)",
    )
    score.add_argument("--key-phrase", help="score only the response tokens overlapping this phrase")
    score.add_argument(
        "--queries",
        choices=get_args(Queries),
        default="producing",
        help="query rows: the row producing each token, or the token's own row (default: %(default)s)",
    )
    score.add_argument(
        "--view",
        choices=get_args(View),
        default="combined",
        help="of an image the model writes as tiles plus a global view: every token on the stitched tiles "
        "(combined), the global or base view alone (global), or the tiles alone (default: %(default)s)",
    )
    score.add_argument("--binarize", choices=get_args(Binarization), default="area", help="default: %(default)s")
    score.add_argument("--quantile", type=float, default=0.9, help="q for --binarize quantile (default: %(default)s)")
    score.add_argument("--layer-score", choices=get_args(LayerScore), default="max", help="default: %(default)s")
    score.add_argument(
        "--max-new-tokens", type=int, default=64, help="length limit with --generate (default: %(default)s)"
    )
    score.add_argument("--out", help="write the JSON here (default: stdout)")
    score.add_argument("--maps", help="write the head maps to this .npz (maps: layers x heads x gh x gw)")
    _add_model_options(score)
    score.set_defaults(run=_run_score)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the model loads (every command that loads one)."""
    parser.add_argument("--device", choices=get_args(Device), default="auto", help="default: %(default)s")
    parser.add_argument("--dtype", choices=get_args(DType), default="auto", help="default: %(default)s")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code from the Hub (off by default)",
    )
    parser.add_argument(
        "--max-view-pixels",
        type=int,
        help="a view budget: the processor makes at most about this many pixels of each image (fewer "
        "tiles or image tokens, a faster vision tower; Idefics3/SmolVLM and the Qwen-VL families; "
        "recorded in the JSON). Default: the model's own settings",
    )


def _load(args: argparse.Namespace) -> LoadedModel:
    """--model, sized and held to the memory budget as in the app (`ModelCache`); bound to its device under
    accelerate."""
    if is_distributed():
        process_state(cpu=resolve_device(args.device).type == "cpu")
    loaded = ModelCache(1).get(
        LoadConfig(args.model, args.device, args.dtype, args.trust_remote_code, max_view_pixels=args.max_view_pixels)
    )
    if loaded.note:
        print(f"{args.model}: loaded {loaded.note}", file=sys.stderr)
    return loaded


def _scoring(args: argparse.Namespace) -> ScoringConfig:
    """The scoring options of `score` (one image or a dataset)."""
    return ScoringConfig(binarize=args.binarize, quantile=args.quantile, layer_score=args.layer_score)


def _run_score(args: argparse.Namespace) -> None:
    if args.dataset is not None:
        _run_score_dataset(args)
        return
    missing = [flag for flag, value in (("--image", args.image), ("--mask", args.mask)) if value is None]
    if args.text is None and not args.generate:
        missing.append("--text or --generate")
    if missing:
        raise InputError(f"score needs {', '.join(missing)} (or --dataset DIR)")
    config = AnalysisConfig(
        prompt=args.prompt,
        key_phrase=args.key_phrase,
        queries=args.queries,
        scoring=_scoring(args),
        max_new_tokens=args.max_new_tokens,
        view=args.view,
    )
    _check_output_files(("--out", args.out), ("--maps", args.maps))
    image = load_image(args.image)
    mask = check_mask(load_mask(args.mask), image)  # before the (slow) model load
    if args.text is not None and not args.text.strip():
        raise InputError("the description text is empty: give a text to score, or --generate")
    loaded = _load(args)
    analysis = analyze_image(loaded, image, mask, None if args.generate else args.text, config)
    if args.maps is not None:
        analysis.save_maps(args.maps)
    if args.out is not None:
        analysis.save_json(args.out)
    else:
        json.dump(analysis.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")


def _check_output_files(*flags: tuple[str, str | None]) -> None:
    """Each given (flag, path) can be written as a file, and no two flags name the same file."""
    seen: dict[Path, str] = {}
    for flag, path in flags:
        if path is None:
            continue
        resolved = check_output_file(path, flag).resolve()
        if resolved in seen:
            raise InputError(f"{seen[resolved]} and {flag} name the same file {path!r}: give two different files")
        seen[resolved] = flag


def _run_score_dataset(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, value in (
            ("--image", args.image),
            ("--mask", args.mask),
            ("--text", args.text),
            ("--generate", args.generate),
            ("--maps", args.maps),
        )
        if value
    ]
    if given:
        raise InputError(f"--dataset scores the records' own images and texts; drop {', '.join(given)}")
    config = DatasetConfig(
        analysis=AnalysisConfig(
            prompt=args.prompt,
            key_phrase=args.key_phrase,
            queries=args.queries,
            scoring=_scoring(args),
            view=args.view,
        ),
        use_key_phrases=not args.all_tokens and args.key_phrase is None,
        batch_size=args.batch_size,
        limit=args.limit,
        resamples=args.resamples,
        seed=args.seed,
    )
    _check_output_files(("--out", args.out), ("--images-csv", args.images_csv))
    out = Path(args.out) if args.out is not None else None
    cache = args.cache if args.cache is not None else (out.with_suffix(".cache") if out else None)
    csv_path = args.images_csv if args.images_csv is not None else (out.with_suffix(".images.csv") if out else None)
    if cache is not None:
        check_output_folder(cache, "--cache" if args.cache is not None else "the cache folder (--out with .cache)")
    if csv_path is not None and args.images_csv is None:
        check_output_file(csv_path, "the per-image CSV (--out with .images.csv)")
    count_records(args.dataset)  # a missing dataset fails before the (slow) model load
    loaded = _load(args)
    result = score_dataset(loaded, args.dataset, config, cache=cache)
    if result is None:  # a non-main process of a data-parallel run: the main one writes the result
        return
    if csv_path:
        result.save_csv(csv_path)
    if out:
        result.save_json(out)
    else:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    if args.cache is None and cache is not None:  # the default cache only served a resume: the run is done
        shutil.rmtree(cache, ignore_errors=True)
    print(f"scored {len(result.images)} image(s), skipped {len(result.skipped)}", file=sys.stderr)
    for line, rid, reason in result.skipped[:10]:
        print(f"  skipped line {line} ({rid or 'no id'}): {reason}", file=sys.stderr)


def _add_dataset(subcommands: argparse._SubParsersAction) -> None:
    dataset = subcommands.add_parser(
        "dataset", help="build datasets in the dataset format (data.jsonl + images + masks)"
    )
    kinds = dataset.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    synth = kinds.add_parser("synth", help="generate synthetic scenes with exact masks, and descriptions or questions")
    synth.add_argument("--out", required=True, help="output folder (new or empty)")
    synth.add_argument("--n", type=int, default=100, help="number of scenes (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument("--size", type=int, default=96, help="image side in pixels (default: %(default)s)")
    synth.add_argument(
        "--task",
        choices=("caption", "vqa"),
        default="caption",
        help="caption: `text` describes every object, the mask is the key object's; vqa: `prompt` "
        "is a closed-form question, `text` its answer, the mask the asked object's (default: %(default)s)",
    )
    synth.add_argument(
        "--kinds",
        metavar="K1,K2",
        help=f"vqa only: comma-separated question kinds, taking turns (default: the demo model's "
        f"{','.join(QUESTION_KINDS)}; {','.join(NEW_KINDS)}: kinds it never saw, a task to tune it on)",
    )
    synth.add_argument(
        "--order",
        choices=get_args(Order),
        help="captions only: list the objects as drawn (the demo model's captions) or in reading "
        "order, top to bottom then left to right (default: drawing)",
    )
    synth.set_defaults(run=_run_synth)
    coco = kinds.add_parser(
        "from-coco",
        help="convert COCO annotations (instances + captions) to the dataset format",
        description="Convert COCO-format annotations to the dataset format. An image's key "
        "object is the largest non-crowd object of the categories named by its first caption "
        "that names one (synonyms and plurals count); images without one are skipped.",
    )
    coco.add_argument(
        "--instances", required=True, metavar="F", help="COCO instances JSON (e.g. instances_val2017.json)"
    )
    coco.add_argument("--captions", required=True, metavar="F", help="COCO captions JSON (e.g. captions_val2017.json)")
    coco.add_argument(
        "--images", required=True, metavar="DIR", help="folder holding the images the instances file names"
    )
    coco.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    coco.add_argument("--limit", type=int, metavar="N", help="stop after N records (default: all)")
    coco.set_defaults(run=_run_from_coco)


def _new_dataset_folder(path: str) -> None:
    """A dataset is written only into a new or empty folder, never over a user's files."""
    folder = check_output_folder(path, "--out")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"--out {path!r} exists and is not empty: choose a new or empty folder for the dataset")


def _run_synth(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed must be a whole number >= 0, got {args.seed}")
    check_scene_options(args.size)
    if args.task == "vqa" and args.order is not None:
        raise InputError("--order applies to --task caption only (a question's answer has no object order)")
    if args.task != "vqa" and args.kinds is not None:
        raise InputError("--kinds applies to --task vqa only")
    kinds = QUESTION_KINDS if args.kinds is None else tuple(kind.strip() for kind in args.kinds.split(","))
    for kind in kinds:
        check_choice("--kinds", kind, QuestionKind)
    _new_dataset_folder(args.out)
    if args.task == "vqa":
        folder = write_synthetic_vqa(args.out, n=args.n, seed=args.seed, size=args.size, kinds=kinds)
    else:
        folder = write_synthetic(args.out, n=args.n, seed=args.seed, size=args.size, order=args.order or "drawing")
    print(f"wrote {args.n} scenes ({args.task}) to {folder}", file=sys.stderr)


def _run_from_coco(args: argparse.Namespace) -> None:
    _new_dataset_folder(args.out)
    summary = convert_coco(args.instances, args.captions, args.images, args.out, limit=args.limit)
    print(summary.line(), file=sys.stderr)


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
    _add_evaluation_options(
        parser,
        defaults.data,
        task="how the held-out records are scored: caption metrics, or for vqa (records whose prompt is a question "
        "and text its answer) answer accuracy, normalized exact match with a 95%% interval (default: %(default)s)",
        fraction="share of records held out for the caption metrics, by a hash of the id (default: %(default)s)",
        eval_dataset="a separate held-out dataset (its ids are left out of training)",
    )


def _add_evaluation_options(
    parser: argparse.ArgumentParser, defaults: DataConfig, task: str, fraction: str, eval_dataset: str
) -> None:
    """The held-out evaluation's options (finetune, compare, ablate: `_data_config` reads them back), the
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
    _add_model_options(parser)


def _data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        prompt=args.prompt,
        task=args.task,
        eval_fraction=args.eval_fraction,
        eval_limit=args.eval_limit,
        max_new_tokens=args.max_new_tokens,
        meteor=not args.no_meteor,
    )


def _add_finetune(subcommands: argparse._SubParsersAction) -> None:
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


def _add_compare(subcommands: argparse._SubParsersAction) -> None:
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
    data = _data_config(args)
    targets = tuple(name.strip() for name in args.targets.split(",")) if args.targets else ()
    return FinetuneConfig(
        layers=layers,
        heads=heads,
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


def _tuning_inputs(
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
    return ranking, heads, _load(args)


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
    layer_ranking, head_ranking, loaded = _tuning_inputs(args, config.heads is None, config.heads is not None)
    adaptable = loaded.adapter.scored_layers(loaded.model)
    if config.heads is None:  # the choice is checked before any ranking is scored
        check_layer_choice(config.layers, adaptable, config.k)  # type: ignore[arg-type]
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
        kv = "; ".join(f"{layer}: {','.join(map(str, heads))}" for layer, heads in record.kv_heads.items())  # type: ignore[union-attr]
        chosen = f"heads {format_heads([tuple(head) for head in record.heads])} (KV heads trained by layer: {kv})"
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
    strategies = tuple(name.strip() for name in args.strategies.split(","))
    config = CompareConfig(
        finetune=_finetune_config(args, "top"),
        seeds=args.seeds,
        strategies=strategies,  # type: ignore[arg-type]
        heads_k=args.heads_k,
    )
    check_compare_folder(args.out, "--out")
    ranking, head_ranking, loaded = _tuning_inputs(args, config.uses_layers(), config.needs_head_ranking())

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


def _add_ablate(subcommands: argparse._SubParsersAction) -> None:
    defaults = AblationConfig()
    ablate = subcommands.add_parser(
        "ablate",
        help="remove the top-HI heads (against random and bottom ones) and caption the held-out records",
        description="Caption the held-out records with the model as it is, then with each strategy's k heads removed "
        "(their slice of the attention output before o_proj set to zero, or to its mean): top-k and bottom-k by HI, "
        "k random heads per seed, or a list. Writes report.md, results.json, captions.jsonl and ablation.png to --out.",
    )
    ablate.add_argument("--model", required=True, help="`demo`, a Hub id (owner/name) or a local model folder")
    ablate.add_argument(
        "--dataset", required=True, metavar="DIR", help="a dataset folder (data.jsonl + images + masks)"
    )
    ablate.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (new, empty, or an earlier ablation's)"
    )
    ablate.add_argument(
        "--heads",
        default="top,random,bottom",
        metavar="top,random,bottom|L:H,..",
        help="comma-separated strategies and/or layer:head pairs (the pairs form one condition) (default: %(default)s)",
    )
    ablate.add_argument(
        "-k", type=int, default=defaults.k, help="heads removed by top/bottom/random (default: %(default)s)"
    )
    ablate.add_argument(
        "--ranking",
        metavar="SCORE.json",
        help="the head ranking: a JSON written by `score` (default: score the dataset now)",
    )
    ablate.add_argument("--ranking-limit", type=int, metavar="N", help="score only the first N records for the ranking")
    ablate.add_argument("--seeds", type=int, default=defaults.seeds, help="runs of random (default: %(default)s)")
    ablate.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="the first random seed, and the bootstrap's (default: %(default)s)",
    )
    ablate.add_argument(
        "--mode",
        choices=get_args(AblationMode),
        default=defaults.mode,
        help="a removed head's output becomes zero, or its mean over training records (default: %(default)s)",
    )
    ablate.add_argument(
        "--mean-records",
        type=int,
        default=defaults.mean_records,
        metavar="N",
        help="training records averaged for --mode mean (default: %(default)s)",
    )
    ablate.add_argument(
        "--resamples",
        type=int,
        default=defaults.resamples,
        help="bootstrap draws for the intervals (default: %(default)s)",
    )
    _add_evaluation_options(
        ablate,
        defaults.data,
        task="caption: caption metrics and the share of key objects named; vqa: answer accuracy (default: %(default)s)",
        fraction="share of records held out, by a hash of the id: the records `finetune` holds out "
        "(default: %(default)s)",
        eval_dataset="a separate held-out dataset to caption instead",
    )
    ablate.set_defaults(run=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> None:
    data = _data_config(args)
    config = AblationConfig(
        heads=args.heads,
        k=args.k,
        seeds=args.seeds,
        seed=args.seed,
        mode=args.mode,
        mean_records=args.mean_records,
        resamples=args.resamples,
        data=data,
    )
    check_ablation_folder(args.out, "--out")
    _, ranking, loaded = _tuning_inputs(
        args, layer_ranking=False, head_ranking=True
    )  # the datasets, threads; then the load
    check_ablation(loaded, config, args.dataset, args.eval_dataset)  # before the ranking is scored
    if ranking is None and config.needs_ranking():
        print(f"no --ranking: scoring {args.dataset} for the head ranking", file=sys.stderr)

    def announce(index: int, total: int, name: str) -> None:
        print(f"condition {index}/{total}: {name}", file=sys.stderr)

    ablation = run_ablation(loaded, args.dataset, config, ranking, args.eval_dataset, args.ranking_limit, announce)
    results = write_ablation_report(ablation, args.out)
    for name, entry in results["conditions"].items():
        shown = ", ".join(f"{ABLATION_METRICS[m]} {v['mean']:.3f}" for m, v in entry["metrics"].items())
        print(f"{name}: {shown}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'report.md'}", file=sys.stderr)


def _add_validate(subcommands: argparse._SubParsersAction) -> None:
    defaults = ValidationConfig()
    validate = subcommands.add_parser(
        "validate",
        help="does HI find the heads that matter? remove each head and measure the loss, against other rankings",
        description="Remove every head (or a seeded sample) in turn and measure, teacher-forced on the held-out "
        "records, the loss of the scored tokens and the first-token accuracy; correlate with HI and with baseline "
        "rankings (attention mass, localization heads, gradient importance), with bootstrap intervals, a within-layer "
        "permutation test and the layer-partial correlation; remove heads cumulatively in each ranking's order "
        "against random and layer-matched orders. Writes report.md, validation.json, effect_vs_hi.png and "
        "dose_response.png to --out.",
    )
    validate.add_argument("--model", required=True, help="`demo`, a Hub id (owner/name) or a local model folder")
    validate.add_argument(
        "--dataset", required=True, metavar="DIR", help="a dataset folder (data.jsonl + images + masks)"
    )
    validate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    validate.add_argument(
        "--ranking",
        metavar="SCORE.json",
        help="the HI to validate: a JSON written by `score` (default: HI on the ranking records, like the baselines)",
    )
    validate.add_argument("--modes", default="zero,mean", help="ablation modes, comma-separated (default: %(default)s)")
    validate.add_argument(
        "--sample-heads",
        type=int,
        metavar="N",
        help="remove a seeded sample of N heads one by one (default: every head; for big models)",
    )
    validate.add_argument(
        "--orders",
        type=int,
        default=defaults.orders,
        help="random orders of the dose-response, and as many layer-matched ones (default: %(default)s)",
    )
    validate.add_argument(
        "--max-k", type=int, metavar="K", help="heads removed at most (default: a quarter of the heads)"
    )
    validate.add_argument(
        "--ranking-records",
        type=int,
        default=defaults.ranking_records,
        metavar="N",
        help="training records the rankings are computed on (default: %(default)s)",
    )
    validate.add_argument(
        "--mean-records",
        type=int,
        default=defaults.mean_records,
        metavar="N",
        help="training records averaged for mean ablation (default: %(default)s)",
    )
    validate.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="records per forward pass (default: %(default)s)"
    )
    validate.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the samples, orders and bootstrap (default: %(default)s)",
    )
    validate.add_argument(
        "--cache-mb",
        type=int,
        default=defaults.cache_mb,
        metavar="MB",
        help="memory for the decoder layers' outputs reused between passes; 0 reuses only the image "
        "features (default: %(default)s)",
    )
    validate.add_argument("--resamples", type=int, default=2000, help="bootstrap draws (default: %(default)s)")
    validate.add_argument(
        "--permutations", type=int, default=10_000, help="within-layer permutations (default: %(default)s)"
    )
    _add_evaluation_options(
        validate,
        defaults.data,
        task="caption: the key phrase's tokens are scored (else the whole "
        "description); vqa: the answer's (default: %(default)s)",
        fraction="share of records held out, by a hash of the id (default: %(default)s)",
        eval_dataset="a separate held-out dataset",
    )
    validate.set_defaults(run=_run_validate, ranking_limit=None)


def _run_validate(args: argparse.Namespace) -> None:
    for name in ("resamples", "permutations"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(args, name)}")
    config = ValidationConfig(
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        heads=args.sample_heads,
        orders=args.orders,
        max_k=args.max_k,
        ranking_records=args.ranking_records,
        mean_records=args.mean_records,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_mb=args.cache_mb,
        data=_data_config(args),
    )
    check_output_folder(args.out, "--out")
    _, ranking, loaded = _tuning_inputs(args, layer_ranking=False, head_ranking=True)
    hi = None
    if ranking is not None:
        hi = np.full((ranking.num_layers, ranking.num_heads), np.nan)
        for head, score in zip(ranking.heads, ranking.scores):
            hi[head] = score
    shown = {"stage": None}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "estimate":
            print(f"about {done / 60:.1f} min more: {total} passes over the held-out records", file=sys.stderr)
        elif stage != shown["stage"]:
            shown["stage"] = stage
            print(f"{stage} ({total} steps)", file=sys.stderr)

    validation = validate_heads(loaded, args.dataset, config, hi, args.eval_dataset, progress)
    data = write_validation_report(validation, args.out, args.resamples, args.permutations)
    for mode, metrics in data["correlations"].items():
        entry = metrics["loss"]["hi"]
        print(
            f"{mode}: Spearman(HI, loss rise) {entry['spearman']}, within-layer p {entry['within_layers_p']}",
            file=sys.stderr,
        )
    print(f"wrote {Path(args.out) / 'report.md'} ({validation.seconds:.0f} s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m hi_core", description="HI Explorer: Head Impact of the attention heads of multimodal LMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_score(subcommands)
    _add_dataset(subcommands)
    _add_finetune(subcommands)
    _add_compare(subcommands)
    _add_ablate(subcommands)
    _add_validate(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return exit_code(lambda: _main(argv))  # 2 and one stderr line for bad input, 130 for Ctrl-C (`exits`)


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not (args.verbose or sys.stderr.isatty()):
        transformers_logging.disable_progress_bar()  # keep stderr to the one line that matters
    check_text_arguments(args)
    args.run(args)
