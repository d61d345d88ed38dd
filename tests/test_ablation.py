"""Head ablation: the hooks remove exactly the chosen heads (oracles: a layer's attention output
zeroed by a forward hook of our own; a KV head's value rows zeroed in a copy of the model), change
nothing when no head is chosen, leave the model as it was (also after an exception), put each head's
mean in mean mode; bad heads are refused; `ablate` runs end to end (caption and VQA) and its report
holds the intervals it says it holds."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import hi_core.causal.ablation as ablation
import hi_core.causal.head_ablation as head_ablation
from hi_core.causal.ablation import (
    AblationConfig,
    answer_starts_right,
    key_named,
    key_words_named,
    parse_strategies,
    run_ablation,
)
from hi_core.causal.ablation_report import check_ablation_folder, write_ablation_report
from hi_core.causal.head_ablation import ablate_heads, head_output_means
from hi_core.cli.main import main
from hi_core.tuning.intervals import mean_interval
from hi_core.data.datasets import write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig, scan_records, split_dataset
from hi_core.tuning.training import training_batch
from hi_core.method.head_selection import HeadRanking, select_heads
from hi_core.model.inputs import build_inputs, to_model_device
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.metrics import accuracy_interval

from . import tiny_qwen2_vl, tiny_qwen3_5
from .family_checks import PROMPT, TEXT, random_image
from .vqa_data import write_vqa_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = DataConfig(max_new_tokens=3, meteor=False, eval_fraction=0.3)


@pytest.fixture(scope="module")
def demo():
    return load_model(LoadConfig(model="demo", device="cpu"))


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return load_model(LoadConfig(model=str(tiny_qwen2_vl.build_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"))), device="cpu"))


@pytest.fixture(scope="module")
def qwen3_5(tmp_path_factory):
    return load_model(LoadConfig(model=str(tiny_qwen3_5.build_qwen3_5(tmp_path_factory.mktemp("qwen3_5"))), device="cpu"))


@pytest.fixture(params=["llava", "demo", "qwen2_vl", "qwen3_5"])
def family(request):
    """Tiny LLaVA (4 query heads, 2 KV heads), the demo model (8 heads, 8 KV heads), tiny Qwen2-VL
    (4 / 2, biased projections) and tiny Qwen3.5 (a hybrid: only layers 1 and 3 have softmax
    attention, gated by the query projection)."""
    return request.getfixturevalue(request.param)


def _logits(loaded, model=None) -> torch.Tensor:
    model = model or loaded.model
    inputs = build_inputs(loaded.adapter, model, loaded.processor, random_image((64, 48), 1), PROMPT, TEXT)
    with torch.inference_mode():
        return model(**to_model_device(inputs.tensors, model)).logits.float()


def _heads(loaded) -> int:
    return loaded.model.config.get_text_config().num_attention_heads


def _pre_hooks(loaded) -> int:
    return sum(len(module._forward_pre_hooks) + len(module._forward_hooks) for module in loaded.model.modules())


def test_ablating_every_head_of_a_layer_equals_zeroing_its_attention_output(family):
    layer = family.adapter.scored_layers(family.model)[-1]
    attention = family.adapter.attention_modules(family.model)[layer]
    baseline = _logits(family)
    with ablate_heads(family, [(layer, head) for head in range(_heads(family))]):
        ablated = _logits(family)
    handle = attention.register_forward_hook(lambda module, args, output: (torch.zeros_like(output[0]), *output[1:]))
    try:
        zeroed = _logits(family)
    finally:
        handle.remove()
    assert not torch.allclose(ablated, baseline, atol=1e-4)  # the heads did contribute
    torch.testing.assert_close(ablated, zeroed, atol=1e-5, rtol=1e-5)


def test_a_kv_groups_query_heads_removed_equal_its_value_rows_zeroed(family):
    """Query head h reads KV head h // groups: removing a group's query heads must equal zeroing that
    KV head's rows of v_proj (its values, hence those heads' outputs, are then 0). Checks the head
    layout of the o_proj input against the value projection's, and the grouping."""
    config = family.model.config.get_text_config()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    groups, kv_head = heads // kv_heads, kv_heads - 1
    layer = family.adapter.scored_layers(family.model)[0]
    with ablate_heads(family, [(layer, kv_head * groups + i) for i in range(groups)]):
        ablated = _logits(family)
    oracle = copy.deepcopy(family.model)
    values = family.adapter.attention_modules(oracle)[layer].v_proj
    head_dim = values.out_features // kv_heads
    with torch.no_grad():
        values.weight[kv_head * head_dim : (kv_head + 1) * head_dim] = 0
        if values.bias is not None:
            values.bias[kv_head * head_dim : (kv_head + 1) * head_dim] = 0
    assert not torch.allclose(ablated, _logits(family), atol=1e-4)
    torch.testing.assert_close(ablated, _logits(family, oracle), atol=1e-5, rtol=1e-5)


