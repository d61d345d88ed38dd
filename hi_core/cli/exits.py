"""How a command of the command line ends: exit 0, or one line on stderr and an exit code, never a traceback
for something the user did.

- Bad input (`InputError`): `error: ...`, exit 2.
- An argument that is not UTF-8 text: Python hands the undecodable bytes of the command line over as lone
  surrogates (PEP 383's surrogateescape), which the tokenizer, JSON and file writes would reject deep inside
  a run, after the model loaded. `check_text_arguments` refuses them first, naming the flag: exit 2.
- Ctrl-C (SIGINT) while a command runs (load, scoring, writing): `interrupted`, exit 130 (128 + SIGINT, as
  shells report it). Results are written under a temporary name and renamed into place (`outputs`), and
  the temporary file is removed on the way out, so nothing half-written stays behind; a second Ctrl-C is
  ignored while that cleanup runs. A dataset's per-image cache keeps the images finished, for a resume.
  `import hi_core` loads nothing heavy (its names are imported on first use), so a Ctrl-C while the command
  line's modules import torch and transformers (the first seconds) is caught by `__main__` the same way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..base.errors import InputError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def check_text_arguments(args: argparse.Namespace) -> None:
    """Refuse any string argument (text, prompt, path, list) that is not UTF-8, in one message naming its flag."""
    for dest, value in vars(args).items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                character = ord(text[error.start])
                byte = f"byte 0x{character - 0xDC00:02x}" if 0xDC80 <= character <= 0xDCFF else f"U+{character:04X}"
                raise InputError(
                    f"--{dest.replace('_', '-')} is not UTF-8 text ({byte} at position {error.start}): give it in UTF-8"
                ) from None


def _interrupt_once(signum: int, frame: object) -> None:
    """The first Ctrl-C raises KeyboardInterrupt; later ones are ignored, so they cannot break its cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextmanager
def _one_interrupt() -> Iterator[None]:
    """`_interrupt_once` as the SIGINT handler while a command runs (main thread only), restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _interrupt_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def report_interrupt() -> int:
    print("interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def exit_code(command: Callable[[], None]) -> int:
    """Run `command`; its exit code, with the one stderr line for bad input and for Ctrl-C."""
    try:
        with _one_interrupt():
            command()
    except InputError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return report_interrupt()
    return 0
