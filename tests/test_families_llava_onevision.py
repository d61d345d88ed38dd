"""LLaVA-OneVision adapter: the scored tokens are the base view (whole image squashed to a square).

Independent oracle for "base view": the vision tower and projector run on the base view's pixels
alone (`pixel_values[:, 0]`) give exactly the language model's input embeddings at the scored
positions, row-major; changing only the tiles' pixels leaves them untouched. The folders hold no
video processor (it needs torchvision), so every load also goes through the loader's fallback.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model

from . import tiny_llava_onevision
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_lora_targets_only_language_model,
    check_refused_at_load,
    check_region_lands_on_its_cells,
    check_scores_exactly_the_base_view,
    random_images,
    two_scenes,
)

SIZE = (120, 60)  # (width, height): base view squashed to 48 x 48, x by 0.4 and y by 0.8
BOX = (60, 10, 100, 40)
SIDE = 6  # 48 / 8-px patches


@pytest.fixture(scope="module")
def onevision_dir(tmp_path_factory):
    return tiny_llava_onevision.build_llava_onevision(tmp_path_factory.mktemp("llava_onevision"))


@pytest.fixture(scope="module")
def onevision(onevision_dir):
    loaded = load_model(LoadConfig(model=str(onevision_dir), device="cpu"))
    assert loaded.family == "llava_onevision" and loaded.processor.video_processor is None
    return loaded


def test_capture_equals_eager(onevision, onevision_dir):
    image, _, _ = two_scenes(SIZE, BOX)
    check_capture_equals_eager(onevision, onevision_dir, image)


def test_grid_follows_the_base_view_squash(onevision):
    # Base view: 120x60 -> 48x48, x * 0.4 and y * 0.8, 8-px cells. Box x 60..100 -> 24..40 ->
    # cols 3-4; y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns.
    cells = check_region_lands_on_its_cells(onevision, SIZE, BOX, view="global")
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 3:5] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [(60, 120), (120, 60)])
def test_scores_exactly_the_base_view(onevision, size):
    # SigLIP: no CLS token, every vision token is kept.
    check_scores_exactly_the_base_view(onevision, size, SIDE, cls_tokens=0)


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(onevision, queries):
    # Sizes with 2 and 4 tiles (zero-padded views), texts of different lengths (padded tokens).
    images = random_images([(120, 60), (64, 64), (60, 120)])
    items = check_batched_equals_one_by_one(onevision, images, [TEXT, "a red square", "a blue circle"], [None, "square", None], queries)
    assert len({item.tensors["pixel_values"].shape[1] for item in items}) > 1


def test_lora_wraps_only_the_language_models_attention(onevision):
    check_lora_targets_only_language_model(onevision, (1,))


def test_cli_scores_the_saved_folder(onevision_dir, tmp_path, capsys):
    check_cli_scores_folder(onevision_dir, tmp_path, capsys, SIZE, BOX, "llava_onevision", (SIDE, SIDE),
                            num_layers=2, num_heads=4, object_patches=6, extra=("--view", "global"))


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("num_image_tokens", 25, "base-view tokens (6x6 of the vision tower, processor `num_image_tokens`): the model expects 36, the processor has 25"),
        ("vision_feature_select_strategy", "default", "vision_feature_select_strategy: the model expects 'full', the processor has 'default'"),
        ("vision_aspect_ratio", "anyres_max_4", "vision_aspect_ratio (config, processor): the model expects 'anyres_max_9', the processor has 'anyres_max_4'"),
    ],
)
def test_a_processor_that_disagrees_with_the_model_is_refused_at_load(onevision_dir, tmp_path, capsys, setting, value, message):
    folder = tmp_path / "model"
    shutil.copytree(onevision_dir, folder)
    settings = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps(dict(settings, **{setting: value})))
    check_refused_at_load(folder, message, capsys, tmp_path)


def test_image_grid_pinpoints_of_config_and_processor_must_agree(onevision_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(onevision_dir, folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings["image_grid_pinpoints"] = [[48, 96], [96, 48]]
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match=r"image_grid_pinpoints \(config, image processor\): the model expects "
                                         r"\[\[48, 96\], \[96, 48\], \[96, 96\]\], the processor has \[\[48, 96\], \[96, 48\]\]"):
        load_model(LoadConfig(model=str(folder), device="cpu"))


def test_the_transformers_model_testers_config(tmp_path_factory):
    """Settings nobody here chose: 16-px views of 8-px patches (a 2 x 2 base view), one 16x16 pinpoint,
    a Qwen2 with as many KV heads as heads and a 99-token vocabulary."""
    folder = tiny_llava_onevision.build_tester_llava_onevision(tmp_path_factory.mktemp("tester"))
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    image, _, _ = two_scenes((50, 30), (25, 0, 50, 15))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT, "global")
    image_positions = np.flatnonzero(inputs.tensors["input_ids"][0].numpy() == loaded.model.config.image_token_id)
    assert inputs.layout.grid == (2, 2) and inputs.layout.view == "base view"
    np.testing.assert_array_equal(inputs.layout.positions.reshape(-1), image_positions[:4])
    assert image_positions.size > 4  # the tile follows
    check_capture_equals_eager(loaded, folder, image)