def test_ablating_nothing_changes_nothing(llava):
    before, hooks = _logits(llava), _pre_hooks(llava)
    with ablate_heads(llava, []) as heads:
        assert heads == () and _pre_hooks(llava) == hooks
        assert torch.equal(_logits(llava), before)


def test_the_model_is_restored_after_an_exception_in_the_block(llava):
    before, hooks = _logits(llava), _pre_hooks(llava)
    with pytest.raises(RuntimeError, match="inside"):
        with ablate_heads(llava, [(0, 1), (1, 2)]):
            assert _pre_hooks(llava) == hooks + 2  # one hook per touched layer
            assert not torch.equal(_logits(llava), before)
            raise RuntimeError("inside the block")
    assert _pre_hooks(llava) == hooks
    assert torch.equal(_logits(llava), before)


def test_another_threads_forward_keeps_every_head(llava):
    """The hooks act in the context that entered the block: the app's other requests are untouched."""
    before = _logits(llava)
    with ablate_heads(llava, [(0, 1), (1, 2)]):
        with ThreadPoolExecutor(1) as pool:
            elsewhere = pool.submit(_logits, llava).result()
        here = _logits(llava)
    assert torch.equal(elsewhere, before) and not torch.equal(here, before)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"), n=10, seed=6, size=48, order="reading")


def _projection_inputs(loaded, layer, run):
    """The o_proj inputs of `layer` (a list of (batch, tokens, width) tensors) while `run()` runs; our
    recorder is registered last, so it sees what o_proj receives."""
    seen = []
    projection = loaded.adapter.attention_modules(loaded.model)[layer].o_proj
    handle = projection.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_head_means_are_the_mean_over_every_position_of_the_records(llava, tiny_data):
    records = split_dataset(tiny_data, FAST).train[:4]  # captions of different lengths: batches are padded
    means = head_output_means(llava, records, PROMPT, batch_size=3)
    layer, width = 1, llava.adapter.attention_modules(llava.model)[1].o_proj.in_features
    rows = []
    for record in records:  # one record at a time: no padding
        batch = training_batch(llava, [record], PROMPT)
        batch.pop("labels")
        rows += _projection_inputs(llava, layer, lambda: llava.model(**batch, use_cache=False))
    oracle = torch.cat([row.reshape(-1, width) for row in rows]).double().mean(0).float()
    assert means.positions == sum(row.shape[1] for row in rows) and means.records == 4
    torch.testing.assert_close(means.means[layer].reshape(-1), oracle, atol=1e-6, rtol=1e-5)


def test_mean_mode_puts_each_removed_heads_mean_and_leaves_the_others(llava, tiny_data):
    means = head_output_means(llava, split_dataset(tiny_data, FAST).train[:3], PROMPT)
    heads, layer = _heads(llava), 1
    plain = _projection_inputs(llava, layer, lambda: _logits(llava))[0].unflatten(-1, (heads, -1))
    with ablate_heads(llava, [(layer, 2), (0, 0)], mode="mean", means=means):
        seen = _projection_inputs(llava, layer, lambda: _logits(llava))[0].unflatten(-1, (heads, -1))
    assert torch.equal(seen[0, :, 2], means.means[layer][2].expand_as(seen[0, :, 2]))
    others = [0, 1, 3]  # layer 0's head 0 changes what layer 1 receives, but not how it is laid out
    assert not torch.allclose(seen[..., others, :], torch.zeros_like(seen[..., others, :]))
    with ablate_heads(llava, [(layer, 2)], mode="mean", means=means):
        alone = _projection_inputs(llava, layer, lambda: _logits(llava))[0].unflatten(-1, (heads, -1))
    torch.testing.assert_close(alone[..., others, :], plain[..., others, :])


