"""Attention capture on one model shared by threads (the app's threaded server).

The capture implementation is installed once per model and never switched back, so analyses that
overlap on one model each get their own rows, exactly as when run one after another; and outside
a capture the model computes what plain SDPA computes.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.method.maps import batch_head_maps, head_maps, run_forward
from hi_core.model.capture import IMPLEMENTATION, capture_attention, install_capture, remove_capture
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

PROMPT = "Describe the image."
TEXTS = ["a red square", "a red square at the top left and a blue circle", "a blue circle at the center", "a big star on the left"]
SIZES = [(60, 80), (90, 50), (64, 64), (100, 70)]  # (width, height)
THREADS = 8
ANALYSES_PER_THREAD = 8


@pytest.fixture
def fresh_llava(llava_dir):
    """A model of its own, loaded with SDPA and never captured from."""
    return load_model(LoadConfig(model=str(llava_dir), device="cpu"))


def _analysis(loaded, index: int) -> list[np.ndarray]:
    """Analysis `index`: its own image, text, key rows and query mode; every 4th one batched."""
    rng = np.random.default_rng(index)
    width, height = SIZES[index % len(SIZES)]
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXTS[index % len(TEXTS)])
    tokens = np.arange(inputs.num_response_tokens)[index % 3 :]
    queries = ("producing", "reading")[index % 2]
    if index % 4 == 3:
        other = build_inputs(loaded.adapter, loaded.model, loaded.processor, image.rotate(90, expand=True), PROMPT, TEXTS[0])
        return batch_head_maps(loaded, [inputs, other], [tokens, np.arange(other.num_response_tokens)], queries)
    return [head_maps(loaded, inputs, tokens, queries)]


def test_overlapping_analyses_on_one_model_equal_serial_ones(fresh_llava, one_thread):
    count = THREADS * ANALYSES_PER_THREAD
    serial = [_analysis(fresh_llava, index) for index in range(count)]
    concurrent: dict[int, list[np.ndarray]] = {}
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        start.wait()  # all threads begin together, so their forwards overlap
        for index in range(thread * ANALYSES_PER_THREAD, (thread + 1) * ANALYSES_PER_THREAD):
            try:
                concurrent[index] = _analysis(fresh_llava, index)
            except Exception as error:  # collected: every failure is reported, not only the first
                errors.append(f"analysis {index}: {error!r}")

    workers = [threading.Thread(target=worker, args=(thread,)) for thread in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == [], f"{len(errors)} of {count} overlapping analyses failed: {errors[:3]}"
    assert sorted(concurrent) == list(range(count))
    for index in range(count):
        for got, expected in zip(concurrent[index], serial[index], strict=True):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"analysis {index}")


def test_first_installs_from_many_threads_install_once(fresh_llava):
    model, adapter = fresh_llava.model, fresh_llava.adapter
    start = threading.Barrier(THREADS)
    previous: list[str] = []

    def install() -> None:
        start.wait()
        previous.append(install_capture(model, adapter))

    workers = [threading.Thread(target=install) for _ in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert sorted(previous) == sorted(["sdpa"] + [IMPLEMENTATION] * (THREADS - 1))
    assert model.config.text_config._attn_implementation == IMPLEMENTATION
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower keeps its own


def test_capture_stays_installed_and_outside_it_the_model_computes_what_sdpa_computes(fresh_llava, llava_dir, scene):
    image, _ = scene
    loaded = fresh_llava
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXTS[1])
    with capture_attention(loaded.model, loaded.adapter, [inputs.prefix_length], inputs.layout.positions.reshape(-1)) as cache:
        run_forward(loaded, inputs.tensors)
    assert len(cache.rows) == 2
    assert loaded.model.config.text_config._attn_implementation == IMPLEMENTATION

    sdpa = load_model(LoadConfig(model=str(llava_dir), device="cpu"))
    assert sdpa.model.config.text_config._attn_implementation == "sdpa"
    with torch.no_grad():
        logits = loaded.model(**inputs.tensors, use_cache=False).logits
        expected = sdpa.model(**inputs.tensors, use_cache=False).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)

    prefix = loaded.adapter.prefix_inputs(loaded.processor, image, PROMPT)
    generated = loaded.model.generate(**prefix, max_new_tokens=12, do_sample=False)
    expected_tokens = sdpa.model.generate(**prefix, max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(generated, expected_tokens, rtol=0, atol=0)


def test_a_deep_copy_keeps_the_capture_and_records_its_own_modules(fresh_llava, scene):
    image, _ = scene
    loaded = fresh_llava
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXTS[1])
    tokens = np.arange(inputs.num_response_tokens)
    original = head_maps(loaded, inputs, tokens, "producing")
    duplicate = replace(loaded, model=copy.deepcopy(loaded.model))
    assert duplicate.model.config.text_config._attn_implementation == IMPLEMENTATION
    np.testing.assert_array_equal(head_maps(duplicate, inputs, tokens, "producing"), original)


def test_remove_capture_gives_the_implementation_back(fresh_llava):
    model, adapter = fresh_llava.model, fresh_llava.adapter
    assert install_capture(model, adapter) == "sdpa"
    assert install_capture(model, adapter) == IMPLEMENTATION
    remove_capture(model, adapter, "eager")
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert install_capture(model, adapter) == "eager"
