"""Long work with live progress and a cancel button: the work runs in a worker thread while the event's
generator refreshes the page; each browser session has at most one job, which its Cancel stops.

    with jobs.start(session_key(request), work) as job:   # work(stop: threading.Event) -> result
        for _ in job.ticks():                              # every `refresh_s` while it runs
            yield {status: ...}
        result = job.result()                              # its value, or its error raised here

Leaving the block (the job ended, the page was closed, or an error) sets the stop flag and waits for the
worker, so a job never outlives its event. The work checks `stop.is_set()` between its steps.

Work that must run in the event's own thread (where `gr.Progress` reaches the page) takes only the flag:

    with jobs.flag(session_key(request)) as stop:          # the session's Cancel sets it
        result = work(stop)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

ETA_SMOOTHING = 0.15  # share of a new measurement in the time-left shown (read every `Jobs.refresh_s`)


@dataclass
class Progress:
    """A job as the page shows it: written by the worker thread, read by the event's loop."""

    total: int  # steps planned
    stage: str = "starting"
    done: int = 0  # steps finished
    started: float = field(default_factory=time.monotonic)
    first_step: float | None = None  # when the first step finished (the rate is measured from there)
    _left: float | None = field(default=None, init=False, repr=False)  # the estimate last shown, and when
    _left_at: float = field(default=0.0, init=False, repr=False)

    def step(self) -> None:
        self.done += 1
        if self.first_step is None:
            self.first_step = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def seconds_left(self) -> float | None:
        """The remaining steps at the rate measured since the first one (None before two steps), smoothed: each
        reading counts down from the last one shown and moves a share `ETA_SMOOTHING` toward the new measurement,
        so one slow step (another process, a checkpoint) does not make the estimate jump by minutes."""
        if self.first_step is None or self.done < 2:
            return None
        now = time.monotonic()
        measured = (now - self.first_step) / (self.done - 1) * (self.total - self.done)
        if self._left is None:
            self._left = measured
        else:
            self._left = (1 - ETA_SMOOTHING) * max(0.0, self._left - (now - self._left_at)) + ETA_SMOOTHING * measured
        self._left_at = now
        return self._left


def progress_bar(done: int, steps: int) -> str:
    """A job's progress as the page draws it, below its status line."""
    return f'\n\n<progress value="{done}" max="{steps}" style="width: 100%"></progress>'


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def session_key(request: gr.Request | None) -> str:
    """The key of the browser session's job: its session hash ("" for a call without a session, e.g. a direct one)."""
    if request is None or request.session_hash is None:
        return ""
    return request.session_hash


class Job:
    """One running job (see the module's docstring)."""

    def __init__(self, jobs: Jobs, key: str, work: Callable[[threading.Event], Any], refresh_s: float) -> None:
        self._jobs, self._key, self.refresh_s = jobs, key, refresh_s
        self.stop = threading.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job")
        self._future = self._worker.submit(work, self.stop)

    def ticks(self) -> Iterator[None]:
        while not self._future.done():
            concurrent.futures.wait([self._future], timeout=self.refresh_s)
            yield

    def result(self) -> Any:
        return self._future.result()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()  # the page was closed, or the job failed: the work stops at its next check
        self._worker.shutdown(wait=True)
        self._jobs._finished(self._key, self.stop)


class Jobs:
    """The running job of each browser session (by its session hash), by its stop flag."""

    def __init__(self, refresh_s: float = 0.5) -> None:
        self.refresh_s = refresh_s
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str, work: Callable[[threading.Event], Any]) -> Job:
        job = Job(self, key, work, self.refresh_s)
        with self._lock:
            self._running[key] = job.stop
        return job

    @contextlib.contextmanager
    def flag(self, key: str) -> Iterator[threading.Event]:
        """The stop flag of work the block runs itself (in the event's thread), set by the session's `cancel`."""
        stop = threading.Event()
        with self._lock:
            self._running[key] = stop
        try:
            yield stop
        finally:
            self._finished(key, stop)

    def cancel(self, key: str) -> bool:
        """Asks the session's running job to stop; False when it has none."""
        with self._lock:
            stop = self._running.get(key)
        if stop is None:
            return False
        stop.set()
        return True

    def _finished(self, key: str, stop: threading.Event) -> None:
        with self._lock:
            if self._running.get(key) is stop:
                del self._running[key]
