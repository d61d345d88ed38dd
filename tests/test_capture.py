"""Attention capture: equal to eager attention, restores the model, records only what is asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hi_core.maps import head_maps, run_forward
from hi_core.capture import _ACTIVE, IMPLEMENTATION, capture_attention
from hi_core.inputs import build_inputs, key_phrase_tokens

from .oracles import eager_rows

TEXT = "a red square at the center and a blue circle"


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_captured_rows_equal_eager_attention(llava, llava_dir, scene, queries):
    image, _ = scene
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", TEXT)
    rows = inputs.query_positions(np.arange(inputs.num_response_tokens), queries)
    keys = inputs.layout.positions.reshape(-1)
    with capture_attention(llava.model, llava.adapter, rows, keys) as cache:
        run_forward(llava, inputs.tensors)
    captured = cache.stacked()[:, 0].numpy()
    expected = eager_rows(str(llava_dir), inputs, rows, keys)
    assert captured.shape == expected.shape == (2, 4, len(rows), keys.size)
    np.testing.assert_allclose(captured, expected, atol=1e-5)
    # The rows are far from uniform, so equality is not a coincidence of flat attention.
    assert captured.std() > 1e-3


def test_head_maps_average_the_key_phrase_rows(llava, llava_dir, scene):
    image, _ = scene
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", TEXT)
    tokens = key_phrase_tokens(inputs, "blue circle")
    maps = head_maps(llava, inputs, tokens, "producing")
    rows = inputs.query_positions(tokens, "producing")
    expected = eager_rows(str(llava_dir), inputs, rows, inputs.layout.positions.reshape(-1)).mean(axis=2)
    np.testing.assert_allclose(maps.reshape(expected.shape), expected, atol=1e-5)


class _FailingLayer(Exception):
    pass


def _fail(*_):
    raise _FailingLayer("layer 1 fails")


def test_recorder_is_cleared_and_model_usable_when_forward_raises(llava, scene):
    image, _ = scene
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", TEXT)
    with torch.no_grad():
        before = llava.model(**inputs.tensors, use_cache=False).logits
    # The forward fails inside the language model, after layer 0's rows were recorded.
    hook = llava.adapter.attention_modules(llava.model)[1].register_forward_pre_hook(_fail)
    try:
        with pytest.raises(_FailingLayer):
            with capture_attention(llava.model, llava.adapter, [inputs.prefix_length], [0]) as cache:
                recorder = _ACTIVE.get()
                run_forward(llava, inputs.tensors)
    finally:
        hook.remove()
    assert recorder is not None and recorder.cache is cache and list(cache.rows) == [0]
    assert _ACTIVE.get() is None
    # The capture implementation stays installed (it is never switched back per call), records
    # nothing any more, and the model computes what it computed before.
    assert llava.model.config.text_config._attn_implementation == IMPLEMENTATION
    with torch.no_grad():
        after = llava.model(**inputs.tensors, use_cache=False).logits
    assert list(cache.rows) == [0]
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_nothing_is_recorded_outside_the_context(llava, scene):
    image, _ = scene
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", TEXT)
    with capture_attention(llava.model, llava.adapter, [inputs.prefix_length], [0]) as cache:
        pass
    run_forward(llava, inputs.tensors)
    assert cache.rows == {}


def test_capture_leaves_model_outputs_unchanged(llava, scene):
    image, _ = scene
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", TEXT)
    with torch.no_grad():
        plain = llava.model(**inputs.tensors, use_cache=False).logits
        with capture_attention(llava.model, llava.adapter, [inputs.prefix_length], inputs.layout.positions.reshape(-1)):
            captured = llava.model(**inputs.tensors, use_cache=False).logits
    torch.testing.assert_close(captured, plain, rtol=0, atol=1e-6)
