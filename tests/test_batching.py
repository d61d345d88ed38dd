"""Batched forward passes score each image exactly as one-at-a-time scoring does (every family).

Each batch mixes image sizes (different grids for Qwen2-VL, different tile counts for LLaVA-NeXT
and Idefics3) and response lengths, so right padding of tokens, zero padding of image tensors and
the per-sequence row/key slicing are all exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hi_core.model.batching import collate, pad_token_id
from hi_core.model.inputs import build_inputs, key_phrase_tokens
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.maps import batch_head_maps, head_maps

from . import tiny_idefics3, tiny_llava_next, tiny_models, tiny_paligemma, tiny_qwen2_vl

BUILDERS = {
    "llava": tiny_models.build_llava,
    "llava_next": tiny_llava_next.build_llava_next,
    "qwen2_vl": tiny_qwen2_vl.build_qwen2_vl,
    "paligemma": tiny_paligemma.build_paligemma,
    "idefics3": tiny_idefics3.build_idefics3,
}
SIZES = [(130, 90), (70, 110), (64, 64)]  # (width, height)
TEXTS = ["a red square", "a red square at the top left and a blue circle", "a blue circle at the center"]
PHRASES = [None, "blue circle", None]


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def loaded(request, tmp_path_factory):
    return load_model(LoadConfig(model=str(BUILDERS[request.param](tmp_path_factory.mktemp(request.param))), device="cpu"))


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(loaded, queries):
    items = [
        build_inputs(loaded.adapter, loaded.model, loaded.processor, _image(size, seed), "Describe the image.", text)
        for seed, (size, text) in enumerate(zip(SIZES, TEXTS))
    ]
    tokens = [key_phrase_tokens(item, phrase) for item, phrase in zip(items, PHRASES)]
    assert len({item.tensors["input_ids"].shape[1] for item in items}) > 1  # padding is exercised
    batched = batch_head_maps(loaded, items, tokens, queries)
    for item, selected, maps in zip(items, tokens, batched):
        alone = head_maps(loaded, item, selected, queries)
        assert maps.shape == alone.shape
        np.testing.assert_allclose(maps, alone, atol=1e-5)
        assert alone.std() > 1e-4


def test_collate_pads_tokens_on_the_right(loaded):
    items = [
        build_inputs(loaded.adapter, loaded.model, loaded.processor, _image(SIZES[0], 0), "Describe the image.", text)
        for text in TEXTS[:2]
    ]
    pad = pad_token_id(loaded.processor.tokenizer)
    batch = collate(items, pad)
    short, long = (int(item.tensors["input_ids"].shape[1]) for item in items)
    assert batch["input_ids"].shape == (2, long)
    np.testing.assert_array_equal(batch["input_ids"][0, :short], items[0].tensors["input_ids"][0])
    assert (batch["input_ids"][0, short:] == pad).all()
    assert batch["attention_mask"][0, :short].all() and not batch["attention_mask"][0, short:].any()
    assert batch["attention_mask"][1].all()