@pytest.mark.parametrize("heads, message", [([(2, 0)], "head 2:0: layer 2 is not a scored layer"),
                                            ([(1, 4)], "head 1:4 does not exist: each layer has heads 0..3"),
                                            ([(0, 1), (0, 1)], "repeat a head")])
def test_heads_the_model_does_not_have_are_refused(llava, heads, message):
    hooks = _pre_hooks(llava)
    with pytest.raises(InputError, match=message):
        with ablate_heads(llava, heads):
            pytest.fail("the block must not run")
    assert _pre_hooks(llava) == hooks


def test_an_unscored_layer_of_a_hybrid_model_is_refused(qwen3_5):
    with pytest.raises(InputError, match="head 0:0: layer 0 is not a scored layer"):
        with ablate_heads(qwen3_5, [(0, 0)]):
            pass


def test_means_of_another_model_are_refused(llava, demo, tiny_data):
    means = head_output_means(demo, split_dataset(tiny_data, FAST).train[:1], PROMPT)
    with pytest.raises(InputError, match="the head means do not fit layer 1 of this model"):
        with ablate_heads(llava, [(1, 0)], mode="mean", means=means):
            pass
    with pytest.raises(InputError, match="mode 'mean' needs the heads' means"):
        with ablate_heads(llava, [(1, 0)], mode="mean"):
            pass


def test_strategies_parse_and_the_config_refuses_bad_fields():
    assert parse_strategies("top, random") == ("top", "random")
    assert parse_strategies("bottom,2:5,4:0") == ("bottom", ((2, 5), (4, 0)))
    assert AblationConfig(heads="top,1:0").condition_names() == ["top", "list"]
    for kwargs, message in [({"heads": "top,top"}, "names a strategy twice"), ({"heads": "top,middle"}, "heads must be one of"),
                            ({"mode": "noise"}, "mode must be one of zero, mean"), ({"k": 0}, "k must be a whole number of at least 1"),
                            ({"seeds": float("nan")}, "seeds must be a whole number of at least 1"), ({"resamples": 0}, "resamples must be a whole number of at least 1"),
                            ({"seed": 2**32 - 1, "seeds": 2}, "go past the largest seed")]:
        with pytest.raises(InputError, match=message):
            AblationConfig(**kwargs)


def test_key_named_matches_whole_words():
    assert key_named("A big red circle, at the top", "big red circle")
    assert not key_named("a big red circles", "big red circle") and not key_named("a red big circle", "big red circle")


def test_perception_apart_from_formatting():
    assert key_words_named("a red square on the left", "small red circle") == pytest.approx(1 / 3)
    assert key_words_named("A small red circle.", "small red circle") == 1.0
    assert answer_starts_right("green", "Green square") and answer_starts_right("two", "2 circles")
    assert not answer_starts_right("green", "a red square") and not answer_starts_right("green", "")


RANKING = HeadRanking.from_hi(np.array([[0.1, 0.9, 0.2, 0.3], [0.8, 0.05, 0.4, 0.5]]), "test ranking")  # top 2: 0:1, 1:0


@pytest.fixture(scope="module")
def ablated(llava, tiny_data, tmp_path_factory):
    """An experiment on the tiny LLaVA, with the hooks counted at each evaluation."""
    hooks_seen = []
    evaluate = ablation.evaluate_held_out

    def counting(loaded, split, data):
        hooks_seen.append(_pre_hooks(loaded))
        return evaluate(loaded, split, data)

    config = AblationConfig(k=2, seeds=2, resamples=50, data=FAST)
    patch = pytest.MonkeyPatch()
    patch.setattr(ablation, "evaluate_held_out", counting)
    try:
        result = run_ablation(llava, tiny_data, config, RANKING)
    finally:
        patch.undo()
    out = tmp_path_factory.mktemp("ablation")
    return result, write_ablation_report(result, out), out, hooks_seen


def test_each_condition_is_evaluated_with_its_heads_removed(ablated, llava):
    result, _, _, hooks_seen = ablated
    layers = llava.adapter.scored_layers(llava.model)
    assert list(result.runs) == ["baseline", "top", "random", "bottom"]
    assert result.runs["top"][0].heads == ((0, 1), (1, 0)) and result.runs["bottom"][0].heads == ((0, 0), (1, 1))
    assert [run.heads for run in result.runs["random"]] == [select_heads("random", layers, 4, 2, None, seed) for seed in (0, 1)]
    touched = [len({layer for layer, _ in run.heads}) for runs in result.runs.values() for run in runs]
    assert [seen - hooks_seen[0] for seen in hooks_seen] == touched  # baseline: 0 hooks; then one per touched layer
    ids = [caption["id"] for caption in result.runs["baseline"][0].captions]
    assert ids == split_dataset(result.dataset, FAST).held_out.ids and all(
        [c["id"] for c in run.captions] == ids for runs in result.runs.values() for run in runs)


