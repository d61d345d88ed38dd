"""The files the explorer writes, all below one folder, bounded in age and in total size.

`run-*` folders hold one dataset or fine-tune run (its unpacked upload, downloads, adapter) and
belong to the browser session that made it (removed with it, or when it makes its next run);
`session-*` folders hold one session's analysis downloads. A new folder first removes runs older
than `ttl_s`, then, while all runs together exceed `max_mb`, the oldest finished runs. Runs in
progress count towards the total but are never removed. A session whose finished run was removed is told to run
it again.

An upload is unpacked only into room reserved first (`reserve`, with the size its zip declares): the
oldest finished runs make way, and what runs in progress hold or have reserved is never counted as
free, so the files under `root` stay within `max_mb` while they are written, not only when a run
starts (three zip bombs uploaded one after another once took 1,985 MB against a 1,024 MB cap).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hi_core.base.errors import InputError

MIB = 1 << 20


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files below `folder` (links not followed); a folder or file removed meanwhile (another
    session's run cleaned up) is passed over."""
    total = 0
    for parent, _, names in os.walk(folder):  # os.walk skips folders it can no longer list
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(os.path.join(parent, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


class RunStorage:
    """Creates the app's folders under `root`, keeping finished runs within `ttl_s` and `max_mb`."""

    def __init__(self, root: Path, max_mb: float | None = None, ttl_s: float = 6 * 3600) -> None:
        self.root = root
        self.max_mb = max_mb
        self.ttl_s = ttl_s
        self._active: set[Path] = set()  # runs whose handler is still running
        self._reserved: dict[Path, int] = {}  # bytes a run in progress may grow to (its unpacked upload)
        self._lock = threading.Lock()

    def new_session_folder(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.root))

    @contextlib.contextmanager
    def run(self) -> Iterator[Path]:
        """A fresh run folder, protected from clean-up while the block runs; older runs are cleaned first."""
        with self._lock:
            self._clean()
            folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
            self._active.add(folder)
        try:
            yield folder
        finally:
            with self._lock:
                self._active.discard(folder)
                self._reserved.pop(folder, None)

    def reserve(self, folder: Path, size: int) -> None:
        """Room for `size` more bytes in `folder` (a run in progress), made by removing the oldest finished
        runs as needed; InputError when even then all runs would hold more than `max_mb`."""
        if self.max_mb is None:
            return
        cap = int(self.max_mb * MIB)
        with self._lock:
            held, finished = self._runs()
            total = self._evict(finished, held + sum(run_bytes for _, run_bytes, _ in finished), cap - size)
            if total + size > cap:
                raise InputError(
                    f"the upload unpacks to {size / MIB:.1f} MiB, more than the {max(cap - total, 0) / MIB:.1f} MiB "
                    f"of this server's run storage ({self.max_mb:g} MiB) free now: try a smaller dataset, or later"
                )
            self._reserved[folder] = self._reserved.get(folder, folder_bytes(folder)) + size

    def _runs(self) -> tuple[int, list[tuple[float, int, Path]]]:
        """Bytes that runs in progress hold or have reserved, and (modified, bytes, folder) of each finished run."""
        finished, held = [], 0
        for folder in self.root.glob("run-*"):
            if folder in self._active:  # counts towards the total, but is never removed
                held += max(folder_bytes(folder), self._reserved.get(folder, 0))
                continue
            try:
                finished.append((folder.stat().st_mtime, folder_bytes(folder), folder))
            except FileNotFoundError:  # removed with its session meanwhile
                continue
        return held, finished

    @staticmethod
    def _evict(finished: list[tuple[float, int, Path]], total: int, limit: int) -> int:
        """Removes the oldest finished runs while `total` bytes exceed `limit`; the total left."""
        for _, run_bytes, folder in sorted(finished, key=lambda run: run[0]):
            if total <= limit:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= run_bytes
        return total

    def _clean(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        held, runs = self._runs()
        finished = []
        for modified, run_bytes, folder in runs:
            if time.time() - modified > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                finished.append((modified, run_bytes, folder))
        if self.max_mb is not None:
            self._evict(finished, held + sum(run_bytes for _, run_bytes, _ in finished), int(self.max_mb * MIB))
