"""InternVL adapter: thumbnail / single-tile tokens, squashed-square geometry, capture, batching, LoRA,
load-time refusals, a Hub-like folder through the loader and the CLI.

Two tiny models: ours (48-px tiles, 6 x 6 tokens each) and one with the config of transformers'
own InternVL model tester (64-px tiles, 8 x 8 tokens, a 4-layer Qwen2 with a 99-token vocabulary).
A 120x60 image is split (2 x 1 tiles + thumbnail); a 72x60 one is a single tile.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.base.errors import InputError
from hi_core.families import ImageLayout, adapter_for
from hi_core.families.internvl import InternVLAdapter
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

from . import tiny_internvl
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_lora_targets_only_language_model,
    check_refused_at_load,
    check_region_lands_on_its_cells,
    two_scenes,
)
from .oracles import embedding_change

SPLIT, SINGLE = (120, 60), (72, 60)  # (width, height): 2 x 1 tiles + thumbnail; one tile
SIDE = tiny_internvl.TOKENS_PER_SIDE  # 6
TESTER_SIDE = tiny_internvl.TESTER_TOKENS_PER_SIDE  # 8


@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    return tiny_internvl.build_internvl(tmp_path_factory.mktemp("internvl"))


@pytest.fixture(scope="module")
def internvl(internvl_dir):
    return load_model(LoadConfig(model=str(internvl_dir), device="cpu"))


@pytest.fixture(scope="module")
def tester_dir(tmp_path_factory):
    return tiny_internvl.build_internvl_tester(tmp_path_factory.mktemp("internvl_tester"))


@pytest.fixture(scope="module")
def tester(tester_dir):
    return load_model(LoadConfig(model=str(tester_dir), device="cpu"))


@pytest.fixture(scope="module", params=["ours", "tester"])
def case(request, internvl_dir, internvl, tester_dir, tester):
    return (internvl_dir, internvl, SIDE) if request.param == "ours" else (tester_dir, tester, TESTER_SIDE)


def inputs_for(loaded, image, text=TEXT, view="global"):
    return build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, text, view)


def test_hub_folder_loads_without_torchvision(internvl_dir, internvl):
    # Why the loader needs its fallback: AutoProcessor cannot build InternVL's video processor.
    with pytest.raises(ValueError, match="torchvision"):
        AutoProcessor.from_pretrained(str(internvl_dir))
    assert "torchvision" not in sys.modules
    processor = internvl.processor
    assert type(processor).__name__ == "InternVLProcessor" and processor.video_processor is None
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"  # no torchvision backend
    assert processor.image_seq_length == SIDE * SIDE  # processor_config.json honoured
    assert type(internvl.adapter) is InternVLAdapter and type(adapter_for("internvl")) is InternVLAdapter
    layers = internvl.adapter.decoder_layers(internvl.model)
    assert layers is internvl.model.model.language_model.layers and len(layers) == 2
    assert internvl.adapter.decoder_layers_path(internvl.model) == "model.language_model.layers"


@pytest.mark.parametrize("size", [SPLIT, SINGLE], ids=["split", "single"])
def test_capture_equals_eager(case, size):
    folder, loaded, _ = case
    image, _, _ = two_scenes(size, (20, 30, 60, 50))
    check_capture_equals_eager(loaded, folder, image)


def test_scored_tokens_are_the_thumbnail_or_the_single_tile(case):
    _, loaded, side = case
    tokenizer = loaded.processor.tokenizer
    for size, frames, view in ((SPLIT, 3, "global view"), (SINGLE, 1, "image")):
        image, _, _ = two_scenes(size, (20, 30, 60, 50))
        inputs = inputs_for(loaded, image)
        layout = inputs.layout
        ids = inputs.tensors["input_ids"][0]
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        assert inputs.tensors["pixel_values"].shape[0] == frames
        assert layout.view == view and layout.grid == (side, side) and layout.valid.all()
        # `<img>`, frames x side^2 `<IMG_CONTEXT>` with nothing between tiles, `</img>`; the scored
        # grid is the last side^2 of them, row-major.
        start, end = tokens.index("<img>") + 1, tokens.index("</img>")
        assert end - start == frames * side * side and set(tokens[start:end]) == {"<IMG_CONTEXT>"}
        np.testing.assert_array_equal(layout.positions.reshape(-1), np.arange(end - side * side, end))

        # Oracle: changing only the last frame moves exactly the scored tokens' input embeddings;
        # changing the first tile (when split) moves none of them.
        everything = dataclasses.replace(
            inputs, layout=ImageLayout.cells(np.arange(ids.numel())[None], np.ones((1, ids.numel()), bool))
        )
        is_scored = np.zeros(ids.numel(), dtype=bool)
        is_scored[layout.positions.reshape(-1)] = True
        for frame in ([frames - 1, 0] if frames > 1 else [0]):
            pixels = inputs.tensors["pixel_values"].clone()
            pixels[frame] = torch.flip(pixels[frame], dims=[-1])
            changed = dataclasses.replace(everything, tensors={**inputs.tensors, "pixel_values": pixels})
            moved = embedding_change(loaded, everything, changed)[0] > 1e-4
            if frame == frames - 1:
                np.testing.assert_array_equal(moved, is_scored)
            else:
                first_tile = np.zeros(ids.numel(), dtype=bool)
                first_tile[start : start + side * side] = True
                assert moved.sum() >= side * side // 2 and not (moved & ~first_tile).any()


def expected_cells(side: int, rows: range, cols: range) -> np.ndarray:
    """(side, side) bool, True on the given rows and columns."""
    expected = np.zeros((side, side), dtype=bool)
    expected[rows.start : rows.stop, cols.start : cols.stop] = True
    return expected


# (model, image size, box, rows, cols): the scored view is the whole image squashed to one tile,
# so a cell is width / side px wide and height / side px tall.
# - ours, 120x60 split: cells 20 x 10 px; x 20..80, y 30..50 -> cols 1..3, rows 3..4 (a letterbox,
#   48x24 + padding, would put it on rows 1..2; a transposed grid on rows 1..3, cols 3..4);
# - ours, 72x60 single tile: cells 12 x 10 px; x 36..60, y 10..40 -> cols 3..4, rows 1..3;
# - tester, 120x60 split: cells 15 x 7.5 px; x 15..75, y 30..45 -> cols 1..4, rows 4..5.
REGIONS = [
    ("ours", SPLIT, (20, 30, 80, 50), range(3, 5), range(1, 4)),
    ("ours", SINGLE, (36, 10, 60, 40), range(1, 4), range(3, 5)),
    ("tester", SPLIT, (15, 30, 75, 45), range(4, 6), range(1, 5)),
]


@pytest.mark.parametrize("model, size, box, rows, cols", REGIONS, ids=["ours-split", "ours-single", "tester-split"])
def test_region_lands_on_its_cells_of_the_squashed_view(model, size, box, rows, cols, internvl, tester):
    loaded, side = (internvl, SIDE) if model == "ours" else (tester, TESTER_SIDE)
    cells = check_region_lands_on_its_cells(loaded, size, box, view="global")
    expected = expected_cells(side, rows, cols)
    assert len(rows) > 1 and len(cols) > 1 and len(rows) != len(cols)  # non-square in cells
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(internvl, queries):
    # Different tile counts (3, 1, 4 frames) and response lengths in one batch.
    images = [two_scenes(size, (10, 10, 40, 40), seed)[0] for seed, size in enumerate([SPLIT, SINGLE, (60, 200)])]
    texts, phrases = ["a red square", TEXT, "a blue circle at the center"], [None, "blue circle", None]
    items = check_batched_equals_one_by_one(internvl, images, texts, phrases, queries, layers_heads=(2, 4))
    assert [int(item.tensors["pixel_values"].shape[0]) for item in items] == [3, 1, 4]
    # every image token: the stitched tiles (2 x 1 and 1 x 3 of them), the single tile alone
    assert [item.layout.grid for item in items] == [(SIDE, 2 * SIDE), (SIDE, SIDE), (3 * SIDE, SIDE)]


def test_lora_targets_only_language_model_layers(internvl):
    check_lora_targets_only_language_model(internvl, (1,))
    # The vision tower has q/k/v projections in its layer 1 too: never wrapped.
    assert hasattr(internvl.model.model.vision_tower.encoder.layer[0].attention, "q_proj")


def test_cli_scores_a_hub_like_folder(internvl_dir, tmp_path, capsys):
    check_cli_scores_folder(internvl_dir, tmp_path, capsys, SPLIT, (20, 30, 80, 50), "internvl", (SIDE, SIDE), to_file=True,
                            extra=("--view", "global"),
                            num_layers=2, num_heads=4, object_patches=6)


# --- refusals: InputError naming what was expected and what was found, never a crash mid-forward ----

def _config_change(config, change):
    if change == "strategy":
        config.vision_feature_select_strategy = "full"
    elif change == "feature layers":
        config.vision_feature_layer = [-1, -2]
    elif change == "ratio":
        config.downsample_ratio = 0.3
    elif change == "tile":
        config.vision_config.image_size = (50, 50)
    elif change == "non-square":
        config.vision_config.image_size = (48, 64)
    elif change == "token id":
        config.image_token_id = 7


REFUSED_CONFIGS = [
    ("strategy", "'default'.*'full'"),
    ("feature layers", r"vision_feature_layer is \[-1, -2\]"),
    ("ratio", "downsample_ratio = 1/k.*0.3"),
    ("tile", "50 px must be a multiple of patch_size 4 x 2"),
    ("non-square", r"square vision image_size.*\(48, 64\)"),
    ("token id", "'<IMG_CONTEXT>' has id 4, but the model's image_token_id is 7"),
]


@pytest.mark.parametrize("change, message", REFUSED_CONFIGS, ids=[c for c, _ in REFUSED_CONFIGS])
def test_check_loaded_refuses_a_config_the_forward_would_reject(internvl, change, message):
    internvl.adapter.check_loaded(internvl.model, internvl.processor)  # the real one passes
    config = copy.deepcopy(internvl.model.config)
    _config_change(config, change)
    with pytest.raises(InputError, match=message):
        internvl.adapter.check_loaded(SimpleNamespace(config=config), internvl.processor)


@pytest.mark.parametrize(
    "file, key, value, message",
    [
        ("processor_config.json", "image_seq_length", 16, "writes 16 image tokens per tile but the model makes 36"),
        ("preprocessor_config.json", "size", {"height": 32, "width": 32}, "makes 32x32 px tiles but the vision tower takes 48x48"),
    ],
    ids=["image_seq_length", "tile size"],
)
def test_a_mismatched_folder_is_refused_at_load_and_the_cli_exits_2(internvl_dir, tmp_path, capsys, file, key, value, message):
    folder = tmp_path / "model"
    shutil.copytree(internvl_dir, folder)
    settings = json.loads((folder / file).read_text())
    settings[key] = value
    (folder / file).write_text(json.dumps(settings))
    check_refused_at_load(folder, message, capsys, tmp_path)


@pytest.mark.parametrize("prompt, text, message", [
    (PROMPT, "a <IMG_CONTEXT> square", "the description contains '<IMG_CONTEXT>', a special token"),
    ("describe <IMG_CONTEXT> the image", TEXT, "the prompt contains '<IMG_CONTEXT>', a special token"),
], ids=["in the description", "in the prompt"])
def test_an_image_token_typed_by_the_user_is_an_input_error(internvl, prompt, text, message):
    image, _, _ = two_scenes(SPLIT, (20, 30, 60, 50))
    with pytest.raises(InputError, match=message):
        build_inputs(internvl.adapter, internvl.model, internvl.processor, image, prompt, text)


def test_combined_maps_are_the_tiles_plus_the_thumbnail_spread_over_the_cells_it_covers(internvl):
    """Oracle: the tiles-only map plus the thumbnail's map upsampled by np.kron over the cols x rows tiles (the
    image processor's own choice of grid for the image's aspect), divided among the cells under each token."""
    image, _, mask = two_scenes(SPLIT, (20, 30, 80, 50))
    combined, tiles, thumbnail = (analyze_image(internvl, image, mask, TEXT, AnalysisConfig(view=view))
                                  for view in ("combined", "tiles", "global"))
    cols, rows = internvl.adapter.tile_grid(internvl.processor, SPLIT)
    assert rows * cols > 1 and combined.grid == tiles.grid == (rows * SIDE, cols * SIDE) and thumbnail.grid == (SIDE, SIDE)
    spread = np.kron(thumbnail.maps, np.ones((rows, cols), np.float32)) / (rows * cols)
    np.testing.assert_allclose(combined.maps, tiles.maps + spread, rtol=1e-5, atol=1e-8)
    assert combined.view == f"{rows * cols} tiles + global view"