def test_the_report_holds_the_intervals_it_describes(ablated):
    result, data, out, _ = ablated
    assert {"report.md", "results.json", "captions.jsonl", "ablation.png"} == {p.name for p in out.iterdir()}
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(data))
    conditions = data["conditions"]
    assert conditions["top"]["heads"] == ["0:1,1:0"] and conditions["random"]["seeds"] == [0, 1]
    for name in ("baseline", "top", "bottom"):
        metrics, run = conditions[name]["metrics"], result.runs[name][0]
        assert set(metrics) == {"bleu4", "rouge_l", "cider", "exact", "key_named", "key_words"}
        words = [c["key_words"] for c in run.captions]
        assert metrics["key_words"]["mean"] == pytest.approx(np.mean(words))
        assert metrics["key_words"]["interval"].startswith("bootstrap") and metrics["key_words"]["low"] <= metrics["key_words"]["high"]
        assert all(w == 1.0 for w, c in zip(words, run.captions) if c["key_named"])  # the whole phrase: every word
        named = [c["key_named"] for c in run.captions]
        assert (metrics["key_named"]["low"], metrics["key_named"]["high"]) == accuracy_interval(sum(named), len(named))
        assert metrics["key_named"]["mean"] == sum(named) / len(named)
        assert metrics["bleu4"]["interval"].startswith("bootstrap") and metrics["bleu4"]["low"] <= metrics["bleu4"]["high"]
    random_cider = conditions["random"]["metrics"]["cider"]
    expected = mean_interval([run.metrics["cider"] for run in result.runs["random"]])
    assert (random_cider["low"], random_cider["high"]) == pytest.approx((expected["low"], expected["high"]))
    assert list(data["differences"]) == ["top - random", "top - bottom", "top - baseline", "random - baseline", "bottom - baseline"]
    top_random = data["differences"]["top - random"]["cider"]
    assert top_random["difference"] == pytest.approx(result.runs["top"][0].metrics["cider"] - expected["mean"])
    assert top_random["high"] - top_random["low"] == pytest.approx(expected["high"] - expected["low"])
    assert data["differences"]["top - bottom"]["key_named"]["interval"] == "paired bootstrap over the held-out records"
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == data["split"]["held_out"] and set(lines[0]["generated"]) == {
        "baseline", "top", "random-seed0", "random-seed1", "bottom"}
    report = (out / "report.md").read_text()
    assert "| top | 0:1,1:0 |" in report and "**top - random**" in report and "Wilson" in report and "paired bootstrap" in report


def _score_json(path):
    path.write_text(json.dumps(RANKING.to_json()))
    return path


