"""Reusing what a head's removal cannot change (`hi_core/model/replay.py`) gives the numbers a whole pass gives, for every
family, and skips what it claims to skip; the model is left as it was, and other threads' forwards are untouched."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hi_core.data.datasets import write_synthetic
from hi_core.tuning.finetune import DataConfig, split_dataset
from hi_core.causal.head_effects import baseline_pass, evaluate, prepare_batches
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.replay import PassCache, install_replay

from .tiny_gemma3 import build_gemma3
from .tiny_idefics3 import build_smolvlm
from .tiny_internvl import build_internvl
from .tiny_llava_next import build_llava_next
from .tiny_llava_onevision import build_llava_onevision
from .tiny_mistral3 import build_mistral3
from .tiny_models import build_llava
from .tiny_paligemma import build_paligemma2
from .tiny_qwen2_vl import build_qwen2_vl
from .tiny_qwen3_5 import build_qwen3_5
from .tiny_qwen3_vl import build_qwen3_vl

PROMPT = DataConfig().prompt
BUILDERS = {
    "llava": build_llava, "llava_next": build_llava_next, "llava_onevision": build_llava_onevision,
    "idefics3": build_smolvlm, "qwen2_vl": build_qwen2_vl, "qwen3_vl": build_qwen3_vl, "qwen3_5": build_qwen3_5,
    "gemma3": build_gemma3, "paligemma": build_paligemma2, "internvl": build_internvl, "mistral3": build_mistral3,
}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = write_synthetic(tmp_path_factory.mktemp("scenes"), 12, seed=5)
    split = split_dataset(folder, DataConfig(eval_fraction=0.5))
    return [split.held_out[i] for i in range(3)]


def counting(monkeypatch, loaded) -> Counter:
    """Counts the decoder layers' and the image features' own computations (their classes' methods, under the
    wrappers `install_replay` puts on the instances)."""
    calls: Counter = Counter()
    layers = loaded.adapter.decoder_layers(loaded.model)
    for cls in {type(layer) for layer in layers}:
        original = cls.forward

        def forward(self, *args, _original=original, **kwargs):
            calls[next(i for i, layer in enumerate(layers) if layer is self)] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)
    inner = type(loaded.model.model)
    original_features = inner.get_image_features

    def get_image_features(self, *args, **kwargs):
        calls["vision"] += 1
        return original_features(self, *args, **kwargs)

    monkeypatch.setattr(inner, "get_image_features", get_image_features)
    return calls


@pytest.mark.parametrize("family", BUILDERS)
def test_a_replayed_pass_equals_a_whole_one_and_computes_only_the_layers_above(family, records, tmp_path, monkeypatch):
    loaded = load_model(LoadConfig(str(BUILDERS[family](tmp_path / family)), device="cpu"))
    batches = prepare_batches(loaded, records, "caption", PROMPT, 2)
    scored = loaded.adapter.scored_layers(loaded.model)
    low, high = (scored[0], 0), (scored[-1], 1)
    whole_one, whole_two = evaluate(loaded, batches, [high]), evaluate(loaded, batches, [high, low])

    calls = counting(monkeypatch, loaded)
    baseline, cache = baseline_pass(loaded, batches, 2**30)
    assert cache.keep_layers and calls["vision"] == len(batches) == len(cache.vision)
    calls.clear()
    step = PassCache()
    one = evaluate(loaded, batches, [high], source=cache, start=high[0], record=step)
    assert calls["vision"] == 0  # the image features are the baseline's
    assert all(calls[layer] == (len(batches) if layer >= high[0] else 0) for layer in range(len(loaded.adapter.decoder_layers(loaded.model))))
    two = evaluate(loaded, batches, [high, low], source=step, start=low[0])  # the next step of an order
    for replayed, whole in ((one, whole_one), (two, whole_two)):
        np.testing.assert_allclose(replayed[0], whole[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(replayed[1], whole[1])
    assert not np.allclose(whole_one[0], baseline[0])  # the removal changed something to compare


def test_the_wrappers_are_removed_after_the_last_user(llava):
    layer = llava.adapter.decoder_layers(llava.model)[0]
    with install_replay(llava):
        with install_replay(llava):
            assert "forward" in layer.__dict__
        assert "forward" in layer.__dict__  # the outer user still holds it
    assert "forward" not in layer.__dict__ and "get_image_features" not in llava.model.model.__dict__


def test_another_threads_forward_computes_everything_while_a_plan_replays(llava, records):
    """A replay plan belongs to the context that set it: another session's pass on the shared model, in another
    thread while a validation replays, computes its own image features and layers."""
    from hi_core.model import replay

    ours = prepare_batches(llava, records[:2], "caption", PROMPT, 2)
    theirs = prepare_batches(llava, records[2:], "caption", PROMPT, 1)
    expected = evaluate(llava, theirs)[0]
    _, cache = baseline_pass(llava, ours, 2**30)
    seen, main, original = [], threading.current_thread(), replay._layer_forward

    def layer_forward(index, forward):
        wrapped = original(index, forward)

        def call(*args, **kwargs):
            if threading.current_thread() is main and not seen:
                with ThreadPoolExecutor(1) as pool:
                    seen.append(pool.submit(evaluate, llava, theirs).result()[0])
            return wrapped(*args, **kwargs)

        return call

    replay._layer_forward = layer_forward
    try:
        evaluate(llava, ours, [(1, 0)], source=cache, start=1)
    finally:
        replay._layer_forward = original
    np.testing.assert_array_equal(seen[0], expected)


def test_a_cache_over_its_memory_keeps_only_the_image_features(llava, records):
    batches = prepare_batches(llava, records, "caption", PROMPT, 2)
    baseline, cache = baseline_pass(llava, batches, 1024)
    assert not cache.keep_layers and not cache.layers and len(cache.vision) == len(batches)
    replayed = evaluate(llava, batches, [(1, 0)], source=cache, start=0)
    np.testing.assert_allclose(replayed[0], evaluate(llava, batches, [(1, 0)])[0], rtol=1e-6)
