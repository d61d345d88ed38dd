"""The files the explorer writes, all below one folder, bounded in age and in total size.

`run-*` folders hold one dataset or fine-tune run (its unpacked upload, downloads, adapter) and
belong to the browser session that made it (removed with it, or when it makes its next run);
`session-*` folders hold one session's analysis downloads. A new folder first removes runs older
than `ttl_s`, then, while all runs together exceed `max_mb`, the oldest finished runs. Runs in
progress count towards the total but are never removed. A session whose finished run was removed is told to run it again.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files below `folder` (links not followed)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


class RunStorage:
    """Creates the app's folders under `root`, keeping finished runs within `ttl_s` and `max_mb`."""

    def __init__(self, root: Path, max_mb: float | None = None, ttl_s: float = 6 * 3600) -> None:
        self.root = root
        self.max_mb = max_mb
        self.ttl_s = ttl_s
        self._active: set[Path] = set()  # runs whose handler is still running
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

    def _clean(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        finished, active_bytes = [], 0
        for folder in self.root.glob("run-*"):
            if folder in self._active:  # counts towards the total, but is never removed
                active_bytes += folder_bytes(folder)
                continue
            try:
                modified = folder.stat().st_mtime
            except FileNotFoundError:  # removed with its session meanwhile
                continue
            if time.time() - modified > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                finished.append((modified, folder_bytes(folder), folder))
        if self.max_mb is None:
            return
        total = active_bytes + sum(size for _, size, _ in finished)
        for _, size, folder in sorted(finished, key=lambda run: run[0]):
            if total <= self.max_mb * 1024 * 1024:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
