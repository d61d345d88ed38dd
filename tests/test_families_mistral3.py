"""Mistral 3 adapter (Pixtral layout): rows of [IMG] split by [IMG_BREAK], closed by [IMG_END].

Tiny models (tests/tiny_mistral3.py): one image token = 16 x 16 px of the resized image, which fits a
longest edge of 96 px and has each side rounded up to a multiple of 16. Images used here:
- 100x70 -> ratio 100/96: 96 x floor(67.2) = 67 -> rounded up to 96 x 80 -> grid 5 rows x 6 cols
  (x scaled by 0.96, y by 8/7: shrunk in x, enlarged in y);
- 150x40 (wide) -> ratio 150/96: 96 x floor(25.6) = 25 -> 96 x 32 -> grid 2 x 6 (x 0.64, y 0.8);
- 40x150 (tall) -> the transpose: 32 x 96 -> grid 6 x 2.
transformers' `PixtralProcessor` cannot be imported here (no torchvision), so its token expansion is
reimplemented below from its code (`replace_image_token`, `ProcessorMixin.__call__`) as the oracle
for ours, with the expectations of transformers' own processor tests.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.pixtral.image_processing_pil_pixtral import (
    PixtralImageProcessorPil,
    get_resize_output_image_size,
)

from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.pixtral_inputs import PixtralImageTextProcessor

from . import tiny_mistral3
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_lora_targets_only_language_model,
    check_refused_at_load,
    check_region_lands_on_its_cells,
    random_images,
    two_scenes,
)
from .tiny_models import word_tokenizer

SIZE, GRID, BOX = (100, 70), (5, 6), (55, 10, 95, 42)


@pytest.fixture(scope="module")
def mistral3_dir(tmp_path_factory):
    return tiny_mistral3.build_mistral3(tmp_path_factory.mktemp("mistral3"))


@pytest.fixture(scope="module")
def mistral3(mistral3_dir):
    loaded = load_model(LoadConfig(model=str(mistral3_dir), device="cpu"))
    assert loaded.family == "mistral3" and isinstance(loaded.processor, PixtralImageTextProcessor)
    return loaded


def pixtral_expansion(text: str, image_size: tuple[int, int], processor) -> str:
    """What transformers' `PixtralProcessor` makes of `text` for one image resized to (height, width):
    `replace_image_token` (5.24) for the placeholder, `get_text_with_replacements` to put it in."""
    patch_size = processor.patch_size * processor.spatial_merge_size
    height, width = image_size
    num_height_tokens = height // patch_size
    num_width_tokens = width // patch_size
    replace_tokens = [[processor.image_token] * num_width_tokens + [processor.image_break_token]] * num_height_tokens
    replace_tokens = [item for sublist in replace_tokens for item in sublist]
    replace_tokens[-1] = processor.image_end_token
    start = text.index(processor.image_token)
    return text[:start] + "".join(replace_tokens) + text[start + len(processor.image_token):]


def test_capture_equals_eager(mistral3, mistral3_dir):
    image, _, _ = two_scenes(SIZE, BOX)
    inputs = build_inputs(mistral3.adapter, mistral3.model, mistral3.processor, image, PROMPT, TEXT)
    assert inputs.layout.grid == GRID
    check_capture_equals_eager(mistral3, mistral3_dir, image)


@pytest.mark.parametrize(
    "size, grid, box, rows, cols",
    [
        # x 55..95 -> 52.8..91.2: col 3 (48..64) 0.70, col 4 full, col 5 (80..96) 0.70;
        # y 10..42 -> 11.4..48: row 0 (0..16) 0.29, rows 1-2 full. Off-centre, 2 rows by 3 columns.
        (SIZE, GRID, BOX, slice(1, 3), slice(3, 6)),
        # wide: x 80..130 -> 51.2..83.2: col 3 0.80, col 4 full, col 5 0.20; y 0..20 -> 0..16: row 0.
        ((150, 40), (2, 6), (80, 0, 130, 20), slice(0, 1), slice(3, 5)),
        # tall: the transpose: x 0..20 -> col 0; y 80..130 -> rows 3-4 (a transposed grid fails).
        ((40, 150), (6, 2), (0, 80, 20, 130), slice(3, 5), slice(0, 1)),
    ],
)
def test_region_lands_on_its_cells(mistral3, size, grid, box, rows, cols):
    cells = check_region_lands_on_its_cells(mistral3, size, box)
    expected = np.zeros(grid, dtype=bool)
    expected[rows, cols] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [SIZE, (150, 40), (40, 150), (20, 33)])
def test_token_expansion_is_pixtral_processors(mistral3, size):
    processor = mistral3.processor
    image, _, _ = two_scenes(size, (0, 0, 5, 5))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}], add_generation_prompt=True, tokenize=False
    )
    ours = processor(text=text, images=[image], return_tensors="pt")
    # transformers' resize (patch = patch x merge, as `PixtralProcessor._process_images` passes it).
    resized = get_resize_output_image_size(np.zeros((size[1], size[0], 3)), size=(96, 96), patch_size=(16, 16))
    assert tuple(ours["image_sizes"][0].tolist()) == resized == tuple(ours["pixel_values"].shape[-2:])
    expected = processor.tokenizer(pixtral_expansion(text, resized, processor))["input_ids"]
    assert ours["input_ids"][0].tolist() == expected
    # `_get_num_multimodal_tokens`: (cols + 1) x rows tokens for the image, break and end included.
    image_tokens = {processor.image_token_id, processor.image_break_token_id, processor.image_end_token_id}
    assert sum(token in image_tokens for token in expected) == (resized[1] // 16 + 1) * (resized[0] // 16)


def test_expansion_matches_transformers_own_processor_tests():
    """tests/models/pixtral/test_processing_pixtral.py (transformers): pixtral-12b's processor (16-px
    patches, no merge), a 1300x876 image under a longest edge of 30 -> 32 x 32 px,
    "[IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END]"; a 316x500 image under 1024 -> 640 [IMG] tokens."""
    tokenizer = word_tokenizer(tiny_mistral3.SPECIAL)
    small = PixtralImageTextProcessor(PixtralImageProcessorPil(size={"longest_edge": 30}), tokenizer, patch_size=16)
    out = small(text="user : [IMG] what is in this image ?", images=[Image.new("RGB", (1300, 876))])
    assert tuple(out["pixel_values"].shape) == (1, 3, 32, 32)
    expected = tokenizer("user : [IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END] what is in this image ?")["input_ids"]
    assert out["input_ids"][0].tolist() == expected
    large = PixtralImageTextProcessor(PixtralImageProcessorPil(size={"longest_edge": 1024}), tokenizer, patch_size=16)
    out = large(text="[IMG] what is in this image ?", images=[Image.new("RGB", (316, 500))])
    assert int((out["input_ids"] == large.image_token_id).sum()) == 640


def test_a_broken_image_run_is_an_input_error(mistral3):
    image, _, _ = two_scenes(SIZE, BOX)
    inputs = build_inputs(mistral3.adapter, mistral3.model, mistral3.processor, image, PROMPT, TEXT)
    ids = inputs.tensors["input_ids"]
    first_break = int(inputs.layout.positions[0, -1]) + 1
    assert int(ids[0, first_break]) == mistral3.processor.image_break_token_id
    moved = torch.cat([ids[:, :first_break], ids[:, first_break + 1 : first_break + 2], ids[:, first_break : first_break + 1], ids[:, first_break + 2 :]], dim=1)
    with pytest.raises(InputError, match=r"expected 5 rows of 6 image tokens .* found the ids"):
        mistral3.adapter.image_layout(mistral3.model, dict(inputs.tensors, input_ids=moved))
    with pytest.raises(InputError, match="expected 30 image tokens for a 5x6 grid, found 29"):
        mistral3.adapter.image_layout(mistral3.model, dict(inputs.tensors, input_ids=ids[:, 3:]))


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("spatial_merge_size", 1, "spatial_merge_size (config, processor): the model expects 2, the processor has 1"),
        ("patch_size", 16, "patch size (vision tower, processor): the model expects 8, the processor has 16"),
        ("image_end_token", "[IMG_STOP]", "the processor's image_end_token '[IMG_STOP]' is not a token of the model's vocabulary"),
    ],
)
def test_a_processor_that_disagrees_with_the_model_is_refused_at_load(mistral3_dir, tmp_path, capsys, setting, value, message):
    folder = tmp_path / "model"
    shutil.copytree(mistral3_dir, folder)
    settings = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps(dict(settings, **{setting: value})))
    check_refused_at_load(folder, message, capsys, tmp_path)


def test_a_non_square_patch_in_the_config_is_refused_at_load(mistral3_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(mistral3_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["patch_size"] = [8, 8]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"expected the model's vision patch_size to be a positive integer .*found \[8, 8\]"):
        load_model(LoadConfig(model=str(folder), device="cpu"))


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(mistral3, queries):
    # Three grids (5x6, 6x2, 2x6): pixel_values zero-padded to 96x96, texts of different lengths.
    images = random_images([SIZE, (40, 150), (150, 40)])
    items = check_batched_equals_one_by_one(mistral3, images, [TEXT, "a red square", "a blue circle"], [None, "square", None], queries)
    assert [item.layout.grid for item in items] == [GRID, (6, 2), (2, 6)]


def test_lora_wraps_only_the_language_models_attention(mistral3):
    # the Pixtral tower has layer 0 with q/k/v/o projections too: never wrapped
    check_lora_targets_only_language_model(mistral3, (0,))


def test_cli_scores_the_saved_folder(mistral3_dir, tmp_path, capsys):
    check_cli_scores_folder(mistral3_dir, tmp_path, capsys, SIZE, BOX, "mistral3", GRID,
                            num_layers=2, num_heads=4, object_patches=6)


def test_the_transformers_model_testers_config(tmp_path_factory):
    """Settings nobody here chose: 6-px patches merged 2 x 2 (12-px tokens) under a 30-px longest edge,
    a Mistral of hidden 32 with 4 heads and 2 KV heads, a 99-token vocabulary. 100x70 -> 30 x 21 ->
    rounded up to 36 x 24 -> 2 rows x 3 cols."""
    folder = tiny_mistral3.build_tester_mistral3(tmp_path_factory.mktemp("tester"))
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    image, _, _ = two_scenes(SIZE, BOX)
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    assert inputs.layout.grid == (2, 3)
    check_capture_equals_eager(loaded, folder, image)
