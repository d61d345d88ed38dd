"""`python -m hi_core.demo train --out DIR [--steps N] [--seed S] ...`: train the demo model;
`python -m hi_core.demo evaluate --out DIR`: evaluate a trained one again and rewrite its card."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .evaluation import evaluate, run
from .train import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hi_core.demo", description="Train the embedded demo model.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and save the demo model with its model card")
    train.add_argument("--out", required=True, type=Path, help="output folder (e.g. hi_core/assets/demo-model)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    for item in fields(TrainConfig):
        train.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=type(item.default),
            default=item.default,
            help=f"default: {item.default}",
        )
    again = commands.add_parser(
        "evaluate", help="evaluate a trained demo model folder again; rewrite eval.json and its card"
    )
    again.add_argument("--out", required=True, type=Path, help="the trained model's folder")
    again.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "evaluate":
        report = evaluate(args.out)
    else:
        config = TrainConfig(**{item.name: getattr(args, item.name) for item in fields(TrainConfig)})
        command = "python -m hi_core.demo " + shlex.join(argv if argv is not None else sys.argv[1:])
        report = run(args.out, config, command=command, threads=args.threads)
    logging.getLogger("hi_core.demo").info(
        "best head HI: descriptions %.3f (untrained %.3f, chance %.3f), questions %.3f (untrained %.3f, chance %.3f); "
        "VQA accuracy %.3f",
        report["hi_trained"]["best_hi"],
        report["hi_untrained"]["best_hi"],
        report["hi_trained"]["chance"],
        report["hi_vqa_trained"]["best_hi"],
        report["hi_vqa_untrained"]["best_hi"],
        report["hi_vqa_trained"]["chance"],
        report["vqa"]["accuracy"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
