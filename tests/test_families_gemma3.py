"""Gemma 3 adapter: `<start_of_image>` + n soft tokens + `<end_of_image>`, a square grid pooled by
the projector, the squash resize, image tokens attending to each other both ways, pan and scan off.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hi_core.model.capture import capture_attention
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.maps import run_forward

from .family_checks import (
    BATCH_IMAGES,
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
from .oracles import eager_rows
from .tiny_gemma3 import TOKENS, build_gemma3

SIZE = (140, 70)  # (width, height): squashed to 56 x 56, x by 0.4 and y by 0.8
BOX = (80, 10, 120, 40)
SIDE = 7  # sqrt(49); a cell is 2 x 2 patches of 4 px = 8 px


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return build_gemma3(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def gemma3(gemma3_dir):
    return load_model(LoadConfig(model=str(gemma3_dir), device="cpu"))


@pytest.fixture(scope="module")
def inputs(gemma3):
    return build_inputs(gemma3.adapter, gemma3.model, gemma3.processor, two_scenes(SIZE, BOX)[0], PROMPT, TEXT)


def test_gemma3_capture_equals_eager(gemma3, gemma3_dir):
    check_capture_equals_eager(gemma3, gemma3_dir, two_scenes(SIZE, BOX)[0])


def test_gemma3_grid_follows_the_squash_resize_and_the_pooling(gemma3):
    # 140x70 -> 56x56: x * 0.4, y * 0.8; 8-px cells. Box x 80..120 -> 32..48 -> cols 4-5;
    # y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns: not transposable.
    cells = check_region_lands_on_its_cells(gemma3, SIZE, BOX)
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 4:6] = True
    np.testing.assert_array_equal(cells, expected)


def test_gemma3_image_tokens_between_start_and_end_of_image(gemma3, inputs):
    ids = inputs.tensors["input_ids"][0]
    tokenizer = gemma3.processor.tokenizer
    soft = np.flatnonzero((ids == gemma3.model.config.image_token_id).numpy())
    assert soft.size == TOKENS == gemma3.processor.image_seq_length
    np.testing.assert_array_equal(soft, np.arange(soft[0], soft[0] + TOKENS))  # one contiguous run
    np.testing.assert_array_equal(inputs.layout.positions, soft.reshape(SIDE, SIDE))  # row-major
    assert inputs.layout.view == "image" and inputs.layout.valid.all()
    assert tokenizer.convert_ids_to_tokens(int(ids[soft[0] - 1])) == "<start_of_image>"
    assert tokenizer.convert_ids_to_tokens(int(ids[soft[-1] + 1])) == "<end_of_image>"
    token_types = inputs.tensors["token_type_ids"][0].numpy()
    np.testing.assert_array_equal(np.flatnonzero(token_types), soft)  # image tokens only, response 0
    assert "num_crops" not in inputs.tensors


def test_gemma3_image_tokens_attend_to_each_other_both_ways(gemma3, gemma3_dir, inputs):
    """The model's own mask (eager) lets the first image token see the last one, but no text after the
    image; the sliding layer limits only the past. The capture reproduces rows queried inside the image."""
    positions = inputs.layout.positions.reshape(-1)
    first, last = int(positions[0]), int(positions[-1])
    total = int(inputs.tensors["input_ids"].shape[1])
    attention = eager_rows(str(gemma3_dir), inputs, np.array([first, last]), np.arange(total))  # (L, H, 2, T)
    for layer in (0, 1):  # sliding and full: the first image token sees its whole image, no text after it
        assert (attention[layer, :, 0, : last + 1] > 0).all() and (attention[layer, :, 0, last + 1 :] == 0).all()
    # The last image token: every earlier token in the full layer, the 16-token window in the sliding one.
    assert (attention[1, :, 1, : last + 1] > 0).all()
    assert (attention[0, :, 1, last - 15 : last + 1] > 0).all() and (attention[0, :, 1, : last - 15] == 0).all()
    queries = np.array([first, first + 3, last, inputs.prefix_length])
    with capture_attention(gemma3.model, gemma3.adapter, queries, positions) as cache:
        run_forward(gemma3, inputs.tensors)
    expected = eager_rows(str(gemma3_dir), inputs, queries, positions)
    np.testing.assert_allclose(cache.stacked()[:, 0].numpy(), expected, atol=1e-5)


def test_gemma3_pan_and_scan_crops_are_never_scored(gemma3):
    """A processor with pan and scan on by default: the scored sequence is the main view alone."""
    processor = copy.deepcopy(gemma3.processor)
    # The processor's own defaults (lowest priority, below call arguments), as a saved config sets them.
    processor.images_kwargs = {**processor.images_kwargs, "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8}
    wide = two_scenes((168, 40), (10, 5, 60, 30))[0]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True, tokenize=False)
    with_crops = processor(text=text, images=[wide], return_tensors="pt")
    image_token = gemma3.model.config.image_token_id
    assert int((with_crops["input_ids"] == image_token).sum()) > TOKENS  # the processor would add crops
    scored = build_inputs(gemma3.adapter, gemma3.model, processor, wide, PROMPT, TEXT)
    plain = build_inputs(gemma3.adapter, gemma3.model, gemma3.processor, wide, PROMPT, TEXT)
    assert int((scored.tensors["input_ids"] == image_token).sum()) == TOKENS
    for key in ("input_ids", "token_type_ids", "pixel_values"):
        torch.testing.assert_close(scored.tensors[key], plain.tensors[key])


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_gemma3_batched_equals_one_by_one(gemma3, queries):
    check_batched_equals_one_by_one(gemma3, *BATCH_IMAGES, queries)


def test_gemma3_lora_targets_only_language_model_layers(gemma3):
    check_lora_targets_only_language_model(gemma3, (0, 1))


def test_gemma3_folder_scores_from_the_command_line(gemma3_dir, tmp_path, capsys):
    check_cli_scores_folder(gemma3_dir, tmp_path, capsys, SIZE, BOX, "gemma3", (SIDE, SIDE), text="a red square",
                            num_layers=2, num_heads=4)


def test_gemma3_tester_config_with_a_square_token_count_captures_eager(tmp_path):
    """transformers' own tester config (2 x 2 image tokens instead of its 2): captured rows equal eager."""
    folder = build_gemma3(tmp_path, tester=True, mm_tokens_per_image=4)
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    check_capture_equals_eager(loaded, folder, two_scenes(SIZE, BOX)[0])
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, two_scenes(SIZE, BOX)[0], PROMPT, TEXT)
    assert inputs.layout.grid == (2, 2)


def test_gemma3_exact_tester_config_is_refused_at_load(tmp_path, capsys):
    """The tester's mm_tokens_per_image 2 pools to 1 x 1 = 1 token while its processor expands 2:
    refused when loaded, in one line naming both counts, not in the middle of a forward."""
    folder = build_gemma3(tmp_path / "model", tester=True)
    check_refused_at_load(folder, ("expands each image to 2 image tokens, but the projector makes 1 (1x1", "mm_tokens_per_image=2"),
                          capsys, tmp_path)
