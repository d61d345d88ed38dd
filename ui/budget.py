"""What the whole server holds for its visitors, bounded for all sessions together (not per session).

`TokenMapBudget`: the Explorer's per-token maps (every response token's map of every head, kept so that a
visitor can tick tokens without a new forward pass) are held here, at most `Settings.max_token_maps` maps
(layers x heads x tokens) for the whole server. A new analysis that would pass the budget drops the maps of
the sessions used least recently; such a session is told to analyze again when it asks for single tokens.
A session's maps go when it ends (`forget`, the Explorer state's delete callback, also after
`Settings.session_idle_s` without a new result) or when it analyzes again.

`UploadCacheSweep`: Gradio's upload cache (uploads, and copies of the files handlers return) kept under
`Settings.max_upload_cache_mb`, its oldest files deleted first; Gradio's own `delete_cache` sweeps only by
age. `upload_cache_lifespan` runs it every `SWEEP_EVERY_S` while the app serves.

Both are shared by every session of a threaded server: each keeps its state behind one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from hi_core.method.analysis import AnalysisConfig, ImageAnalysis
from hi_core.model.loading import LoadedModel

log = logging.getLogger("hi_explorer")

SWEEP_EVERY_S = 1.0  # how often the upload cache is measured (a walk of its folder: milliseconds)


def forget(session: Any) -> None:
    """gr.State's delete callback: what the server holds for a closed (or idle) session goes with it (its files and,
    for the Explorer, its per-token maps)."""
    if session is not None:
        session.remove_files()


def token_map_count(layers: int, heads: int, tokens: int) -> int:
    return layers * heads * tokens


def token_maps_note(loaded: LoadedModel, text: str | None, config: AnalysisConfig, limit: int | None) -> str:
    """Why the per-token maps of this analysis would not be kept ("" when they fit `limit` maps): layers x
    heads x the description's tokens (its tokenizer's count, or `max_new_tokens` for a generated one). The text
    was measured before (`Settings.max_text_chars`): it is short enough to tokenize."""
    if limit is None:
        return ""
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    heads = loaded.model.config.get_text_config().num_attention_heads
    tokens = (
        len(loaded.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else config.max_new_tokens
    )
    count = token_map_count(layers, heads, tokens)
    if count <= limit:
        return ""
    return (
        f"per-token view off: {tokens} tokens x {layers} x {heads} heads = {count:,} maps, "
        f"more than the {limit:,} this server keeps for all its visitors together"
    )


@dataclass(frozen=True)
class TokenMaps:
    """One analysis's per-token maps: maps (layers, heads, tokens, gh, gw); view_sums (layers, heads, tokens, views)."""

    maps: np.ndarray
    view_sums: np.ndarray | None

    @property
    def count(self) -> int:
        return token_map_count(*self.maps.shape[:3])


@dataclass(frozen=True)
class HeldTokenMaps:
    """A session's claim on its maps in the budget: `get()` them (None once dropped), `release()` them."""

    budget: TokenMapBudget
    key: int

    def get(self) -> TokenMaps | None:
        return self.budget.get(self.key)

    def release(self) -> None:
        self.budget.release(self.key)

    @property
    def dropped(self) -> str:
        """What a session whose maps were dropped is told."""
        return (
            f"this analysis's per-token maps were dropped to make room for newer analyses (this server keeps "
            f"{self.budget.limit:,} maps for all its visitors together): press Analyze again to choose tokens"
        )


class TokenMapBudget:
    """Per-token maps of every session, at most `limit` maps (None: no limit) in all; least recently used dropped
    first."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._held: OrderedDict[int, TokenMaps] = OrderedDict()  # least recently used first
        self._total = 0
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def hold(self, analysis: ImageAnalysis) -> tuple[ImageAnalysis, HeldTokenMaps | None]:
        """`analysis` without its per-token maps, and the claim they are now held under (None: it has none, or they
        alone pass the budget). The maps of the sessions used least recently are dropped to make room."""
        if analysis.token_maps is None:
            return analysis, None
        held = self.hold_maps(TokenMaps(analysis.token_maps, analysis.token_view_sums))
        return replace(analysis, token_maps=None, token_view_sums=None), held

    def hold_maps(self, maps: TokenMaps) -> HeldTokenMaps | None:
        """`maps` held (None: they alone pass the budget), after dropping the least recently used to make room."""
        if self.limit is not None and maps.count > self.limit:
            return None
        with self._lock:
            while self.limit is not None and self._held and self._total + maps.count > self.limit:
                _, dropped = self._held.popitem(last=False)
                self._total -= dropped.count
            key = next(self._keys)
            self._held[key] = maps
            self._total += maps.count
        return HeldTokenMaps(self, key)

    def get(self, key: int) -> TokenMaps | None:
        with self._lock:
            maps = self._held.get(key)
            if maps is not None:
                self._held.move_to_end(key)
            return maps

    def release(self, key: int) -> None:
        with self._lock:
            maps = self._held.pop(key, None)
            if maps is not None:
                self._total -= maps.count

    @property
    def held(self) -> int:
        """Maps held now, all sessions together."""
        with self._lock:
            return self._total

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._held)


class UploadCacheSweep:
    """Gradio's upload cache (`folder`) kept within `max_bytes`: beyond it, its oldest files (by modification time;
    Gradio touches a cached file it hands out again) are deleted until the rest fit, except those `kept()` names
    (the components' `keep_in_cache`, e.g. examples)."""

    def __init__(self, folder: Path, max_bytes: int, kept: Callable[[], set[str]] = set) -> None:
        self.folder, self.max_bytes, self.kept = Path(folder), int(max_bytes), kept
        self._lock = threading.Lock()

    def files(self) -> list[tuple[float, int, str]]:
        """(modified, bytes, path) of every file in the cache."""
        found = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    stat = os.lstat(path)
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    def sweep(self) -> int:
        """Delete the oldest files beyond `max_bytes`; the bytes deleted."""
        with self._lock:
            files = sorted(self.files())
            total = sum(size for _, size, _ in files)
            if total <= self.max_bytes:
                return 0
            kept, removed = self.kept(), 0
            for _, size, path in files:
                if total - removed <= self.max_bytes:
                    break
                if path in kept:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed += size
                with contextlib.suppress(OSError):  # the file's folder (one per content hash), once empty
                    os.rmdir(os.path.dirname(path))
            log.info("upload cache over %d MB: %d MB of its oldest files deleted", self.max_bytes >> 20, removed >> 20)
            return removed


def _kept_in_cache(blocks: Any) -> Callable[[], set[str]]:
    def kept() -> set[str]:
        names: set[str] = set()
        for component in list(blocks.blocks.values()):
            names.update(getattr(component, "keep_in_cache", set()))
        return names

    return kept


def upload_cache_lifespan(max_bytes: int) -> Callable[[Any], contextlib.AbstractAsyncContextManager]:
    """A FastAPI lifespan (`launch(app_kwargs={"lifespan": ...})`) that sweeps the served Blocks' upload cache every
    `SWEEP_EVERY_S` seconds while the app serves (in a worker thread: the event loop never waits on the disk)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        blocks = app.get_blocks()
        sweep = UploadCacheSweep(Path(blocks.GRADIO_CACHE), max_bytes, _kept_in_cache(blocks))

        async def sweeping() -> None:
            while True:
                await asyncio.sleep(SWEEP_EVERY_S)
                await anyio.to_thread.run_sync(sweep.sweep)

        task = asyncio.create_task(sweeping())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan
