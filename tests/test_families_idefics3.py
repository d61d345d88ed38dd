"""Idefics3 / SmolVLM adapter: every image token on the image (tiles stitched + the global view spread over
them), the global view alone as an option, squashed-square geometry, validity, capture.

Every test runs on both families, with image splitting on (2 x 3 tiles + global view for a
120x60 image) and off (global view only), where that changes the sequence.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.families import ImageLayout, adapter_for
from hi_core.families.idefics3 import Idefics3Adapter, SmolVLMAdapter
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

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


def inputs_for(loaded, image, view="global"):
    return build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT, view)


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
    cells = check_region_lands_on_its_cells(loaded, SIZE, (20, 30, 80, 50), view="global")
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
        inputs, layout=ImageLayout.cells(np.arange(ids.numel())[None], np.ones((1, ids.numel()), bool))
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
    layout = loaded.adapter.view_layout(loaded.model, loaded.processor, {**inputs.tensors, "pixel_attention_mask": pixel_mask}, "global")
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[:3] = True
    np.testing.assert_array_equal(layout.valid, expected)
    np.testing.assert_array_equal(layout.positions, inputs.layout.positions)


def test_analyze_image_maps_have_the_grid_shape(case):
    family, _, _, loaded = case
    image, _, mask = two_scenes(SIZE, (20, 30, 80, 50))
    result = analyze_image(loaded, image, mask, TEXT, AnalysisConfig(key_phrase="blue circle", view="global"))
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


# --- every image token: the tiles stitched, the global view spread over them --------------------------


def test_the_tiles_land_where_their_pixels_are(case):
    """On the stitched tiles (2 x 3 tiles of 6 x 6 cells: 12 x 18 cells of 10 x 5 px of the 120 x 60 image,
    which the processor resizes to 144 x 96 before cutting), a changed region moves exactly the tile
    tokens of the cells it covers."""
    _, split, _, loaded = case
    if not split:
        return
    cells = check_region_lands_on_its_cells(loaded, SIZE, (20, 30, 80, 50), view="tiles")
    assert cells.shape == (2 * SIDE, 3 * SIDE)
    expected = np.zeros(cells.shape, dtype=bool)
    expected[6:10, 3:12] = True  # rows y 30..50 of 60 -> 12 * 30/60 .. 12 * 50/60; cols x 20..80 of 120 -> 18 * 20/120 ..
    np.testing.assert_array_equal(cells, expected)


def test_combined_maps_are_the_tiles_plus_the_global_view_spread_evenly_over_the_cells_it_covers(case):
    """Oracle: the tiles-only map plus the global-only map upsampled by np.kron (each global cell over the
    rows x cols fine cells under it, divided among them), and every image token of the sequence in the views."""
    _, split, _, loaded = case
    image, _, mask = two_scenes(SIZE, (20, 30, 80, 50))
    config = AnalysisConfig(key_phrase="blue circle")
    combined, tiles, alone = (analyze_image(loaded, image, mask, TEXT, dataclasses.replace(config, view=view))
                              for view in ("combined", "tiles", "global"))
    inputs = inputs_for(loaded, image, "combined")
    image_tokens = int((inputs.tensors["input_ids"] == loaded.model.config.image_token_id).sum())
    assert sum(view.tokens for view in inputs.layout.views) == inputs.layout.keys.size == image_tokens
    if not split:
        assert combined.grid == (SIDE, SIDE) and combined.view == "global view"
        np.testing.assert_allclose(combined.maps, alone.maps)
        return
    rows, cols = 2, 3
    assert combined.grid == tiles.grid == (rows * SIDE, cols * SIDE) and alone.grid == (SIDE, SIDE)
    assert combined.view == "6 tiles + global view" and tiles.view == "6 tiles"
    spread = np.kron(alone.maps, np.ones((rows, cols), np.float32)) / (rows * cols)
    np.testing.assert_allclose(combined.maps, tiles.maps + spread, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(combined.maps.sum(axis=(2, 3)), tiles.maps.sum(axis=(2, 3)) + alone.maps.sum(axis=(2, 3)), rtol=1e-5)
    payload = combined.to_json()
    assert [(view["name"], view["grid"], view["tokens"]) for view in payload["views"]] == [
        ("tiles", [rows * SIDE, cols * SIDE], rows * cols * SIDE * SIDE), ("global view", [SIDE, SIDE], SIDE * SIDE)]
    shares = np.array([[view["share"][layer][head] for view in payload["views"]] for layer in range(2) for head in range(4)])
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)
    tile_share = tiles.maps.sum(axis=(2, 3)) / (tiles.maps.sum(axis=(2, 3)) + alone.maps.sum(axis=(2, 3)))
    np.testing.assert_allclose(shares[:, 0], tile_share.reshape(-1), rtol=1e-4)
