"""Qwen3.5 (qwen3_5, qwen3_5_moe): a hybrid language model, scored on its softmax-attention layers only.

Tiny models (tests/tiny_qwen3_5.py) with 4 text layers, linear / full / linear / full attention:
layers 1 and 3 are captured, scored, ranked and adapted; layers 0 and 2 (Gated DeltaNet) keep
their index everywhere and are NaN / null / "not scored". The image layout is Qwen3-VL's: one image
token per 16x16 px, so a 130x90 image is a 6x8 grid (tests/test_families_qwen3_vl.py).

A third tiny model has the exact config of transformers' own Qwen3.5 tester (2 text layers, full then
linear attention, so layer 0 alone is scored; 16-px patches, merge 1: one token per 16x16 px again).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from hi_core.method.analysis import analyze_image
from hi_core.cli.main import main
from hi_core.data.dataset_analysis import DatasetConfig
from hi_core.data.dataset_scoring import score_dataset
from hi_core.data.datasets import write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import FinetuneConfig
from hi_core.tuning.training import attention_targets, lora_config
from hi_core.figures.heatmap import NAN_COLOUR, HeatmapLayout
from hi_core.method.image_scoring import AnalysisConfig
from hi_core.model.inputs import build_inputs
from hi_core.method.layer_selection import Ranking, select_layers
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.scoring import ScoringConfig
from ui import explorer_views as views

from . import tiny_qwen3_5
from .family_checks import (
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_grid_matches_rope,
    check_lora_targets_only_language_model,
    check_region_lands_on_its_cells,
    random_images,
    two_scenes,
)

SCORED = tiny_qwen3_5.FULL_ATTENTION_LAYERS  # (1, 3)
UNSCORED = (0, 2)
HEADS = 4
LANDSCAPE, LANDSCAPE_GRID = (130, 90), (6, 8)
BOX = (68, 12, 119, 42)  # rows 1-2 x cols 4-6 of the 6x8 grid (as for Qwen3-VL)
BUILDERS = {"qwen3_5": tiny_qwen3_5.build_qwen3_5, "qwen3_5_moe": tiny_qwen3_5.build_qwen3_5_moe}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def hybrid(request, tmp_path_factory):
    """(loaded model, folder, name) for the dense and the MoE tiny model."""
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    return load_model(LoadConfig(model=str(folder), device="cpu")), folder, request.param


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tiny_qwen3_5.build_qwen3_5(tmp_path_factory.mktemp("dense"))
    return load_model(LoadConfig(model=str(folder), device="cpu")), folder


@pytest.fixture(scope="module")
def analysis(dense):
    loaded, _ = dense
    image, _, mask = two_scenes(LANDSCAPE, BOX)
    return analyze_image(loaded, image, mask, TEXT, per_token=True), image, mask


def test_hub_folder_loads_with_its_softmax_layers_resolved(hybrid):
    loaded, _, name = hybrid
    assert loaded.model.config.model_type == name and loaded.family == "qwen3_5"
    layers = loaded.adapter.decoder_layers(loaded.model)
    modules = loaded.adapter.attention_modules(loaded.model)
    assert loaded.adapter.scored_layers(loaded.model) == SCORED
    assert [module is None for module in modules] == [True, False, True, False]
    assert all(modules[i] is layers[i].self_attn for i in SCORED)
    assert all(hasattr(layers[i], "linear_attn") and not hasattr(layers[i], "self_attn") for i in UNSCORED)


def test_captured_rows_of_softmax_layers_equal_eager_and_the_others_are_nan(hybrid):
    """Eager `output_attentions` returns one tensor per softmax-attention layer (transformers records
    `Qwen3_5Attention` only): they are the captured layers 1 and 3, in order; layers 0 and 2 are NaN."""
    loaded, folder, _ = hybrid
    assert loaded.adapter.scored_layers(loaded.model) == SCORED and len(loaded.adapter.decoder_layers(loaded.model)) == 4
    assert loaded.model.config.get_text_config().num_attention_heads == HEADS
    check_capture_equals_eager(loaded, folder, two_scenes(LANDSCAPE, BOX)[0])


def test_grid_follows_the_models_rope_and_the_image(dense):
    """The model's own M-RoPE index gives each image token its (row, col); a changed region moves the
    embeddings of exactly the cells the grid puts it on."""
    loaded, _ = dense
    check_grid_matches_rope(loaded, LANDSCAPE, LANDSCAPE_GRID)
    cells = check_region_lands_on_its_cells(loaded, LANDSCAPE, BOX)
    expected = np.zeros(LANDSCAPE_GRID, dtype=bool)
    expected[1:3, 4:7] = True
    np.testing.assert_array_equal(cells, expected)


def test_image_analysis_scores_only_softmax_layers_under_their_own_indices(analysis):
    result, _, _ = analysis
    assert result.maps.shape == (4, HEADS, *LANDSCAPE_GRID) and result.token_maps.shape[:2] == (4, HEADS)
    assert np.isnan(result.maps[list(UNSCORED)]).all() and np.isfinite(result.maps[list(SCORED)]).all()
    assert result.scored_layers == list(SCORED)
    for scoring in (ScoringConfig(), ScoringConfig(binarize="otsu", layer_score="mean"),
                    ScoringConfig(binarize="quantile", layer_score="topn", top_n=3)):
        rescored = result.rescored(scoring)
        assert np.isnan(rescored.hi[list(UNSCORED)]).all() and np.isnan(rescored.mass[list(UNSCORED)]).all()
        assert np.isfinite(rescored.hi[list(SCORED)]).all() and np.isfinite(rescored.mass[list(SCORED)]).all()
        assert np.isnan(rescored.layer_scores[list(UNSCORED)]).all() and np.isfinite(rescored.layer_scores[list(SCORED)]).all()
        assert {layer for layer, _ in rescored.ranked_heads()} == set(SCORED) and len(rescored.ranked_heads()) == 2 * HEADS
    assert np.isnan(result.for_tokens([0], ScoringConfig()).hi[list(UNSCORED)]).all()


def test_json_and_csv_name_the_scored_layers_and_leave_the_others_null(analysis):
    result, _, _ = analysis
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))  # strict JSON: no NaN
    assert data["num_layers"] == 4 and data["scored_layers"] == list(SCORED)
    assert len(data["heads"]) == 4 * HEADS
    scored_heads = [h for h in data["heads"] if h["hi"] is not None]
    assert {h["layer"] for h in scored_heads} == set(SCORED) and len(scored_heads) == 2 * HEADS
    assert [h["hi"] for h in scored_heads] == sorted((h["hi"] for h in scored_heads), reverse=True)
    assert all(h["hi"] is None and h["mass"] is None for h in data["heads"] if h["layer"] in UNSCORED)
    assert [entry["layer"] for entry in data["layers"][:2]] == sorted(SCORED, key=lambda l: -result.layer_scores[l])
    assert data["layers"][2:] == [{"layer": 0, "score": None}, {"layer": 2, "score": None}]
    ranking = Ranking.from_json(data, "score.json")
    assert set(ranking.layers) == set(SCORED) and ranking.unscored == UNSCORED and ranking.num_layers == 4
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(rows) == 4 * HEADS
    assert all((row["hi"] == "" and row["mass"] == "") == (int(row["layer"]) in UNSCORED) for row in rows)


def test_dataset_analysis_keeps_linear_layers_unscored(dense, tmp_path):
    loaded, _ = dense
    folder = write_synthetic(tmp_path / "set", n=3, seed=1, size=64)
    config = DatasetConfig(analysis=AnalysisConfig(), batch_size=2, resamples=50)
    result = score_dataset(loaded, folder, config, cache=tmp_path / "cache")
    again = score_dataset(loaded, folder, config, cache=tmp_path / "cache")  # read back from the cache (nulls)
    for scored in (result, again):
        assert len(scored.images) == 3 and scored.scored_layers == list(SCORED)
        for values in (scored.hi, scored.hi_low, scored.hi_high, scored.mass, scored.image_hi[:, :, :].mean(axis=0)):
            assert np.isnan(values[list(UNSCORED)]).all() and np.isfinite(values[list(SCORED)]).all()
        assert np.isnan(scored.layer_scores[list(UNSCORED)]).all()
    np.testing.assert_allclose(again.hi, result.hi, equal_nan=True)
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["scored_layers"] == list(SCORED) and len(data["heads"]) == 4 * HEADS
    assert all(h["hi"] is None and h["hi_low"] is None for h in data["heads"] if h["layer"] in UNSCORED)
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(rows) == 3 * 4 * HEADS and all((row["hi"] == "") == (int(row["layer"]) in UNSCORED) for row in rows)
    layer, head = result.ranked_heads()[0]
    assert layer in SCORED and len(result.extremes(layer, head, 2)[0]) == 2
    with pytest.raises(InputError, match="layer 0 was not scored"):
        result.extremes(0, 0, 2)
    ranking = Ranking.from_scores(result.layer_scores, "dataset")
    assert set(ranking.layers) == set(SCORED) and ranking.unscored == UNSCORED


def test_rankings_and_selection_never_pick_a_linear_attention_layer(analysis, dense):
    loaded, _ = dense
    result, _, _ = analysis
    adaptable = loaded.adapter.scored_layers(loaded.model)
    ranking = Ranking.from_scores(result.layer_scores, "image")
    assert select_layers("all", adaptable, 4) == SCORED
    for choice in ("top", "bottom"):
        assert select_layers(choice, adaptable, 1, ranking) in {(1,), (3,)}
        assert select_layers(choice, adaptable, 2, ranking) == SCORED
    assert {select_layers("random", adaptable, 1, None, seed) for seed in range(20)} == {(1,), (3,)}
    with pytest.raises(InputError, match="k must be between 1 and the language model's 2 softmax-attention layers"):
        select_layers("top", adaptable, 3, ranking)
    with pytest.raises(InputError, match="layer 2 cannot be adapted: LoRA goes only on"):
        select_layers((1, 2), adaptable, 1)
    with pytest.raises(InputError, match="cannot be adapted"):
        lora_config(loaded, (0,), FinetuneConfig(layers=(0,)))


def test_lora_wraps_only_the_chosen_softmax_attention_layers(hybrid):
    loaded, _, _ = hybrid
    assert attention_targets(loaded) == [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    for chosen in ((3,), select_layers("all", loaded.adapter.scored_layers(loaded.model), 0)):
        check_lora_targets_only_language_model(loaded, chosen)


def test_cli_scores_the_hub_folder_and_names_the_scored_layers(dense, tmp_path, capsys):
    _, folder = dense
    result = check_cli_scores_folder(folder, tmp_path, capsys, LANDSCAPE, BOX, "qwen3_5", LANDSCAPE_GRID, to_file=True,
                                     num_layers=4, num_heads=HEADS)
    assert result["scored_layers"] == list(SCORED)
    assert {h["layer"] for h in result["heads"] if h["hi"] is not None} == set(SCORED)


def test_explorer_views_render_a_model_with_unscored_layers(analysis, tmp_path):
    result, image, mask = analysis
    session = views.Session(whole=result, image=np.asarray(image), mask=mask, config=AnalysisConfig(), folder=tmp_path)
    assert session.selected[0] in SCORED
    assert "scored layers 1, 3 of 4" in views.summary(session)
    assert "not scored" in views.head_info(result, (0, 1))
    assert "rank 1 of" in views.head_info(result, session.selected)
    with pytest.raises(InputError, match="layer 2 is not scored"):
        views.scored_head(result.hi, (2, 0))
    assert views.scored_head(result.hi, (1, 0)) == (1, 0)
    picture = views.heatmap_image(result.hi, session.selected)
    layout = HeatmapLayout.fit(4, HEADS, legend=True)
    assert picture.shape[:2] == (layout.height, layout.width) and layout.height > HeatmapLayout.fit(4, HEADS).height
    for layer in range(4):
        x, y = layout.cell_box(layer, 0)[:2]
        assert (tuple(picture[y + 2, x + 2]) == NAN_COLOUR) == (layer in UNSCORED)
    for figure in (views.head_figure(session), views.top_figure(session, 8), views.layer_figure(session, 0),
                   views.layer_figure(session, 1), views.bars_figure(result, 4)):
        assert figure.ndim == 3 and figure.dtype == np.uint8
    assert {row[0] for row in views.ranking_rows(result)} == set(SCORED)
    files = views.save_downloads(session)
    assert json.loads(Path(files[0]).read_text())["scored_layers"] == list(SCORED)


def test_a_model_without_softmax_attention_is_refused_at_load(tmp_path):
    folder = tiny_qwen3_5.build_qwen3_5(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["layer_types"] = ["linear_attention"] * 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="no layer could be scored"):
        load_model(LoadConfig(model=str(folder), device="cpu"))


def test_cli_finetune_top_layers_tunes_only_softmax_attention(dense, tmp_path, capsys):
    """`finetune --layers top` ranks by dataset HI (only layers 1 and 3 are scored) and tunes them alone;
    an explicit linear-attention layer is refused (exit 2, one line)."""
    _, folder = dense
    data = write_synthetic(tmp_path / "set", n=4, seed=2, size=64)
    common = ["finetune", "--model", str(folder), "--dataset", str(data), "--steps", "2", "--batch-size", "2",
              "--eval-limit", "1", "--max-new-tokens", "3", "--no-meteor"]
    code = main([*common, "--layers", "top", "-k", "2", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["layers"] == list(SCORED) and record["num_layers"] == 4
    assert {entry["layer"] for entry in record["ranking"]["layers"] if entry["score"] is not None} == set(SCORED)
    assert main([*common, "--layers", "0,1", "--out", str(tmp_path / "bad")]) == 2
    assert "layer 0 cannot be adapted" in capsys.readouterr().err


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_batched_maps_equal_one_at_a_time(dense, queries):
    """Padding in a batch must not leak into the linear-attention layers' recurrence (their outputs feed
    the softmax layers after them): each sequence's maps equal its maps alone, NaN on layers 0 and 2."""
    loaded, _ = dense
    images = random_images([LANDSCAPE, (70, 110), (64, 64)])
    texts = [TEXT, "a red square", "a blue circle at the center"]
    check_batched_equals_one_by_one(loaded, images, texts, [None] * 3, queries, layers_heads=(4, HEADS), scored=SCORED)


