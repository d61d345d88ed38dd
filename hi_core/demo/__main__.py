"""`python -m hi_core.demo train --out DIR [--steps N] [--seed S] ...`: train the demo model."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .train import TrainConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hi_core.demo", description="Train the embedded demo model.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and save the demo model with its model card")
    train.add_argument("--out", required=True, type=Path, help="output folder (e.g. hi_core/assets/demo-model)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    for item in fields(TrainConfig):
        train.add_argument(f"--{item.name.replace('_', '-')}", type=type(item.default), default=item.default,
                           help=f"default: {item.default}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(**{item.name: getattr(args, item.name) for item in fields(TrainConfig)})
    report = run(args.out, config)
    logging.getLogger("hi_core.demo").info(
        "final loss %.4f, best head HI %.3f (untrained %.3f), chance %.3f", report["final_loss"],
        report["hi_trained"]["best_hi"], report["hi_untrained"]["best_hi"], report["hi_trained"]["chance"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
