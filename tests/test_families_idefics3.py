"""Idefics3 / SmolVLM adapter: global-view tokens, squashed-square geometry, validity, capture.

Every test runs on both families, with image splitting on (2 x 3 tiles + global view for a
120x60 image) and off (global view only), where that changes the sequence.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.families import ImageLayout, adapter_for
from hi_core.families.idefics3 import Idefics3Adapter, SmolVLMAdapter
from hi_core.inputs import build_inputs
from hi_core.loading import LoadConfig, load_model

from . import tiny_idefics3
from .family_checks import PROMPT, TEXT, check_capture_equals_eager, check_region_lands_on_its_cells, two_scenes
from .oracles import embedding_change

SIZE = (120, 60)  # (width, height): non-square, so a letterbox and a squash differ
SIDE = tiny_idefics3.TOKENS_PER_SIDE  # 6 x 6 tokens per tile / view
CASES = [("idefics3", True), ("idefics3", False), ("smolvlm", True), ("smolvlm", False)]
IDS = [f"{family}-{'split' if split else 'nosplit'}" for family, split in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request, tmp_path_factory):
    family, split = request.param
    build = {"idefics3": tiny_idefics3.build_idefics3, "smolvlm": tiny_idefics3.build_smolvlm}[family]
    folder = build(tmp_path_factory.mktemp(family), split=split)
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    return family, split, folder, loaded


def inputs_for(loaded, image):
    return build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)


def test_family_lookup_and_language_model(case):
    family, _, _, loaded = case
    assert type(loaded.adapter) is {"idefics3": Idefics3Adapter, "smolvlm": SmolVLMAdapter}[family]
    assert type(adapter_for(family)) is type(loaded.adapter)
    layers = loaded.adapter.decoder_layers(loaded.model)
    assert layers is loaded.model.model.text_model.layers and len(layers) == 2
    assert loaded.adapter.decoder_layers_path(loaded.model) == "model.text_model.layers"
    assert loaded.adapter.text_config_key(loaded.model) == "text_config"
    # The loader must honour processor_config.json (SmolVLM's processor is assembled by hand).
    assert loaded.processor.image_seq_len == SIDE * SIDE


def test_capture_equals_eager(case):
    _, _, folder, loaded = case
    image, _, _ = two_scenes(SIZE, (20, 30, 80, 50))
    check_capture_equals_eager(loaded, folder, image)


def test_region_lands_on_squashed_global_view(case):
    _, _, _, loaded = case
    # The global view is the whole image squashed to one 48x48 tile (with or without splitting),
    # so each of its 6x6 cells covers 120/6 = 20 px of width and 60/6 = 10 px of height.
    # Box x 20..80, y 30..50 -> cols 1..3, rows 3..4: off-centre, wider than tall in cells.
    # (A letterbox, 120x60 -> 48x24 + padding, would put it on rows 1..2; a transposed grid on
    # rows 1..3, cols 3..4.)
    cells = check_region_lands_on_its_cells(loaded, SIZE, (20, 30, 80, 50))
    x0, y0, x1, y1 = 20, 30, 80, 50
    col_w, row_h = SIZE[0] // SIDE, SIZE[1] // SIDE
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[y0 // row_h : y1 // row_h, x0 // col_w : x1 // col_w] = True
    assert expected.sum() == 6 and expected[3:5, 1:4].all()
    np.testing.assert_array_equal(cells, expected)


def test_scored_tokens_are_the_global_view(case):
    _, split, _, loaded = case
    tokenizer = loaded.processor.tokenizer
    image, _, _ = two_scenes(SIZE, (20, 30, 80, 50))
    inputs = inputs_for(loaded, image)
    layout = inputs.layout
    ids = inputs.tensors["input_ids"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert layout.view == "global view" and layout.grid == (SIDE, SIDE)

    # Token order: the s*s `<image>` tokens right after `<global-img>`, row-major, then the closing
    # `<fake_token_around_image>`; the tiles (when split) come before it.
    start = tokens.index("<global-img>") + 1
    np.testing.assert_array_equal(layout.positions.reshape(-1), np.arange(start, start + SIDE * SIDE))
    assert tokens[start + SIDE * SIDE] == "<fake_token_around_image>"
    frames = inputs.tensors["pixel_values"].shape[1]
    assert frames == (7 if split else 1)
    assert ("<row_2_col_3>" in tokens) == split and "<row_3_col_1>" not in tokens
    assert tokens.count("<image>") == frames * SIDE * SIDE

    # Oracle: changing only the last frame (the global view) moves exactly the scored tokens'
    # input embeddings; changing a tile moves none of them.
    everything = dataclasses.replace(
        inputs, layout=ImageLayout(positions=np.arange(ids.numel())[None], valid=np.ones((1, ids.numel()), bool))
    )
    for frame in ([frames - 1, 0] if split else [0]):
        pixels = inputs.tensors["pixel_values"].clone()
        pixels[0, frame] = torch.flip(pixels[0, frame], dims=[-1])
        changed = dataclasses.replace(everything, tensors={**inputs.tensors, "pixel_values": pixels})
        moved = embedding_change(loaded, everything, changed)[0] > 1e-4
        is_global = np.zeros(ids.numel(), dtype=bool)
        is_global[layout.positions.reshape(-1)] = True
        if frame == frames - 1:
            np.testing.assert_array_equal(moved, is_global)
        else:
            assert moved.sum() >= SIDE * SIDE // 2 and not (moved & is_global).any()


def test_validity_follows_real_pixels(case):
    _, split, _, loaded = case
    image, _, _ = two_scenes(SIZE, (20, 30, 80, 50))
    inputs = inputs_for(loaded, image)
    # transformers 5 squashes the global view to a square (no letterbox): every cell is image.
    assert inputs.tensors["pixel_attention_mask"].bool().all()
    assert inputs.layout.valid.all()
    if split:
        return
    # Where the processor marks padding (a letterboxed 48x20 image in the 48x48 tile), the cells
    # holding only padding are invalid: rows 0..2 hold pixels 0..23 (rows 0..19 are real).
    pixel_mask = torch.zeros_like(inputs.tensors["pixel_attention_mask"])
    pixel_mask[..., :20, :] = 1
    layout = loaded.adapter.image_layout(loaded.model, {**inputs.tensors, "pixel_attention_mask": pixel_mask})
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[:3] = True
    np.testing.assert_array_equal(layout.valid, expected)
    np.testing.assert_array_equal(layout.positions, inputs.layout.positions)


def test_analyze_image_maps_have_the_grid_shape(case):
    family, _, _, loaded = case
    image, _, mask = two_scenes(SIZE, (20, 30, 80, 50))
    result = analyze_image(loaded, image, mask, TEXT, AnalysisConfig(key_phrase="blue circle"))
    assert result.maps.shape == (2, 4, SIDE, SIDE) and result.maps.dtype == np.float32
    assert result.grid == (SIDE, SIDE) and result.view == "global view" and result.family == family
    assert result.hi.shape == (2, 4) and np.isfinite(result.hi).all()
    assert result.response_tokens == 2
    # Each map is a share of the rows' attention (over all keys) landing on the global view.
    totals = result.maps.sum(axis=(2, 3))
    assert (totals > 0).all() and (totals < 1 + 1e-5).all() and result.maps.std() > 0
    payload = result.to_json()
    assert payload["grid"] == [SIDE, SIDE] and payload["view"] == "global view"
    assert payload["object_patches"] == 6
