"""What every command shares: the parser class, the model options, loading the model they name (the commands call
`common.load`, so that a test replaces it in one place), checking output paths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, get_args

from ..base.distributed import is_distributed, process_state
from ..base.errors import InputError
from ..base.outputs import check_output_file
from ..model.loading import Device, DType, LoadConfig, LoadedModel, resolve_device
from ..model.model_cache import ModelCache


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2), like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_model_options(parser: argparse.ArgumentParser) -> None:
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


def load(args: argparse.Namespace) -> LoadedModel:
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


def check_output_files(*flags: tuple[str, str | None]) -> None:
    """Each given (flag, path) can be written as a file, and no two flags name the same file."""
    seen: dict[Path, str] = {}
    for flag, path in flags:
        if path is None:
            continue
        resolved = check_output_file(path, flag).resolve()
        if resolved in seen:
            raise InputError(f"{seen[resolved]} and {flag} name the same file {path!r}: give two different files")
        seen[resolved] = flag
