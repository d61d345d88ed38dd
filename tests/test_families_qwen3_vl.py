"""Qwen3-VL adapter (qwen3_vl, qwen3_vl_moe): Qwen2-VL's dynamic grid of `<|image_pad|>` tokens.

Three tiny models (tests/tiny_qwen3_vl.py), loaded from Hub-like folders through
`hi_core.model.loading` (no torchvision): dense and MoE with 8-px patches merged 2x2, and the exact
config of transformers' own Qwen3-VL tester (16-px patches, merge 1). In all three one image
token covers 16x16 px of the smart-resized image:
- 130x90 (landscape) -> multiples of 16: round(90/16)=6 -> 96, round(130/16)=8 -> 128,
  96*128 = 12288 within [64*64, 128*128] -> grid 6 rows x 8 cols;
- 70x110 (portrait) -> 64 x 112 -> grid 7 rows x 4 cols.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

from . import tiny_qwen3_vl
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_grid_matches_rope,
    check_lora_targets_only_language_model,
    check_region_lands_on_its_cells,
    random_image,
    two_scenes,
)

LANDSCAPE, LANDSCAPE_GRID = (130, 90), (6, 8)
PORTRAIT, PORTRAIT_GRID = (70, 110), (7, 4)
BOX = (68, 12, 119, 42)  # x0, y0, x1, y1 in the landscape image
BUILDERS = {
    "qwen3_vl": tiny_qwen3_vl.build_qwen3_vl,
    "qwen3_vl_moe": tiny_qwen3_vl.build_qwen3_vl_moe,
    "tester": tiny_qwen3_vl.build_qwen3_vl_tester,
}
MODEL_TYPES = {"qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl_moe", "tester": "qwen3_vl"}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def qwen3(request, tmp_path_factory):
    """(loaded model, folder) for each tiny model, loaded through hi_core.model.loading."""
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    return loaded, folder, request.param


def test_hub_folder_loads_as_qwen3_vl_without_torchvision(qwen3):
    loaded, _, name = qwen3
    assert importlib.util.find_spec("torchvision") is None
    assert loaded.model.config.model_type == MODEL_TYPES[name] and loaded.family == "qwen3_vl"
    assert type(loaded.processor).__name__ == "Qwen3VLProcessor" and loaded.processor.video_processor is None
    merge = loaded.model.config.vision_config.spatial_merge_size
    assert merge == (1 if name == "tester" else 2) and loaded.processor.image_processor.merge_size == merge


def test_capture_equals_eager(qwen3):
    loaded, folder, _ = qwen3
    image, _, _ = two_scenes(PORTRAIT, (10, 20, 40, 60))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    assert inputs.layout.grid == PORTRAIT_GRID
    check_capture_equals_eager(loaded, folder, image)


# The box of each model's region check and the cells it must land on, by hand (6x8 grid of 16 px):
# - 2x2-merged models, (68, 12, 119, 42): scaled by 128/130 (x) and 96/90 (y) to
#   x 66.95..117.17 -> col 4 (64..80) 0.82, cols 5-6 full, col 7 (112..128) 0.32;
#   y 12.8..44.8    -> row 0 (0..16) 0.20, row 1 full, row 2 (32..48) 0.80; a cell's coverage is
#   the product (corner row 2, col 4: 0.65 >= 0.5; row 1, col 7: 0.32), so rows 1-2 x cols 4-6.
# - the tester (one 16-px patch per token, whose embedding reacts to a sliver of a patch about as
#   much as to a whole one, so the box follows cell edges), (65, 15, 114, 45): x 64.0..112.25 ->
#   cols 4-6 full, col 7 0.02; y 16..48 -> rows 1-2 full: rows 1-2 x cols 4-6 again.
# Either way a wide box at the top right: a transposed or flipped grid fails.
REGIONS = {"qwen3_vl": BOX, "qwen3_vl_moe": BOX, "tester": (65, 15, 114, 45)}


def test_off_centre_region_lands_on_its_cells(qwen3):
    loaded, _, name = qwen3
    cells = check_region_lands_on_its_cells(loaded, LANDSCAPE, REGIONS[name])
    expected = np.zeros(LANDSCAPE_GRID, dtype=bool)
    expected[1:3, 4:7] = True
    np.testing.assert_array_equal(cells, expected)


def test_layout_matches_the_models_3d_rope_positions(qwen3):
    """The model's own M-RoPE index gives each image token its (row, col): ours must agree, and the
    forward pass uses exactly these positions."""
    loaded, _, _ = qwen3
    check_grid_matches_rope(loaded, LANDSCAPE, LANDSCAPE_GRID)


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(qwen3, queries):
    """Different grids (6x8, 7x4, 4x4) and response lengths in one batch: padding of tokens,
    of the patches and of the per-sequence rows and keys is exercised."""
    loaded, _, _ = qwen3
    images = [random_image(size, seed) for seed, size in enumerate([LANDSCAPE, PORTRAIT, (64, 64)])]
    texts, phrases = [TEXT, "a red square", "a blue circle at the center"], [None, None, "blue circle"]
    items = check_batched_equals_one_by_one(loaded, images, texts, phrases, queries, layers_heads=(2, 4))
    assert [item.layout.grid for item in items] == [LANDSCAPE_GRID, PORTRAIT_GRID, (4, 4)]


def test_lora_wraps_only_language_model_attention(qwen3):
    loaded, _, _ = qwen3
    check_lora_targets_only_language_model(loaded, (1,))


def test_cli_scores_the_hub_folder(qwen3, tmp_path, capsys):
    _, folder, _ = qwen3
    check_cli_scores_folder(folder, tmp_path, capsys, LANDSCAPE, BOX, "qwen3_vl", LANDSCAPE_GRID, to_file=True,
                            num_layers=2, num_heads=4, object_patches=6)


def test_patch_geometry_not_the_models_is_refused_at_load(tmp_path):
    """An image processor that merges 1x1 for a model that merges 2x2 would give four times the
    image tokens the model has features for: refused at load, naming both settings."""
    folder = tiny_qwen3_vl.build_qwen3_vl(tmp_path / "model")
    config_file = folder / "preprocessor_config.json"
    settings = json.loads(config_file.read_text())
    settings["merge_size"] = 1
    config_file.write_text(json.dumps(settings))
    with pytest.raises(InputError, match="merge_size is 1 but the vision tower's spatial_merge_size is 2"):
        load_model(LoadConfig(model=str(folder), device="cpu"))