# --- transformers' own Qwen3.5 tester config (2 layers: full attention, then linear attention) ----------


@pytest.fixture(scope="module")
def tester(tmp_path_factory):
    folder = tiny_qwen3_5.build_qwen3_5_tester(tmp_path_factory.mktemp("tester"))
    return load_model(LoadConfig(model=str(folder), device="cpu")), folder


def test_tester_config_scores_its_softmax_layer_and_captures_eager(tester):
    """Settings nobody here chose: layer 0 softmax, layer 1 Gated DeltaNet (the other order from ours),
    head_dim 32 rotated on a quarter of its dims, 4 value heads per key head pair, a 99-token vocabulary."""
    loaded, folder = tester
    config = loaded.model.config
    assert config.model_type == "qwen3_5" and loaded.family == "qwen3_5"
    assert config.text_config.layer_types == ["full_attention", "linear_attention"] and config.get_text_config().vocab_size == 99
    assert loaded.adapter.scored_layers(loaded.model) == tiny_qwen3_5.TESTER_FULL_ATTENTION_LAYERS == (0,)
    layers = loaded.adapter.decoder_layers(loaded.model)
    assert hasattr(layers[1], "linear_attn") and not hasattr(layers[1], "self_attn")
    image, _, _ = two_scenes(LANDSCAPE, BOX)
    assert build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT).layout.grid == LANDSCAPE_GRID
    check_capture_equals_eager(loaded, folder, image)


def test_tester_config_grid_follows_the_models_rope_and_the_image(tester):
    """One 16-px patch per token, whose embedding reacts to a sliver of a patch about as much as to a whole
    one, so the box follows cell edges (as for the Qwen3-VL tester): (65, 15, 114, 45) scaled by 128/130
    and 96/90 -> x 64.0..112.25: cols 4-6 full, col 7 0.02; y 16..48: rows 1-2 full."""
    loaded, _ = tester
    check_grid_matches_rope(loaded, LANDSCAPE, LANDSCAPE_GRID)
    cells = check_region_lands_on_its_cells(loaded, LANDSCAPE, (65, 15, 114, 45))
    expected = np.zeros(LANDSCAPE_GRID, dtype=bool)
    expected[1:3, 4:7] = True
    np.testing.assert_array_equal(cells, expected)
