"""One image end to end: rescoring without a forward pass, CSV export, the model cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.errors import InputError
from hi_core.images import fit_size
from hi_core.inputs import build_inputs, model_image
from hi_core.loading import LoadConfig, load_model
from hi_core.loading import ModelCache
from hi_core.masks import mask_grid
from hi_core.scoring import ScoringConfig

from . import tiny_idefics3, tiny_llava_next, tiny_models, tiny_paligemma, tiny_qwen2_vl


def test_rescored_equals_a_fresh_analysis_with_those_options(llava, scene):
    image, mask = scene
    base = analyze_image(llava, image, mask, "a red square at the center")
    options = ScoringConfig(binarize="quantile", quantile=0.8, layer_score="mean")
    fresh = analyze_image(llava, image, mask, "a red square at the center", AnalysisConfig(scoring=options))
    rescored = base.rescored(options)
    np.testing.assert_allclose(rescored.hi, fresh.hi)
    np.testing.assert_allclose(rescored.layer_scores, fresh.layer_scores)
    assert not np.allclose(rescored.hi, base.hi)
    assert rescored.maps is base.maps  # no new forward pass


def test_csv_lists_every_head_by_hi(llava, scene):
    image, mask = scene
    analysis = analyze_image(llava, image, mask, "a red square at the center")
    lines = analysis.to_csv().strip().split("\n")
    assert lines[0] == "layer,head,hi,mass" and len(lines) == 1 + analysis.hi.size
    values = [float(line.split(",")[2]) for line in lines[1:]]
    assert values == sorted(values, reverse=True)


def test_model_cache_reuses_and_evicts(llava_dir):
    cache = ModelCache(capacity=1)
    cpu = LoadConfig(model=str(llava_dir), device="cpu")
    first = cache.get(cpu)
    assert cache.get(LoadConfig(model=str(llava_dir), device="cpu")) is first
    other = LoadConfig(model=str(llava_dir), device="cpu", dtype="bfloat16")
    assert cache.get(other) is not first
    assert cpu not in cache and other in cache


def _large_scene() -> tuple[Image.Image, np.ndarray]:
    """A 1200x900 picture (gradient + noise) with a red disc, and the disc's mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:900, :1200]
    pixels = np.stack([xx * 255 // 1200, yy * 255 // 900, np.full_like(xx, 90)], -1).astype(np.float64)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    mask = (yy - 400) ** 2 + (xx - 700) ** 2 < 200**2
    pixels[mask] = (240, 40, 40)
    return Image.fromarray(pixels), mask


def test_a_large_image_is_downscaled_before_the_processor_with_the_same_result(llava, monkeypatch):
    """The 48-px model sees a 1200x900 image through a 128x96 copy; against the full-resolution path:
    maps within 5e-3 (of values up to ~0.1), mask fractions within 0.01, the same object cells and HI."""
    image, mask = _large_scene()
    seen = []
    processor_call = type(llava.processor.image_processor).__call__
    monkeypatch.setattr(
        type(llava.processor.image_processor), "__call__",
        lambda self, images, *args, **kwargs: seen.append(images[0].size) or processor_call(self, images, *args, **kwargs),
    )
    reduced = analyze_image(llava, image, mask, "a red circle at the right")
    assert set(seen) == {(128, 96)}  # image and mask both reach the processor at 2x its 48-px view
    monkeypatch.setattr(type(llava.adapter), "view_side", lambda self, processor: None)  # no downscaling
    full = analyze_image(llava, image, mask, "a red circle at the right")
    assert (1200, 900) in seen
    np.testing.assert_allclose(reduced.maps, full.maps, atol=5e-3)
    np.testing.assert_allclose(reduced.mask.fractions, full.mask.fractions, atol=0.01)
    np.testing.assert_array_equal(reduced.mask.object_patches, full.mask.object_patches)
    np.testing.assert_array_equal(reduced.hi, full.hi)


def test_the_dataset_path_fits_the_mask_like_analyze_image(llava):
    image, mask = _large_scene()
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", "a red circle")
    from_full_mask = mask_grid(llava, inputs, mask)  # dataset scoring passes the full-resolution mask
    analysis = analyze_image(llava, image, mask, "a red circle")
    np.testing.assert_allclose(from_full_mask.fractions, analysis.mask.fractions, atol=1e-6)


def test_a_mask_of_the_whole_image_is_refused(llava, scene):
    image, mask = scene
    with pytest.raises(InputError, match="covers the whole image the model sees"):
        analyze_image(llava, image, np.ones_like(mask), "a red square")


def test_a_one_pixel_image_is_one_input_error(llava):
    with pytest.raises(InputError, match="image is 1x1 px"):
        analyze_image(llava, Image.new("RGB", (1, 1)), np.ones((1, 1), bool), "a red square")


FAMILY_BUILDERS = {
    "llava": tiny_models.build_llava,
    "llava_next": tiny_llava_next.build_llava_next,
    "paligemma": tiny_paligemma.build_paligemma,
    "qwen2_vl": tiny_qwen2_vl.build_qwen2_vl,
    "idefics3": tiny_idefics3.build_idefics3,
    "smolvlm": tiny_idefics3.build_smolvlm,
}


@pytest.mark.parametrize("family", list(FAMILY_BUILDERS))
def test_every_family_sees_the_same_geometry_from_the_downscaled_image(family, tmp_path):
    """`view_side` per family: the 2x-downscaled copy gives the processor's same tokens and tensor
    shapes (same grid, tiles, resize targets) as the full image, and the same mask fractions (0.02)."""
    loaded = load_model(LoadConfig(model=str(FAMILY_BUILDERS[family](tmp_path)), device="cpu"))
    adapter, processor = loaded.adapter, loaded.processor
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((1000, 1600, 3)) * 255).astype(np.uint8))
    mask = np.zeros((1000, 1600), bool)
    mask[200:700, 300:1100] = True
    reduced = model_image(adapter, processor, image)
    assert max(reduced.size) < 1600 and reduced.size == fit_size(image.size, adapter.view_side(processor))
    full = adapter.prefix_inputs(processor, image, "Describe the image.")
    small = adapter.prefix_inputs(processor, reduced, "Describe the image.")
    assert full.keys() == small.keys()
    torch.testing.assert_close(small["input_ids"], full["input_ids"])
    assert all(small[key].shape == full[key].shape for key in full)
    inputs = build_inputs(adapter, loaded.model, processor, image, "Describe the image.", "a red circle")
    from_full = adapter.mask_fractions(loaded.model, processor, mask, inputs.tensors)
    from_reduced = mask_grid(loaded, inputs, mask).fractions
    np.testing.assert_allclose(from_reduced, np.where(inputs.layout.valid, from_full, 0.0), atol=0.02)


