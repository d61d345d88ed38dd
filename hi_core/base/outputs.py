"""Writing results: every file goes to a temporary name beside its target and is renamed into place,
so an interrupted run never leaves a half-written JSON or .npz.

`check_output_file` / `check_output_folder` say up front (before any slow work) whether a result
can be written where the user asked: a missing parent folder is created when the result is written,
but a target that is the wrong kind (a folder where a file goes, a file where a folder goes) or a
parent that is a file is refused with one message.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


def _check_parents(path: Path, what: str) -> None:
    """Refuse a path that cannot be created because one of its parents is not a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{what} {str(path)!r} cannot be written: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{what} {str(path)!r} cannot be written: folder {str(parent)!r} is not writable")
            return


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """`path` as a Path if a file can be written there (it may exist: it is then replaced); else InputError.
    `what` names the path in the message (e.g. "--out")."""
    if not str(path).strip():
        raise InputError(f"{what} is empty: give a file path")
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a folder: give a file path")
    if path.exists() and not path.is_file():
        raise InputError(f"{what} {str(path)!r} is not a regular file")
    _check_parents(path, what)
    return path


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a Path if a folder can be made (or exists) there; else InputError."""
    if not str(path).strip():
        raise InputError(f"{what} is empty: give a folder path")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a file, not a folder: give a folder path")
    if not path.exists():
        _check_parents(path, what)
    return path


def _process_umask() -> int:
    """This process's umask, read without changing it where Linux reports it (/proc/self/status), else by setting and
    restoring it once, here at import: while serving nothing process-wide may change (threads write at the same
    time)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` when the block succeeds. Whatever ends
    the block early (an error, Ctrl-C) removes the temporary file: `path` is whole, or as it was before."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(handle, 0o666 & ~UMASK)  # mkstemp makes 0600 files; results are ordinary files
        finally:
            os.close(handle)
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def json_number(value: float) -> float | None:
    """A score for JSON: the float, or None (`null`) where it is NaN (a head or layer not scored),
    since JSON has no NaN."""
    value = float(value)
    return value if np.isfinite(value) else None


def csv_number(value: float) -> str:
    """A score for CSV, 6 decimals; empty where it is NaN (not scored), which CSV readers read as missing."""
    return f"{value:.6f}" if np.isfinite(value) else ""


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, allow_pickle=False, **arrays)
