"""`ablate` (heads removed, what the model loses) and `validate` (does HI predict it?)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

import numpy as np

from ..base.errors import InputError
from ..base.outputs import check_output_folder
from ..causal.ablation import AblationConfig, check_ablation, run_ablation
from ..causal.ablation_report import METRICS as ABLATION_METRICS
from ..causal.ablation_report import check_ablation_folder, write_ablation_report
from ..causal.head_ablation import AblationMode
from ..causal.validation import ValidationConfig
from ..causal.validation import validate as validate_heads
from ..causal.validation_report import write_validation_report
from .tuning_commands import add_evaluation_options, data_config, tuning_inputs


def add_ablate(subcommands: argparse._SubParsersAction) -> None:
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
    add_evaluation_options(
        ablate,
        defaults.data,
        task="caption: caption metrics and the share of key objects named; vqa: answer accuracy (default: %(default)s)",
        fraction="share of records held out, by a hash of the id: the records `finetune` holds out "
        "(default: %(default)s)",
        eval_dataset="a separate held-out dataset to caption instead",
    )
    ablate.set_defaults(run=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> None:
    data = data_config(args)
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
    _, ranking, loaded = tuning_inputs(
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


def add_validate(subcommands: argparse._SubParsersAction) -> None:
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
    add_evaluation_options(
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
        data=data_config(args),
    )
    check_output_folder(args.out, "--out")
    _, ranking, loaded = tuning_inputs(args, layer_ranking=False, head_ranking=True)
    hi = None
    if ranking is not None:
        hi = np.full((ranking.num_layers, ranking.num_heads), np.nan)
        for head, score in zip(ranking.heads, ranking.scores):
            hi[head] = score
    shown: dict[str, str | None] = {"stage": None}

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
