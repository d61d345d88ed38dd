"""`score` (one image or a dataset) and `dataset` (synthetic scenes and questions, COCO)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import get_args

from ..base.errors import InputError, check_choice
from ..base.outputs import check_output_file, check_output_folder
from ..data.coco import convert_coco
from ..data.dataset_analysis import DatasetConfig
from ..data.dataset_scoring import score_dataset
from ..data.datasets import count_records, write_synthetic
from ..data.synth import NEW_KINDS, QUESTION_KINDS, Order, QuestionKind, check_scene_options
from ..data.synth_vqa import write_synthetic_vqa
from ..method.analysis import analyze_image
from ..method.image_scoring import AnalysisConfig, View
from ..method.masks import check_mask
from ..method.scoring import Binarization, LayerScore, ScoringConfig
from ..model.images import load_image, load_mask
from ..model.inputs import DEFAULT_PROMPT, Queries
from . import common
from .common import Parser, add_model_options, check_output_files


def add_score(subcommands: argparse._SubParsersAction) -> None:
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
    add_model_options(score)
    score.set_defaults(run=_run_score)


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
    check_output_files(("--out", args.out), ("--maps", args.maps))
    image = load_image(args.image)
    mask = check_mask(load_mask(args.mask), image)  # before the (slow) model load
    if args.text is not None and not args.text.strip():
        raise InputError("the description text is empty: give a text to score, or --generate")
    loaded = common.load(args)
    analysis = analyze_image(loaded, image, mask, None if args.generate else args.text, config)
    if args.maps is not None:
        analysis.save_maps(args.maps)
    if args.out is not None:
        analysis.save_json(args.out)
    else:
        json.dump(analysis.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")


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
    check_output_files(("--out", args.out), ("--images-csv", args.images_csv))
    out = Path(args.out) if args.out is not None else None
    cache = args.cache if args.cache is not None else (out.with_suffix(".cache") if out else None)
    csv_path = args.images_csv if args.images_csv is not None else (out.with_suffix(".images.csv") if out else None)
    if cache is not None:
        check_output_folder(cache, "--cache" if args.cache is not None else "the cache folder (--out with .cache)")
    if csv_path is not None and args.images_csv is None:
        check_output_file(csv_path, "the per-image CSV (--out with .images.csv)")
    count_records(args.dataset)  # a missing dataset fails before the (slow) model load
    loaded = common.load(args)
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


def add_dataset(subcommands: argparse._SubParsersAction) -> None:
    dataset = subcommands.add_parser(
        "dataset", help="build datasets in the dataset format (data.jsonl + images + masks)"
    )
    kinds = dataset.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=Parser)
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
