"""Qwen2-VL / Qwen2.5-VL adapter: dynamic aspect-preserving grid, merged tokens, M-RoPE.

Tiny models (tests/tiny_qwen2_vl.py):
- qwen2_vl, qwen2_5_vl: one image token = 16x16 px (8-px patches merged 2x2) of the
  smart-resized image. 130x90 (landscape) -> multiples of 16: round(90/16)=6 -> 96,
  round(130/16)=8 -> 128, within [64*64, 128*128] -> grid 6 rows x 8 cols; 70x110 (portrait)
  -> 64 x 112 -> grid 7 x 4.
- tester: the exact config of transformers' Qwen2-VL model tester (14-px patches, merge 1, its
  `vision_end_token_id` outside its 99-token vocabulary): one token = 14x14 px, images within
  [56*56, 112*112]. 130x90 -> round(90/14)=6 -> 84, round(130/14)=9 -> 126 -> grid 6 x 9;
  70x110 -> round(110/14)=8 -> 112, round(70/14)=5 -> 70 -> grid 8 x 5.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

from . import tiny_qwen2_vl
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_grid_matches_rope,
    check_lora_targets_only_language_model,
    check_refused_at_load,
    check_region_lands_on_its_cells,
    random_image,
    score_argv,
    two_scenes,
    write_scene,
)

LANDSCAPE, PORTRAIT = (130, 90), (70, 110)
BOX = (68, 12, 119, 42)  # x0, y0, x1, y1 in the landscape image


@dataclass(frozen=True)
class Case:
    build: Callable
    model_type: str
    landscape_grid: tuple[int, int]
    portrait_grid: tuple[int, int]
    region: tuple[int, int, int, int]  # a box in the landscape image ...
    cells: tuple[slice, slice]  # ... and the (rows, cols) of the grid it lands on, by hand
    layers: int


# 16-px tokens, BOX scaled by 128/130 (x) and 96/90 (y) to x 66.95..117.17 -> col 4 (64..80) 0.82,
# cols 5-6 full, col 7 (112..128) 0.32; y 12.8..44.8 -> row 0 (0..16) 0.20, row 1 full, row 2
# (32..48) 0.80. A cell's coverage is the product (corner row 2, col 4: 0.65 >= 0.5; row 1, col 7:
# 0.32), so rows 1-2 x cols 4-6: a wide box at the top right (a transposed or flipped grid fails).
MERGED_CELLS = (slice(1, 3), slice(4, 7))
# The tester's 14-px tokens (one patch each, whose embedding reacts to a sliver of a patch about as
# much as to a whole one, so the box follows cell edges): (72, 15, 116, 45) scaled by 126/130 and
# 84/90 to x 69.78..112.43 -> col 4 0.02, cols 5-7 full, col 8 0.03; y 14..42 -> rows 1-2 full.
CASES = {
    "qwen2_vl": Case(tiny_qwen2_vl.build_qwen2_vl, "qwen2_vl", (6, 8), (7, 4), BOX, MERGED_CELLS, 2),
    "qwen2_5_vl": Case(tiny_qwen2_vl.build_qwen2_5_vl, "qwen2_5_vl", (6, 8), (7, 4), BOX, MERGED_CELLS, 2),
    "tester": Case(tiny_qwen2_vl.build_qwen2_vl_tester, "qwen2_vl", (6, 9), (8, 5), (72, 15, 116, 45), (slice(1, 3), slice(5, 8)), 4),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def qwen(request, tmp_path_factory):
    """(loaded model, folder, case) for each tiny model, loaded through hi_core.model.loading (no torchvision)."""
    case = CASES[request.param]
    folder = case.build(tmp_path_factory.mktemp(request.param))
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    assert loaded.model.config.model_type == case.model_type and loaded.family == "qwen2_vl"
    return loaded, folder, case


def test_capture_equals_eager(qwen):
    loaded, folder, case = qwen
    image, _, _ = two_scenes(PORTRAIT, (10, 20, 40, 60))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    assert inputs.layout.grid == case.portrait_grid
    check_capture_equals_eager(loaded, folder, image)


def test_off_centre_region_lands_on_its_cells(qwen):
    loaded, _, case = qwen
    cells = check_region_lands_on_its_cells(loaded, LANDSCAPE, case.region)
    expected = np.zeros(case.landscape_grid, dtype=bool)
    expected[case.cells] = True
    np.testing.assert_array_equal(cells, expected)


def test_layout_matches_the_models_3d_rope_positions(qwen):
    """The model's own M-RoPE index gives each image token its (row, col): ours must agree."""
    loaded, _, case = qwen
    check_grid_matches_rope(loaded, LANDSCAPE, case.landscape_grid)


