"""LLaVA-NeXT adapter: the scored tokens are the base view (whole image squashed to a square).

Independent oracle for "base view": the vision tower and projector run on the base view's
pixels alone (`pixel_values[:, 0]`) give exactly the language model's input embeddings at the
scored positions, row-major; changing only the tiles' pixels leaves them untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.inputs import to_model_device
from hi_core.inputs import build_inputs
from hi_core.loading import LoadConfig, load_model

from .family_checks import PROMPT, TEXT, check_capture_equals_eager, check_region_lands_on_its_cells, two_scenes
from .tiny_llava_next import build_llava_next

SIZE = (120, 60)  # (width, height): base view squashed to 48 x 48, x by 0.4 and y by 0.8
SIDE = 6  # 48 / 8-px patches


@pytest.fixture(scope="module")
def llava_next_dir(tmp_path_factory):
    return build_llava_next(tmp_path_factory.mktemp("llava_next"))


@pytest.fixture(scope="module")
def llava_next(llava_next_dir):
    return load_model(LoadConfig(model=str(llava_next_dir), device="cpu"))


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


def test_llava_next_capture_equals_eager(llava_next, llava_next_dir):
    image, _, _ = two_scenes(SIZE, (60, 10, 100, 40))
    check_capture_equals_eager(llava_next, llava_next_dir, image)


def test_llava_next_grid_follows_the_base_view_squash(llava_next):
    # Base view: 120x60 -> 48x48, x * 0.4 and y * 0.8, 8-px cells. Box x 60..100 -> 24..40 ->
    # cols 3-4; y 10..40 -> 8..32 -> rows 1-3. Off-centre, 3 rows by 2 columns.
    cells = check_region_lands_on_its_cells(llava_next, SIZE, (60, 10, 100, 40))
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 3:5] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("size", [(60, 120), (120, 60)])
@torch.no_grad()
def test_llava_next_scores_exactly_the_base_view(llava_next, size):
    model = llava_next.model
    image, _, _ = two_scenes(size, (10, 10, 40, 30))
    inputs = build_inputs(llava_next.adapter, model, llava_next.processor, image, PROMPT, TEXT)
    layout = inputs.layout
    assert layout.view == "base view" and layout.grid == (SIDE, SIDE) and layout.valid.all()
    image_positions = np.flatnonzero(inputs.tensors["input_ids"][0].numpy() == model.config.image_token_id)
    # Base view (36) + 2 tiles of 6x6 unpadded into a 6x12 or 12x6 grid + one newline per row.
    tile_rows = 12 if size[1] > size[0] else 6
    assert image_positions.size == SIDE * SIDE + SIDE * SIDE * 2 + tile_rows
    pixel_values = inputs.tensors["pixel_values"]
    assert pixel_values.shape[:2] == (1, 3)  # base view + 2 tiles

    # Oracle: the base view's pixels alone through the vision tower and projector, CLS dropped.
    hidden = model.model.vision_tower(pixel_values[:, 0], output_hidden_states=True).hidden_states
    features = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, 1:])[0]
    embeddings = language_model_input(llava_next, inputs.tensors)
    np.testing.assert_allclose(embeddings[layout.positions.reshape(-1)].numpy(), features.numpy(), atol=1e-5)

    # Changing only the tiles moves other image tokens, never the scored ones.
    tiles_changed = dict(inputs.tensors, pixel_values=pixel_values.clone())
    noise = torch.randn(pixel_values[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    tiles_changed["pixel_values"][:, 1:] = noise
    change = (language_model_input(llava_next, tiles_changed) - embeddings).norm(dim=-1).numpy()
    assert change[layout.positions.reshape(-1)].max() == 0
    assert (change[np.setdiff1d(image_positions, layout.positions)] > 0).sum() >= SIDE * SIDE * 2


def test_llava_next_analyze_image(llava_next):
    bright, _, mask = two_scenes(SIZE, (60, 10, 100, 40))
    analysis = analyze_image(llava_next, bright, mask, TEXT, AnalysisConfig(queries="reading"))
    assert analysis.family == "llava_next" and analysis.view == "base view"
    assert analysis.maps.shape == (2, 4, SIDE, SIDE) and analysis.grid == (SIDE, SIDE)
    assert analysis.hi.shape == (2, 4) and np.isfinite(analysis.hi).all()
    assert (analysis.maps > 0).all() and (analysis.maps.sum(axis=(2, 3)) < 1).all()
    result = analysis.to_json()
    assert result["grid"] == [SIDE, SIDE] and result["view"] == "base view"
    assert result["object_patches"] == 6
