"""PaliGemma adapter: image tokens first, fixed square grid after a squash resize, suffix tokens.

The model attends bidirectionally over the prefix (token_type_ids 0) and causally over the
suffix (1); the response must be a suffix, exactly as the processor encodes `suffix=`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.method.maps import run_forward
from hi_core.model.capture import capture_attention
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

from .family_checks import PROMPT, TEXT, check_capture_equals_eager, check_region_lands_on_its_cells, two_scenes
from .oracles import eager_rows
from .tiny_paligemma import build_paligemma

SIZE = (140, 70)  # (width, height): squashed to 56 x 56, x by 0.4 and y by 0.8
SIDE = 7  # 56 / 8-px patches


@pytest.fixture(scope="module")
def paligemma_dir(tmp_path_factory):
    return build_paligemma(tmp_path_factory.mktemp("paligemma"))


@pytest.fixture(scope="module")
def paligemma(paligemma_dir):
    return load_model(LoadConfig(model=str(paligemma_dir), device="cpu"))


@pytest.fixture(scope="module")
def image():
    return two_scenes(SIZE, (80, 10, 120, 40))[0]


@pytest.fixture(scope="module")
def inputs(paligemma, image):
    return build_inputs(paligemma.adapter, paligemma.model, paligemma.processor, image, PROMPT, TEXT)


def test_paligemma_capture_equals_eager(paligemma, paligemma_dir, image):
    check_capture_equals_eager(paligemma, paligemma_dir, image)


def test_paligemma_grid_follows_the_squash_resize(paligemma):
    # 140x70 -> 56x56: x * 0.4, y * 0.8, 8-px cells. Box x 80..120 -> 32..48 -> cols 4-5;
    # y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns: not transposable.
    cells = check_region_lands_on_its_cells(paligemma, SIZE, (80, 10, 120, 40))
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 4:6] = True
    np.testing.assert_array_equal(cells, expected)


def test_paligemma_image_tokens_come_first(paligemma, inputs):
    ids = inputs.tensors["input_ids"][0]
    count = SIDE * SIDE
    np.testing.assert_array_equal(inputs.layout.positions, np.arange(count).reshape(SIDE, SIDE))
    assert inputs.layout.view == "image"
    assert (ids[:count] == paligemma.model.config.image_token_id).all()
    assert (ids[count:] != paligemma.model.config.image_token_id).all()
    assert int(ids[count]) == paligemma.processor.tokenizer.bos_token_id  # <image>... <bos> prompt "\n"
    assert "labels" not in inputs.tensors  # the processor's training labels are not passed on


def test_paligemma_response_is_encoded_as_the_processors_suffix(paligemma, image, inputs):
    # The processor's own encoding of a suffix is prefix + suffix + eos with token_type_ids 1 on
    # the suffix: the scored sequence must be that, without the eos.
    reference = paligemma.processor(
        text=paligemma.processor.image_token + PROMPT, images=[image], suffix=TEXT, return_tensors="pt"
    )
    assert int(reference["input_ids"][0, -1]) == paligemma.processor.tokenizer.eos_token_id
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(inputs.tensors[key], reference[key][:, :-1], err_msg=key)
    token_types = inputs.tensors["token_type_ids"][0]
    assert (token_types[: inputs.prefix_length] == 0).all()
    assert (token_types[inputs.prefix_length :] == 1).all() and inputs.num_response_tokens >= 5


def test_paligemma_prefix_is_bidirectional_and_response_causal(paligemma, paligemma_dir, inputs):
    """The model's own mask (eager attention) with our token_type_ids, and the capture on prefix rows."""
    total = int(inputs.tensors["input_ids"].shape[1])
    prefix = inputs.prefix_length
    attention = eager_rows(str(paligemma_dir), inputs, np.arange(total), np.arange(total))[0]  # layer 0: (H, T, T)
    # Image token 0 attends forward to the whole prefix (prompt included), not to the response.
    assert (attention[:, 0, 1:prefix] > 0).all()
    assert (attention[:, :prefix, prefix:] == 0).all()
    # Each response token attends to the prefix and earlier response tokens only.
    for position in range(prefix, total):
        assert (attention[:, position, : position + 1] > 0).all()
        assert (attention[:, position, position + 1 :] == 0).all()
    # The capture reproduces rows where the bidirectional prefix matters (queries inside the image).
    queries = np.array([0, 3, SIDE * SIDE - 1, prefix - 1, prefix + 1])
    keys = inputs.layout.positions.reshape(-1)
    with capture_attention(paligemma.model, paligemma.adapter, queries, keys) as cache:
        run_forward(paligemma, inputs.tensors)
    expected = eager_rows(str(paligemma_dir), inputs, queries, keys)
    np.testing.assert_allclose(cache.stacked()[:, 0].numpy(), expected, atol=1e-5)


def test_paligemma_capture_follows_sdpa_without_token_type_ids(paligemma, paligemma_dir, inputs):
    # Without token_type_ids, transformers skips the mask for SDPA and the Gemma attention
    # (is_causal=False) then attends bidirectionally over the whole sequence, response included
    # (eager builds a causal mask instead). The capture must record what SDPA runs: that equals
    # eager attention with every token in the bidirectional block (token_type_ids all 0).
    tensors = {key: value for key, value in inputs.tensors.items() if key != "token_type_ids"}
    all_prefix = {**inputs.tensors, "token_type_ids": torch.zeros_like(inputs.tensors["token_type_ids"])}
    queries = inputs.query_positions(np.arange(inputs.num_response_tokens), "reading")
    keys = inputs.layout.positions.reshape(-1)
    with capture_attention(paligemma.model, paligemma.adapter, queries, keys) as cache:
        run_forward(paligemma, tensors)
    expected = eager_rows(str(paligemma_dir), replace(inputs, tensors=all_prefix), queries, keys)
    np.testing.assert_allclose(cache.stacked()[:, 0].numpy(), expected, atol=1e-5)


def test_paligemma_analyze_image(paligemma):
    bright, _, mask = two_scenes(SIZE, (80, 10, 120, 40))
    analysis = analyze_image(paligemma, bright, mask, TEXT, AnalysisConfig(key_phrase="red square"))
    assert analysis.family == "paligemma" and analysis.view == "image"
    assert analysis.maps.shape == (2, 4, SIDE, SIDE) and analysis.grid == (SIDE, SIDE)
    assert analysis.hi.shape == (2, 4) and np.isfinite(analysis.hi).all()
    assert analysis.response_tokens == 2
    # Each map is attention probability over the image cells: positive, less than 1 in total.
    assert (analysis.maps > 0).all() and (analysis.maps.sum(axis=(2, 3)) < 1).all()
    assert analysis.to_json()["grid"] == [SIDE, SIDE]
