"""ModelCache (hi_core/loading.py): loads outside its lock, one at a time, each model once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from hi_core import loading
from hi_core.errors import InputError
from hi_core.loading import LoadConfig, ModelCache


@pytest.fixture
def slow_loads(monkeypatch):
    """load_model replaced by one that takes 0.5 s (1 s for 'slow/model') and records who loaded what, when."""
    log: list[tuple[str, str, float]] = []

    def fake_load(config: LoadConfig):
        log.append(("start", config.model, time.monotonic()))
        if config.model == "bad/model":
            raise InputError("no such model")
        time.sleep(1.0 if config.model == "slow/model" else 0.5)
        log.append(("end", config.model, time.monotonic()))
        return SimpleNamespace(name=config.model)

    monkeypatch.setattr(loading, "load_model", fake_load)
    return log


def _in_threads(*calls):
    results: list = [None] * len(calls)
    threads = [threading.Thread(target=lambda i=i, call=call: results.__setitem__(i, call())) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in this order
    for thread in threads:
        thread.join()
    return results


def test_a_cached_model_is_returned_while_another_loads(slow_loads):
    cache = ModelCache()
    cached = cache.get(LoadConfig("demo"))
    timings = {}

    def cached_get():
        start = time.monotonic()
        timings["cached"] = (cache.get(LoadConfig("demo")), time.monotonic() - start)

    _in_threads(lambda: cache.get(LoadConfig("slow/model")), cached_get)
    model, seconds = timings["cached"]
    assert model is cached and seconds < 0.2  # not behind the 1 s load (it waited the whole load before)


def test_loads_run_one_at_a_time_and_waiters_learn_their_place(slow_loads):
    cache = ModelCache(capacity=3)
    positions: list[int] = []
    _in_threads(lambda: cache.get(LoadConfig("slow/model")), lambda: cache.get(LoadConfig("demo"), on_wait=positions.append))
    (_, first, first_start), (_, _, first_end), (_, second, second_start), _ = slow_loads
    assert (first, second) == ("slow/model", "demo") and second_start >= first_end  # never two loads at once
    assert positions and set(positions) == {1}


def test_the_same_model_asked_for_twice_at_once_is_loaded_once(slow_loads):
    cache = ModelCache()
    first, second = _in_threads(lambda: cache.get(LoadConfig("demo")), lambda: cache.get(LoadConfig("demo")))
    assert first is second and [entry[:2] for entry in slow_loads] == [("start", "demo"), ("end", "demo")]


def test_a_failed_load_releases_the_next_one_and_is_not_cached(slow_loads):
    cache = ModelCache()
    with pytest.raises(InputError, match="no such model"):
        cache.get(LoadConfig("bad/model"))
    assert LoadConfig("bad/model") not in cache
    assert cache.get(LoadConfig("demo")).name == "demo"  # the load lock was released


def test_the_least_recently_used_model_goes_beyond_capacity(slow_loads):
    cache = ModelCache(capacity=2)
    for name in ("a/one", "b/two", "a/one", "c/three"):
        cache.get(LoadConfig(name))
    assert LoadConfig("a/one") in cache and LoadConfig("c/three") in cache and LoadConfig("b/two") not in cache
