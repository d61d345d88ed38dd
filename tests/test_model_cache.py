"""ModelCache (hi_core/model/model_cache.py): loads outside its lock, one at a time, each model once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from hi_core.model import loading, model_cache
from hi_core.base.errors import InputError
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.model_cache import ModelCache


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

    monkeypatch.setattr(model_cache, "load_model", fake_load)
    monkeypatch.setattr(model_cache, "count_parameters", lambda config: 1000)  # sizes: see the budget tests
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


# --- the memory budget ---------------------------------------------------------------------------


def _sized(monkeypatch, sizes: dict[str, int]) -> list[LoadConfig]:
    """load_model replaced by one that records the configs it loads; model `name` has `sizes[name]` parameters."""
    loads: list[LoadConfig] = []
    def fake_load(config: LoadConfig) -> loading.LoadedModel:
        loads.append(config)
        return loading.LoadedModel(name=config.model, model=None, processor=None, adapter=None, device=torch.device("cpu"))

    monkeypatch.setattr(model_cache, "load_model", fake_load)
    monkeypatch.setattr(model_cache, "count_parameters", lambda config: sizes[config.model])
    return loads


M = 1_000_000  # parameters: a model of 100 * M parameters takes 400 MB in float32


def test_models_are_dropped_before_a_load_until_it_fits_the_budget(monkeypatch):
    _sized(monkeypatch, {"a/one": 100 * M, "b/two": 100 * M, "c/big": 200 * M})  # float32: 400, 400, 800 MB
    cache = ModelCache(budget=1000 * M)
    cache.get(LoadConfig("a/one", device="cpu"))
    cache.get(LoadConfig("b/two", device="cpu"))
    cache.get(LoadConfig("a/one", device="cpu"))  # now the most recently used
    cache.get(LoadConfig("c/big", device="cpu"))  # 800 more: b/two goes, then a/one too (400 + 800 > 1000)
    assert [LoadConfig(name, device="cpu") in cache for name in ("a/one", "b/two", "c/big")] == [False, False, True]
    assert cache._held() == 800 * M


def test_a_model_that_cannot_fit_is_refused_naming_both_numbers_and_the_cache_is_kept(monkeypatch):
    loads = _sized(monkeypatch, {"a/one": 100 * M, "huge/model": 3000 * M})
    cache = ModelCache(budget=2000 * M)
    cache.get(LoadConfig("a/one", device="cpu"))
    with pytest.raises(InputError, match=r"'huge/model' needs 6\.0 GB for its 3\.00 B parameters in bfloat16, more than the "
                                         r"model memory budget of 2\.0 GB \(HI_MODEL_MEMORY_GB\)"):
        cache.get(LoadConfig("huge/model", device="cpu"))
    assert LoadConfig("a/one", device="cpu") in cache and [c.model for c in loads] == ["a/one"]  # refused before loading


def test_the_default_dtype_is_float32_when_it_fits_and_bfloat16_only_when_it_must(monkeypatch):
    loads = _sized(monkeypatch, {"small/model": 100 * M, "mid/model": 200 * M})
    cache = ModelCache(budget=500 * M)
    cache.get(LoadConfig("small/model", device="cpu"))  # 400 MB in float32: fits
    loaded = cache.get(LoadConfig("mid/model", device="cpu"))  # 800 MB in float32 would not; 400 in bfloat16 does
    assert [config.dtype for config in loads] == ["auto", "bfloat16"]
    assert loaded.note == "in bfloat16: in float32 its weights (800 MB) would not fit the model memory budget of 500 MB"
    with pytest.raises(InputError, match="needs 800 MB for its 0.20 B parameters in float32"):  # asked for: never changed
        cache.get(LoadConfig("mid/model", device="cpu", dtype="float32"))


def test_a_private_copy_counts_while_it_is_held(monkeypatch):
    _sized(monkeypatch, {"a/one": 100 * M, "b/two": 100 * M, "tuned/model": 150 * M, "c/big": 125 * M})
    cache = ModelCache(budget=1000 * M)
    cache.get(LoadConfig("a/one", device="cpu"))
    with cache.private(LoadConfig("tuned/model", device="cpu")) as config:  # 600 MB reserved
        assert config == LoadConfig("tuned/model", device="cpu") and cache._held() == 1000 * M
        cache.get(LoadConfig("b/two", device="cpu"))  # a/one goes to make room
        assert LoadConfig("a/one", device="cpu") not in cache and cache._held() == 1000 * M
        with pytest.raises(InputError, match="needs 500 MB and 600 MB of the model memory budget of 1.0 GB is held by "
                                             "fine-tunes running now"):
            cache.get(LoadConfig("c/big", device="cpu"))
    assert cache._held() == 0  # b/two went for c/big's try; the reservation went with the block


def test_real_folders_are_sized_from_their_safetensors_and_load_in_bfloat16_when_they_must(llava_dir):
    from hi_core.model.model_memory import safetensors_parameters

    parameters = safetensors_parameters(llava_dir)
    loaded = load_model(LoadConfig(str(llava_dir), device="cpu"))
    assert parameters == sum(p.numel() for p in loaded.model.parameters())
    cache = ModelCache(budget=int(parameters * 3))  # float32 (4 bytes each) would not fit, bfloat16 (2) does
    cached = cache.get(LoadConfig(str(llava_dir), device="cpu"))
    assert cached.model.dtype == torch.bfloat16 and "in bfloat16" in cached.note