def test_response_extends_every_per_token_tensor(qwen):
    loaded, _, case = qwen
    image, _, mask = two_scenes(LANDSCAPE, BOX)
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    prefix = loaded.adapter.prefix_inputs(loaded.processor, image, PROMPT)
    response = loaded.processor.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    length = inputs.prefix_length + len(response)
    assert inputs.prefix_length == prefix["input_ids"].shape[1] and inputs.num_response_tokens == len(response)
    per_token = [key for key, value in prefix.items() if value.dim() == 2 and value.shape == prefix["input_ids"].shape]
    assert {"input_ids", "attention_mask", "mm_token_type_ids"} <= set(per_token)
    for key in per_token:
        assert inputs.tensors[key].shape == (1, length), key
        torch.testing.assert_close(inputs.tensors[key][:, : inputs.prefix_length], prefix[key])
    assert inputs.tensors["input_ids"][0, inputs.prefix_length :].tolist() == response
    assert (inputs.tensors["mm_token_type_ids"][0, inputs.prefix_length :] == 0).all()
    assert (inputs.tensors["attention_mask"][0, inputs.prefix_length :] == 1).all()
    torch.testing.assert_close(inputs.tensors["pixel_values"], prefix["pixel_values"])

    analysis = analyze_image(loaded, image, mask, TEXT, AnalysisConfig())
    num_heads = 4
    assert analysis.grid == case.landscape_grid and analysis.family == "qwen2_vl"
    assert analysis.maps.shape == (case.layers, num_heads, *case.landscape_grid)
    assert analysis.hi.shape == (case.layers, num_heads) and analysis.response_tokens == len(response)
    assert np.isfinite(analysis.maps).all() and (analysis.maps >= 0).all()
    assert (analysis.maps.sum(axis=(2, 3)) <= 1 + 1e-5).all() and analysis.maps.std() > 0
    assert analysis.mask.object_patches.sum() == 6  # 2 rows x 3 cols (BOX's fractions 1.0 and 0.8)


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(qwen, queries):
    """Different grids and response lengths in one batch (padding of tokens, patches, rows, keys)."""
    loaded, _, case = qwen
    images = [random_image(size, seed) for seed, size in enumerate([LANDSCAPE, PORTRAIT])]
    items = check_batched_equals_one_by_one(loaded, images, [TEXT, "a red square"], [None, "square"], queries,
                                            layers_heads=(case.layers, 4))
    assert [item.layout.grid for item in items] == [case.landscape_grid, case.portrait_grid]


def test_lora_wraps_only_language_model_attention(qwen):
    """Layer 1's q/k/v/o of the language model, never the vision tower's blocks (which have a layer 1 too)."""
    loaded, _, _ = qwen
    check_lora_targets_only_language_model(loaded, (1,))


# --- transformers' exact tester config, and a model whose processor's image token is not the config's ---


def test_tester_config_with_vision_end_outside_its_vocabulary_scores_through_the_cli(qwen, tmp_path, capsys):
    """The tester's `vision_end_token_id` (151653) is not the tokenizer's `<|vision_end|>` (6) and not
    even in its 99-token vocabulary; the model never reads it, so the model scores as any other."""
    loaded, folder, case = qwen
    check_cli_scores_folder(folder, tmp_path, capsys, LANDSCAPE, BOX, "qwen2_vl", case.landscape_grid, to_file=True,
                            num_layers=case.layers, num_heads=4, object_patches=6)
    if case.build is tiny_qwen2_vl.build_qwen2_vl_tester:
        config, tokenizer = loaded.model.config, loaded.processor.tokenizer
        assert config.vision_end_token_id == 151653 and config.get_text_config().vocab_size == 99
        assert tokenizer.convert_tokens_to_ids("<|vision_end|>") == 6


MISMATCH = "the model's image_token_id is 4 but the processor's image token '<|image_pad|>' has id 6"


@pytest.fixture(scope="module")
def mismatched_folder(tmp_path_factory):
    """The tester config with a tokenizer whose `<|image_pad|>` is 6 (the config says 4)."""
    return tiny_qwen2_vl.build_qwen2_vl_tester(tmp_path_factory.mktemp("mismatch"), image_token_matches=False)


def test_image_token_not_the_processors_is_refused_at_load_and_exits_2_with_one_line(mismatched_folder, tmp_path, capsys):
    check_refused_at_load(mismatched_folder, MISMATCH, capsys, tmp_path)
    image, mask = write_scene(tmp_path, LANDSCAPE, BOX)
    process = subprocess.run([sys.executable, "-m", "hi_core", *score_argv(mismatched_folder, image, mask)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 2 and MISMATCH in process.stderr
    assert process.stderr.strip().count("\n") == 0 and "Traceback" not in process.stderr


def test_sequence_checks_name_what_was_expected_and_found(qwen):
    """A sequence whose image tokens do not fill the grid as one run is an InputError, before any forward."""
    loaded, _, case = qwen
    image, _, _ = two_scenes(LANDSCAPE, (0, 0, 10, 10))
    tensors = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT).tensors
    image_token_id = int(loaded.model.config.image_token_id)
    cells = case.landscape_grid[0] * case.landscape_grid[1]
    positions = torch.nonzero(tensors["input_ids"][0] == image_token_id).reshape(-1)

    missing = dict(tensors, input_ids=tensors["input_ids"].clone())
    missing["input_ids"][0, positions[-1]] = 0
    with pytest.raises(InputError, match=f"expected {cells} image tokens \\(id {image_token_id}\\) .* found {cells - 1}"):
        loaded.adapter.image_layout(loaded.model, missing)

    split = dict(tensors, input_ids=tensors["input_ids"].clone())
    split["input_ids"][0, positions[-1]] = 0
    split["input_ids"][0, -1] = image_token_id
    with pytest.raises(InputError, match=f"as one run, found them spread over positions {int(positions[0])}.."):
        loaded.adapter.image_layout(loaded.model, split)

    two_images = dict(tensors, image_grid_thw=tensors["image_grid_thw"].repeat(2, 1))
    with pytest.raises(InputError, match="expected one image in the processor's image_grid_thw, found 2"):
        loaded.adapter.image_layout(loaded.model, two_images)


def test_processor_without_video_leaves_transformers_class_untouched(qwen):
    """Without torchvision the processor is built with no video processor through a subclass, never by patching
    transformers' class (another thread building a processor at the same time would see the patch)."""
    loaded, _, _ = qwen
    processor_class = type(loaded.processor).__mro__[1]
    assert type(loaded.processor).__name__ == processor_class.__name__ and processor_class.__name__.endswith("VLProcessor")
    assert "check_argument_for_proper_class" not in processor_class.__dict__
    assert loaded.processor.video_processor is None