def test_cli_ablate_caption_end_to_end(llava_dir, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["ablate", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", str(out), "-k", "2", "--seeds", "2",
            "--max-new-tokens", "3", "--no-meteor", "--eval-fraction", "0.3", "--resamples", "20", "--mode", "mean",
            "--mean-records", "2", "--ranking", str(_score_json(tmp_path / "score.json"))]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "condition 1/5: baseline" in err and "condition 4/5: random (seed 1)" in err and "report.md" in err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["mode"] == "mean" and results["means"]["records"] == 2
    assert results["ranking"]["source"].endswith("score.json") and "key_named" in results["conditions"]["top"]["metrics"]
    assert main(argv) == 0  # a rerun replaces an earlier ablation's files


def test_cli_ablate_vqa_reports_answer_accuracy(llava_dir, tmp_path):
    folder = write_vqa_dataset(tmp_path / "vqa", n=10)
    out = tmp_path / "out"
    argv = ["ablate", "--model", str(llava_dir), "--dataset", str(folder), "--out", str(out), "--task", "vqa",
            "--heads", "top,bottom,1:3", "-k", "1", "--max-new-tokens", "2", "--eval-fraction", "0.4", "--resamples", "20",
            "--ranking", str(_score_json(tmp_path / "score.json"))]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["conditions"]) == ["baseline", "top", "bottom", "list"]
    assert results["conditions"]["list"]["heads"] == ["1:3"] and results["conditions"]["top"]["heads"] == ["0:1"]
    for entry in results["conditions"].values():
        assert list(entry["metrics"]) == ["accuracy", "first_word", "extra_words"]
        assert all(entry["metrics"][name]["interval"].startswith("Wilson") for name in entry["metrics"])
    assert set(results["differences"]["top - bottom"]) == {"accuracy", "first_word", "extra_words"}
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert rows and all(set(row["generated"]) >= {"baseline", "top"} for row in rows)
    assert "closed-form VQA" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--heads", "top,middle"], "heads must be one of top, bottom, random or layer:head pairs"),
    (["-k", "9"], "k must be between 1 and the language model's 8 scored heads, got 9"),
    (["--heads", "5:0"], "head 5:0: layer 5 is not a scored layer"),
    (["--seeds", "0"], "seeds must be a whole number of at least 1"),
    (["--ranking", "nope.json"], "does not exist"),
    (["--task", "vqa"], "the VQA task needs records whose `prompt` is the question"),
    (["--out", "notes.txt"], "is a file, not a folder"),
    (["--out", "mine"], "is not an ablation folder"),
])
def test_cli_ablate_bad_input_exits_2_with_one_line(llava_dir, tiny_data, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my own report")
    monkeypatch.setattr(ablation, "dataset_head_ranking", lambda *args: pytest.fail("bad input must be refused before scoring"))
    argv = ["ablate", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", "out", "--max-new-tokens", "2"] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists() and (tmp_path / "mine" / "report.md").read_text() == "my own report"


def test_cli_ablate_may_hold_out_the_whole_dataset_unless_it_needs_means(llava_dir, tiny_data, tmp_path, capsys):
    """Zero ablation only evaluates: --eval-dataset may be --dataset itself; mean ablation needs
    records outside the held-out set, and says so before any work."""
    argv = ["ablate", "--model", str(llava_dir), "--dataset", str(tiny_data), "--eval-dataset", str(tiny_data), "-k", "1",
            "--heads", "top", "--max-new-tokens", "2", "--no-meteor", "--resamples", "20",
            "--ranking", str(_score_json(tmp_path / "score.json"))]
    assert main([*argv, "--out", str(tmp_path / "zero")]) == 0
    results = json.loads((tmp_path / "zero" / "results.json").read_text())
    assert results["split"]["held_out"] == len(scan_records(tiny_data))
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "mean"), "--mode", "mean"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mean ablation takes the heads' mean outputs" in err and not (tmp_path / "mean").exists()


def test_check_ablation_folder_accepts_new_empty_and_earlier_ablations(tmp_path):
    assert check_ablation_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "results.json").write_text("{}")
    assert check_ablation_folder(tmp_path / "earlier") == tmp_path / "earlier"


def test_one_image_without_heads_regenerates_and_rescores_only_what_follows_them(demo):
    """The explorer's view: with two heads of layer 1 removed, layers 0 and 1 attend as before (a head's
    slice is removed after its attention), later layers' maps move, and the descriptions are the
    model's own with and without the heads."""
    from PIL import Image

    from hi_core.method.analysis import analyze_image
    from hi_core.model.captioning import generate_description
    from hi_core.data.synth import make_scene

    scene = make_scene(np.random.default_rng(3))
    image, mask = Image.fromarray(scene.image), scene.masks[scene.key]
    intact = analyze_image(demo, image, mask, scene.text)
    hooks = _pre_hooks(demo)
    result = head_ablation.ablate_image(demo, image, mask, scene.text, [(1, 5), (1, 2)])
    assert result.heads == ((1, 2), (1, 5)) and _pre_hooks(demo) == hooks
    assert result.intact_text == generate_description(demo, image)
    with ablate_heads(demo, [(1, 2), (1, 5)]):
        assert result.ablated_text == generate_description(demo, image)
    np.testing.assert_array_equal(result.ablated.maps[:2], intact.maps[:2])
    assert not np.allclose(result.ablated.maps[2:], intact.maps[2:], atol=1e-4)
    assert result.ablated.text == intact.text == scene.text
    with pytest.raises(InputError, match="at least one head"):
        head_ablation.ablate_image(demo, image, mask, scene.text, [])
