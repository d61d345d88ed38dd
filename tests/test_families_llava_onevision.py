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
import torch
from PIL import Image

from hi_core.cli import main
from hi_core.errors import InputError
from hi_core.finetune import (
    FinetuneConfig,
    lora_attached,
    lora_config,
    trainable_parameters,
)
from hi_core.inputs import build_inputs, key_phrase_tokens, to_model_device
from hi_core.loading import LoadConfig, load_model
from hi_core.maps import batch_head_maps, head_maps

from . import tiny_llava_onevision
from .family_checks import (
    PROMPT,
    TEXT,
    check_capture_equals_eager,
    check_region_lands_on_its_cells,
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


@torch.no_grad()
def language_model_input(loaded, tensors: dict) -> torch.Tensor:
    """(T, hidden): the input of the first decoder layer (image features scattered into the text)."""
    captured = []

    def hook(module, args, kwargs):
        captured.append(kwargs.get("hidden_states", args[0] if args else None)[0].clone())

    handle = loaded.adapter.decoder_layers(loaded.model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        loaded.model(**to_model_device(tensors, loaded.model), use_cache=False)
    finally:
        handle.remove()
    return captured[0]


def test_capture_equals_eager(onevision, onevision_dir):
    image, _, _ = two_scenes(SIZE, BOX)
    check_capture_equals_eager(onevision, onevision_dir, image)


def test_grid_follows_the_base_view_squash(onevision):
    # Base view: 120x60 -> 48x48, x * 0.4 and y * 0.8, 8-px cells. Box x 60..100 -> 24..40 ->
    # cols 3-4; y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns.
    cells = check_region_lands_on_its_cells(onevision, SIZE, BOX)
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 3:5] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [(60, 120), (120, 60)])
@torch.no_grad()
def test_scores_exactly_the_base_view(onevision, size):
    model = onevision.model
    image, _, _ = two_scenes(size, (10, 10, 40, 30))
    inputs = build_inputs(onevision.adapter, model, onevision.processor, image, PROMPT, TEXT)
    layout = inputs.layout
    assert layout.view == "base view" and layout.grid == (SIDE, SIDE) and layout.valid.all()
    image_positions = np.flatnonzero(inputs.tensors["input_ids"][0].numpy() == model.config.image_token_id)
    # Base view (36) + 2 tiles of 6x6 unpadded into a 6x12 or 12x6 grid + one newline per row.
    tile_rows = 12 if size[1] > size[0] else 6
    assert image_positions.size == SIDE * SIDE + SIDE * SIDE * 2 + tile_rows
    assert layout.positions[0, 0] == image_positions[0]  # the base view comes first
    pixel_values = inputs.tensors["pixel_values"]
    assert pixel_values.shape[:2] == (1, 3)  # base view + 2 tiles

    # Oracle: the base view's pixels alone through SigLIP (no CLS: every token kept) and the projector.
    hidden = model.model.vision_tower(pixel_values[:, 0], output_hidden_states=True).hidden_states
    features = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer])[0]
    embeddings = language_model_input(onevision, inputs.tensors)
    np.testing.assert_allclose(embeddings[layout.positions.reshape(-1)].numpy(), features.numpy(), atol=1e-5)

    # Changing only the tiles moves other image tokens, never the scored ones.
    tiles_changed = dict(inputs.tensors, pixel_values=pixel_values.clone())
    tiles_changed["pixel_values"][:, 1:] = torch.randn(pixel_values[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    change = (language_model_input(onevision, tiles_changed) - embeddings).norm(dim=-1).numpy()
    assert change[layout.positions.reshape(-1)].max() == 0
    assert (change[np.setdiff1d(image_positions, layout.positions)] > 0).sum() >= SIDE * SIDE * 2


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(onevision, queries):
    # Sizes with 2 and 4 tiles (zero-padded views), texts of different lengths (padded tokens).
    sizes, texts, phrases = [(120, 60), (64, 64), (60, 120)], [TEXT, "a red square", "a blue circle"], [None, "square", None]
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in sizes]
    items = [build_inputs(onevision.adapter, onevision.model, onevision.processor, image, PROMPT, text)
             for image, text in zip(images, texts)]
    assert len({item.tensors["pixel_values"].shape[1] for item in items}) > 1
    tokens = [key_phrase_tokens(item, phrase) for item, phrase in zip(items, phrases)]
    for item, selected, maps in zip(items, tokens, batch_head_maps(onevision, items, tokens, queries)):
        alone = head_maps(onevision, item, selected, queries)
        np.testing.assert_allclose(maps, alone, atol=1e-5)
        assert alone.std() > 1e-4


def test_lora_wraps_only_the_language_models_attention(onevision):
    layers = (1,)
    expected = sum(
        4 * (projection.in_features + projection.out_features)
        for attention in [onevision.model.model.language_model.layers[1].self_attn]
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
    )
    with lora_attached(onevision, lora_config(onevision, layers, FinetuneConfig(layers=layers, rank=4))) as peft_model:
        wrapped = [name for name, module in onevision.model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]
        assert sorted(wrapped) == sorted(f"model.language_model.layers.1.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        assert trainable_parameters(peft_model) == expected


def test_cli_scores_the_saved_folder(onevision_dir, tmp_path, capsys):
    image, _, mask = two_scenes(SIZE, BOX)
    image.save(tmp_path / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    code = main(["score", "--model", str(onevision_dir), "--image", str(tmp_path / "image.png"),
                 "--mask", str(tmp_path / "mask.png"), "--text", TEXT])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "llava_onevision" and result["grid"] == [SIDE, SIDE] and result["object_patches"] == 6
    assert len(result["heads"]) == 2 * 4


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
    with pytest.raises(InputError) as error:
        load_model(LoadConfig(model=str(folder), device="cpu"))
    assert message in str(error.value)
    image, _, mask = two_scenes(SIZE, BOX)
    image.save(tmp_path / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    code = main(["score", "--model", str(folder), "--image", str(tmp_path / "image.png"),
                 "--mask", str(tmp_path / "mask.png"), "--text", TEXT])
    lines = [line for line in capsys.readouterr().err.split("\n") if line.strip() and "Loading weights" not in line]  # transformers bar
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in lines[0]


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
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    image_positions = np.flatnonzero(inputs.tensors["input_ids"][0].numpy() == loaded.model.config.image_token_id)
    assert inputs.layout.grid == (2, 2) and inputs.layout.view == "base view"
    np.testing.assert_array_equal(inputs.layout.positions.reshape(-1), image_positions[:4])
    assert image_positions.size > 4  # the tile follows
    check_capture_equals_eager(loaded, folder, image)
