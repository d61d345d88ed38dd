"""Qwen2-VL / Qwen2.5-VL adapter: dynamic aspect-preserving grid, 2x2-merged tokens, M-RoPE.

Tiny models (tests/tiny_qwen2_vl.py): one image token = 16x16 px of the smart-resized image.
Images used here:
- 130x90 (landscape) -> smart resize to multiples of 16: round(90/16)=6 -> 96, round(130/16)=8
  -> 128, 96*128 = 12288 within [64*64, 128*128] -> grid 6 rows x 8 cols;
- 70x110 (portrait) -> 64 x 112 -> grid 7 rows x 4 cols.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.maps import run_forward
from hi_core.inputs import build_inputs
from hi_core.loading import LoadConfig, load_model

from . import tiny_qwen2_vl
from .family_checks import PROMPT, TEXT, check_capture_equals_eager, check_region_lands_on_its_cells, two_scenes

LANDSCAPE, LANDSCAPE_GRID = (130, 90), (6, 8)
PORTRAIT, PORTRAIT_GRID = (70, 110), (7, 4)
BOX = (68, 12, 119, 42)  # x0, y0, x1, y1 in the landscape image
BUILDERS = {"qwen2_vl": tiny_qwen2_vl.build_qwen2_vl, "qwen2_5_vl": tiny_qwen2_vl.build_qwen2_5_vl}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def qwen(request, tmp_path_factory):
    """(loaded model, folder) for each model type, loaded through hi_core.loading (no torchvision)."""
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    assert loaded.model.config.model_type == request.param and loaded.family == "qwen2_vl"
    return loaded, folder


def test_capture_equals_eager(qwen):
    loaded, folder = qwen
    image, _, _ = two_scenes(PORTRAIT, (10, 20, 40, 60))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    assert inputs.layout.grid == PORTRAIT_GRID
    check_capture_equals_eager(loaded, folder, image)


def test_off_centre_region_lands_on_its_cells(qwen):
    loaded, _ = qwen
    # Box x 68..119, y 12..42 of the 130x90 image, scaled by 128/130 (x) and 96/90 (y) to
    # x 66.95..117.17 -> col 4 (64..80) 0.82, cols 5-6 full, col 7 (112..128) 0.32;
    # y 12.8..44.8    -> row 0 (0..16) 0.20, row 1 full, row 2 (32..48) 0.80.
    # A cell's coverage is the product (corner row 2, col 4: 0.65 >= 0.5; row 1, col 7: 0.32), so
    # rows 1-2 x cols 4-6: a wide box at the top right (a transposed or flipped grid fails).
    cells = check_region_lands_on_its_cells(loaded, LANDSCAPE, BOX)
    expected = np.zeros(LANDSCAPE_GRID, dtype=bool)
    expected[1:3, 4:7] = True
    np.testing.assert_array_equal(cells, expected)


def test_layout_matches_the_models_3d_rope_positions(qwen):
    """The model's own M-RoPE index gives each image token its (row, col): ours must agree."""
    loaded, _ = qwen
    image, _, _ = two_scenes(LANDSCAPE, (0, 0, 10, 10))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    tensors = inputs.tensors
    positions = inputs.layout.positions
    assert positions.shape == LANDSCAPE_GRID
    rope, _ = loaded.model.model.get_rope_index(
        tensors["input_ids"],
        mm_token_type_ids=tensors["mm_token_type_ids"],
        image_grid_thw=tensors["image_grid_thw"],
        attention_mask=tensors["attention_mask"],
    )
    temporal, height, width = (rope[axis, 0].numpy() for axis in range(3))
    # Image tokens: (t, h, w) = start + (0, row, col); so h - t is the row and w - t the column.
    rows, cols = np.indices(LANDSCAPE_GRID)
    np.testing.assert_array_equal(height[positions] - temporal[positions], rows)
    np.testing.assert_array_equal(width[positions] - temporal[positions], cols)
    # Every other token is text, with equal indices on the three axes.
    text = np.setdiff1d(np.arange(temporal.size), positions.reshape(-1))
    assert (temporal[text] == height[text]).all() and (temporal[text] == width[text]).all()

    # And the forward pass really uses these positions (response tokens included).
    used = []
    hook = loaded.model.model.language_model.rotary_emb.register_forward_pre_hook(
        lambda module, args: used.append(args[1].detach().clone())
    )
    try:
        run_forward(loaded, tensors)
    finally:
        hook.remove()
    torch.testing.assert_close(used[0], rope)


def test_response_extends_every_per_token_tensor(qwen):
    loaded, _ = qwen
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
    num_layers, num_heads = 2, 4
    assert analysis.grid == LANDSCAPE_GRID and analysis.family == "qwen2_vl"
    assert analysis.maps.shape == (num_layers, num_heads, *LANDSCAPE_GRID)
    assert analysis.hi.shape == (num_layers, num_heads) and analysis.response_tokens == len(response)
    assert np.isfinite(analysis.maps).all() and (analysis.maps >= 0).all()
    assert (analysis.maps.sum(axis=(2, 3)) <= 1 + 1e-5).all() and analysis.maps.std() > 0
    assert analysis.mask.object_patches.sum() == 6
