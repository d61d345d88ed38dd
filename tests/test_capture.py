"""Attention capture: equal to eager attention, restores the model, records only what is asked."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hi_core.method.maps import head_maps, run_forward
from hi_core.model.capture import (
    _ACTIVE,
    IMPLEMENTATION,
    _capturing_attention,
    capture_attention,
    unsupported_attention_features,
)
from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs, key_phrase_tokens

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


class _Attention(torch.nn.Module):
    """What an attention function reads from its module (Gemma 2's attention, 4 heads on 2 KV heads)."""

    num_key_value_groups = 2
    head_dim = 8
    is_causal = True


def _causal_sliding_mask(length: int, window: int) -> torch.Tensor:
    """(1, 1, T, T) boolean: causal and within `window` tokens, as transformers' sdpa_mask builds it."""
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return ((k <= q) & (k > q - window))[None, None]


@pytest.mark.parametrize("case", ["no mask (causal)", "sliding mask", "decode step"])
def test_soft_capped_output_equals_gemma2_eager_attention(case):
    """The layer output under soft-capping: transformers' own Gemma 2 eager function is the oracle
    (it takes an additive float mask; ours gets the boolean one SDPA would)."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    generator = torch.Generator().manual_seed(0)
    queries = 1 if case == "decode step" else 12
    query = torch.randn(2, 4, queries, 8, generator=generator) * 3
    key, value = (torch.randn(2, 2, 12, 8, generator=generator) * 3 for _ in range(2))
    module = _Attention().eval()
    mask = _causal_sliding_mask(12, 5) if case == "sliding mask" else None
    ours, _ = _capturing_attention(module, query, key, value, mask, scaling=0.5, softcap=2.0, dropout=0.0)
    if mask is None and queries > 1:
        mask = _causal_sliding_mask(12, 12)
    additive = None if mask is None else torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    expected, _ = eager_attention_forward(module, query, key, value, additive, scaling=0.5, softcap=2.0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    uncapped, _ = eager_attention_forward(module, query, key, value, additive, scaling=0.5)
    assert (ours - uncapped).abs().max() > 1e-2  # the cap matters at these logits


@pytest.mark.parametrize("name, feature", [("s_aux", "attention sinks (s_aux)"), ("position_bias", "relative position bias")])
def test_attention_the_capture_cannot_reproduce_is_refused_by_name(name, feature):
    query = key = value = torch.zeros(1, 2, 3, 8)
    with pytest.raises(InputError, match=re.escape(feature)):
        _capturing_attention(_Attention(), query, key, value, None, **{name: torch.zeros(2)})


class _Model:
    """Just what `unsupported_attention_features` reads: attention modules and a text config."""

    def __init__(self, text_config: dict, sinks: bool = False):
        self.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(**text_config))
        module = _Attention()
        module.sinks = torch.nn.Parameter(torch.zeros(4)) if sinks else None  # None: a layer without sinks
        self.modules = [_Attention(), module]


class _Adapter:
    def attention_modules(self, model):
        return model.modules


@pytest.mark.parametrize("text_config, sinks, features", [
    ({"attn_logit_softcapping": 50.0, "sliding_window": 4096}, False, []),  # Gemma 2: reproduced
    ({}, True, ["attention sinks (s_aux)"]),
    ({"alibi": True}, False, ["ALiBi position bias (alibi)"]),
    ({"relative_attention_num_buckets": 32}, False, ["relative position bias (position_bias)"]),
])
def test_unsupported_attention_features_are_read_from_modules_and_config(text_config, sinks, features):
    assert unsupported_attention_features(_Model(text_config, sinks), _Adapter()) == features