# --- the per-token view --------------------------------------------------------------------------


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_per_token_maps_average_to_the_key_phrase_maps(llava, scene, queries):
    image, mask = scene
    config = AnalysisConfig(key_phrase="red square", queries=queries)
    plain = analyze_image(llava, image, mask, "a red square at the center", config)
    tokens = analyze_image(llava, image, mask, "a red square at the center", config, per_token=True)
    assert plain.token_maps is None and plain.tokens == ()
    assert tokens.token_maps.shape[:3] == (*plain.hi.shape, len(tokens.tokens))
    assert "".join(tokens.tokens).replace(" ", "") == "aredsquareatthecenter"
    assert [tokens.tokens[i].strip() for i in tokens.key_tokens] == ["red", "square"]
    np.testing.assert_allclose(tokens.maps, plain.maps, atol=1e-6)
    np.testing.assert_array_equal(tokens.hi, plain.hi)


def test_one_token_is_scored_on_its_own_row_alone(llava, scene):
    """Oracle: the maps of a key phrase that selects exactly that token."""
    image, mask = scene
    text = "a red square at the center"
    analysis = analyze_image(llava, image, mask, text, per_token=True)
    index = [piece.strip() for piece in analysis.tokens].index("center")
    alone = analysis.for_tokens([index], ScoringConfig())
    oracle = analyze_image(llava, image, mask, text, AnalysisConfig(key_phrase="center"))
    np.testing.assert_allclose(alone.maps, oracle.maps, atol=1e-6)
    np.testing.assert_allclose(alone.hi, oracle.hi)
    assert alone.response_tokens == 1 and alone.token_maps is analysis.token_maps
    every = analysis.for_tokens(range(len(analysis.tokens)), ScoringConfig())
    np.testing.assert_allclose(every.maps, analysis.maps, atol=1e-6)  # no key phrase: every token


@pytest.mark.parametrize("indices, message", [([], "at least one token"), ([99], "token 99 is not one of"), ([-1], "token -1")])
def test_for_tokens_refuses_indices_outside_the_description(llava, scene, indices, message):
    image, mask = scene
    analysis = analyze_image(llava, image, mask, "a red square at the center", per_token=True)
    with pytest.raises(InputError, match=message):
        analysis.for_tokens(indices, ScoringConfig())
    plain = analyze_image(llava, image, mask, "a red square at the center")
    with pytest.raises(InputError, match="per_token=True"):
        plain.for_tokens([0], ScoringConfig())


def test_hi_difference_is_tuned_minus_base_on_the_same_inputs(llava, scene):
    from dataclasses import replace

    from hi_core.analysis import hi_difference

    image, mask = scene
    base = analyze_image(llava, image, mask, "a red square at the center")
    tuned = replace(base, hi=np.clip(base.hi + 0.25, 0, 1))
    np.testing.assert_allclose(hi_difference(base, tuned), np.clip(base.hi + 0.25, 0, 1) - base.hi)
    with pytest.raises(InputError, match="different texts or masks"):
        hi_difference(base, analyze_image(llava, image, mask, "a red square"))
    with pytest.raises(InputError, match="different models: 2x4 heads"):
        hi_difference(base, replace(tuned, hi=tuned.hi[:1]))
