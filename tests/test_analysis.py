"""One image end to end: rescoring without a forward pass, CSV export, the model cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.model_cache import ModelCache
from hi_core.method.scoring import ScoringConfig

from . import (tiny_gemma3, tiny_idefics3, tiny_internvl, tiny_llava_next, tiny_llava_onevision, tiny_mistral3, tiny_models,
               tiny_paligemma, tiny_qwen2_vl, tiny_qwen3_5, tiny_qwen3_vl)
from .family_checks import PROMPT, TEXT
from .oracles import eager_rows


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


FAMILY_BUILDERS = {
    "llava": tiny_models.build_llava,
    "llava_next": tiny_llava_next.build_llava_next,
    "llava_onevision": tiny_llava_onevision.build_llava_onevision,
    "paligemma": tiny_paligemma.build_paligemma,
    "paligemma2": tiny_paligemma.build_paligemma2,
    "gemma3": tiny_gemma3.build_gemma3,
    "qwen2_vl": tiny_qwen2_vl.build_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_vl.build_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl.build_qwen3_vl,
    "qwen3_5": tiny_qwen3_5.build_qwen3_5,
    "idefics3": tiny_idefics3.build_idefics3,
    "smolvlm": tiny_idefics3.build_smolvlm,
    "internvl": tiny_internvl.build_internvl,
    "mistral3": tiny_mistral3.build_mistral3,
}


@pytest.mark.parametrize("family", list(FAMILY_BUILDERS))
def test_maps_equal_the_models_own_processor_and_eager_attention_on_a_large_image(family, tmp_path):
    """The processor gets the image as the file decodes it (no reduction before it): on a 1600 x 1000 image, far
    larger than any tiny model's view, the pixel tensors are exactly the processor's own for that image, and the
    maps equal eager attention's rows on them, averaged over the response as DESIGN 1.3 says and put on the
    image. The views account for every image token the processor wrote."""
    folder = FAMILY_BUILDERS[family](tmp_path)
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((1000, 1600, 3)) * 255).astype(np.uint8))
    mask = np.zeros((1000, 1600), bool)
    mask[200:700, 300:1100] = True
    analysis = analyze_image(loaded, image, mask, TEXT)

    own = loaded.adapter.prefix_inputs(loaded.processor, image, PROMPT)  # the processor on the decoded file
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    for key, value in own.items():
        ours = inputs.tensors[key]
        if ours.shape != value.shape:  # a per-token tensor: the prefix is the processor's, the response follows
            ours = ours[:, : value.shape[1]]
        torch.testing.assert_close(ours, value, rtol=0, atol=0, msg=key)
    config = loaded.model.config
    image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index")
    written = int((own["input_ids"] == image_token).sum())  # every image token the processor wrote
    assert sum(view.tokens for view in inputs.layout.views) == inputs.layout.keys.size == written
    assert analysis.to_json()["views"] == [
        {"name": view.name, "grid": None if view.grid is None else list(view.grid), "tokens": view.tokens,
         "share": analysis.to_json()["views"][index]["share"]} for index, view in enumerate(inputs.layout.views)]
    rows = inputs.query_positions(np.arange(inputs.num_response_tokens), "producing")
    eager = eager_rows(str(folder), inputs, rows, inputs.layout.keys)  # (softmax layers, heads, rows, every image token)
    scored = list(loaded.adapter.scored_layers(loaded.model))
    expected = inputs.layout.place(eager.mean(axis=2))
    np.testing.assert_allclose(analysis.maps[scored], expected, atol=1e-6)


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

    from hi_core.method.analysis import hi_difference

    image, mask = scene
    base = analyze_image(llava, image, mask, "a red square at the center")
    tuned = replace(base, hi=np.clip(base.hi + 0.25, 0, 1))
    np.testing.assert_allclose(hi_difference(base, tuned), np.clip(base.hi + 0.25, 0, 1) - base.hi)
    with pytest.raises(InputError, match="different texts or masks"):
        hi_difference(base, analyze_image(llava, image, mask, "a red square"))
    with pytest.raises(InputError, match="different models: 2x4 heads"):
        hi_difference(base, replace(tuned, hi=tuned.hi[:1]))


def test_a_view_budget_gives_fewer_tiles_or_tokens_and_the_json_records_it(tmp_path):
    """SmolVLM (48-px tiles): a budget of 96 x 96 px keeps the longest edge at 96, so a 120 x 60 image is 2 tiles
    (1 row) + the global view instead of 2 x 3; Qwen2-VL: fewer image tokens. The JSON says what was set."""
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 120, 3)) * 255).astype(np.uint8))
    mask = np.zeros((60, 120), bool)
    mask[10:40, 20:70] = True
    smol = str(tiny_idefics3.build_smolvlm(tmp_path / "smol"))
    free = analyze_image(load_model(LoadConfig(smol, device="cpu")), image, mask, TEXT)
    limited = analyze_image(load_model(LoadConfig(smol, device="cpu", max_view_pixels=96 * 96 + 500)), image, mask, TEXT)
    assert free.grid == (12, 18) and limited.grid == (6, 12) and limited.view == "2 tiles + global view"
    assert free.to_json()["view_budget"] is None
    assert limited.to_json()["view_budget"] == "longest edge 96 px (at most 4 tiles of 48 px + the global view)"
    qwen = str(tiny_qwen2_vl.build_qwen2_vl(tmp_path / "qwen"))
    big = Image.fromarray((rng.random((600, 800, 3)) * 255).astype(np.uint8))
    big_mask = np.zeros((600, 800), bool)
    big_mask[100:400, 200:500] = True
    free = analyze_image(load_model(LoadConfig(qwen, device="cpu")), big, big_mask, TEXT)
    limited = analyze_image(load_model(LoadConfig(qwen, device="cpu", max_view_pixels=10_000)), big, big_mask, TEXT)
    assert limited.views[0].tokens < free.views[0].tokens
    assert "at most 10,000 pixels per image" in limited.to_json()["view_budget"]
    with pytest.raises(InputError, match="max_view_pixels must be a whole number of at least 1"):
        LoadConfig("demo", max_view_pixels=0)


def test_a_layout_holds_one_entry_per_token_and_cell_not_a_dense_matrix():
    """Qwen2-VL at its own pixel cap writes up to 16,384 image tokens: a dense keys x cells matrix would be 1 GB."""
    from hi_core.families import ImageLayout

    side = 128
    layout = ImageLayout.cells(np.arange(side * side).reshape(side, side) + 7, np.ones((side, side), bool))
    assert all(part.size == side * side for part in layout.placement)
    attention = np.random.default_rng(0).random((2, side * side)).astype(np.float32)
    np.testing.assert_array_equal(layout.place(attention), attention.reshape(2, side, side))
    np.testing.assert_array_equal(layout.positions, np.arange(side * side).reshape(side, side) + 7)
