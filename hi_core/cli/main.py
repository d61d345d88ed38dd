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
import logging
import sys
from collections.abc import Sequence

from transformers.utils import logging as transformers_logging

from .causal_commands import add_ablate, add_validate
from .common import Parser
from .exits import check_text_arguments, exit_code
from .scoring_commands import add_dataset, add_score
from .tuning_commands import add_compare, add_finetune


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m hi_core", description="HI Explorer: Head Impact of the attention heads of multimodal LMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    add_score(subcommands)
    add_dataset(subcommands)
    add_finetune(subcommands)
    add_compare(subcommands)
    add_ablate(subcommands)
    add_validate(subcommands)
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
