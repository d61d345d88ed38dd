"""Loaded models shared across sessions within a memory budget (`ModelCache`: the app's, and the CLI's one model),
each model sized before it loads (`count_parameters`, from `model_memory`).
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from ..base.errors import InputError
from .hub import check_hub_model
from .loading import (
    DType,
    LoadConfig,
    LoadedModel,
    check_model_folder,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from .model_memory import MemoryPlan, check_device_fits, describe, memory_budget, parameter_count, plan

#: The `LoadConfig.dtype` that loads in each torch dtype (the inverse of `resolve_dtype` for all but "auto").
_DTYPE_NAMES: dict[torch.dtype, DType] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}


def count_parameters(config: LoadConfig) -> int:
    """The parameters of the model `config` names, before loading it (`model_memory.parameter_count`)."""
    source = resolve_source(config.model)
    if Path(source).is_dir():
        check_model_folder(source, config.model, config.trust_remote_code)
    else:
        check_hub_model(source)
    return parameter_count(source, config.trust_remote_code, config.model)


class ModelCache:
    """Loaded models shared across sessions (the app), within a memory budget; least recently used dropped first.

    A cached model is returned at once, also while another model loads: loading happens outside
    the cache's lock, one load at a time (a load can take minutes and gigabytes), and sessions
    asking for a model that is being loaded wait for that load instead of starting another.
    `on_wait(position)` is called while a load waits for others (position 1: next).

    Memory (`hi_core.model.model_memory`): a model's weights are sized before it loads (`count(config)`
    parameters x its dtype), and models on the CPU are held within `budget` bytes (default:
    `memory_budget()`), the weights of the cached models plus those `private` reserves for copies
    outside the cache (a fine-tune's). Least recently used models are dropped before a load until the new one
    fits; one that cannot fit is refused with both numbers. A model asked for in the default dtype on
    the CPU loads in float32 when it fits, else in bfloat16 (`LoadedModel.note` says so). A dropped
    model's memory is freed once no session still uses it. `capacity`: at most this many models (None: any).
    """

    def __init__(
        self, capacity: int | None = None, budget: int | None = None, count: Callable[[LoadConfig], int] | None = None
    ) -> None:
        self.capacity = capacity
        self.budget = memory_budget() if budget is None else budget
        self._count = count or count_parameters
        self._models: OrderedDict[LoadConfig, LoadedModel] = OrderedDict()
        self._sizes: dict[LoadConfig, int] = {}  # bytes of each cached model's weights on the CPU
        self._reserved = 0  # bytes of the private copies now loaded or running
        self._lock = threading.Lock()  # guards the dictionaries, _reserved and _waiting; held only for bookkeeping
        self._loading = threading.Lock()  # one load at a time
        self._waiting: list[LoadConfig] = []  # loads queued behind the running one, in arrival order

    def get(self, config: LoadConfig, on_wait: Callable[[int], None] | None = None) -> LoadedModel:
        with self._lock:
            if config in self._models:
                self._models.move_to_end(config)
                return self._models[config]
            self._waiting.append(config)
        try:
            while not self._loading.acquire(timeout=0.5):
                if on_wait is not None:
                    with self._lock:
                        position = self._waiting.index(config) + 1
                    on_wait(position)
        finally:
            with self._lock:
                self._waiting.remove(config)
        try:
            with self._lock:  # loaded by the session we waited for?
                if config in self._models:
                    self._models.move_to_end(config)
                    return self._models[config]
            memory = self._admit(config)
            loaded = load_model(self._as_planned(config, memory))
            if memory is not None and memory.note:
                loaded = replace(loaded, note=memory.note)
            with self._lock:
                self._models[config] = loaded
                self._sizes[config] = memory.size if memory is not None else 0
                while self.capacity is not None and len(self._models) > self.capacity:
                    self._drop_oldest()
            return loaded
        finally:
            self._loading.release()

    @contextmanager
    def private(self, config: LoadConfig) -> Iterator[LoadConfig]:
        """Room in the budget for a copy of a model loaded outside the cache (a fine-tune trains its own), held
        while the block runs: cached models are dropped to make it, and it is refused when it cannot fit. Yields
        the config to load (the dtype chosen as `get` would)."""
        with self._loading:
            memory = self._admit(config)
            size = memory.size if memory is not None else 0
            with self._lock:
                self._reserved += size
        try:
            yield self._as_planned(config, memory)
        finally:
            with self._lock:
                self._reserved -= size

    def _admit(self, config: LoadConfig) -> MemoryPlan | None:
        """The dtype and size `config` loads in (None: not on the CPU, where only the device's memory bounds it), after
        dropping the least recently used models until it fits; refused when it cannot. Called holding `_loading`."""
        device = resolve_device(config.device)
        if device.type != "cpu":
            check_device_fits(config.model, self._count(config), resolve_dtype(config.dtype, device), device)
            return None
        asked = None if config.dtype == "auto" else resolve_dtype(config.dtype, device)
        memory = plan(config.model, self._count(config), asked, self.budget)
        dropped = False
        with self._lock:
            while self._models and self._held() + memory.size > self.budget:
                self._drop_oldest()
                dropped = True
            held = self._held()
        if dropped:
            gc.collect()  # the dropped models' memory back before the next one loads (if no session holds them)
        if held + memory.size > self.budget:
            raise InputError(
                f"model {config.model!r} needs {describe(memory.size)} and {describe(held)} of the model memory budget "
                f"of {describe(self.budget)} is held by fine-tunes running now: try again when they end"
            )
        return memory

    @staticmethod
    def _as_planned(config: LoadConfig, memory: MemoryPlan | None) -> LoadConfig:
        if memory is None or config.dtype != "auto" or memory.dtype == torch.float32:
            return config
        return replace(config, dtype=_DTYPE_NAMES[memory.dtype])

    def _held(self) -> int:
        return sum(self._sizes.values()) + self._reserved

    def _drop_oldest(self) -> None:
        config, _ = self._models.popitem(last=False)
        self._sizes.pop(config, None)

    def __contains__(self, config: LoadConfig) -> bool:
        with self._lock:
            return config in self._models
