"""`validate` on the demo model: effects, rankings and the dose-response are what they claim to be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hi_core.causal.head_ablation import ablate_heads, output_projections
from hi_core.data.datasets import write_synthetic
from hi_core.tuning.finetune import DataConfig, split_dataset
from hi_core.model.loading import LoadConfig, load_model
from hi_core.causal.head_effects import dose_points, evaluate, prepare_batches
from hi_core.causal.validation import ValidationConfig, gradient_importance, layer_matched, ranked, spatial_entropy, validate
from hi_core.causal.validation_report import write_validation_report

PROMPT = DataConfig().prompt
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_model():
    return load_model(LoadConfig("demo"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_synthetic(folder, 24, seed=3)
    return folder


@pytest.fixture(scope="module")
def held_out(demo_model, scenes):
    split = split_dataset(scenes, DataConfig(eval_fraction=0.25))
    return [split.held_out[i] for i in range(len(split.held_out))]


def test_loss_is_the_cross_entropy_of_the_key_phrase_tokens(demo_model, held_out):
    record = held_out[0]
    batch = prepare_batches(demo_model, [record], "caption", PROMPT, 1)[0]
    loss, correct = evaluate(demo_model, [batch])
    ids = batch.tensors["input_ids"][0]
    with torch.inference_mode():
        logits = demo_model.model(**batch.tensors, use_cache=False).logits[0]
    predicting = batch.positions[batch.columns]
    expected = torch.nn.functional.cross_entropy(logits[predicting], ids[predicting + 1])
    assert loss[0] == pytest.approx(float(expected), rel=1e-5)
    assert bool(correct[0]) == bool(logits[predicting[0]].argmax() == ids[predicting[0] + 1])
    decoded = demo_model.processor.tokenizer.decode(ids[predicting + 1])
    assert record.key_phrase.split()[-1] in decoded  # the scored tokens are the key phrase's


def test_removing_no_head_changes_nothing_and_removing_one_does(demo_model, held_out):
    batches = prepare_batches(demo_model, held_out, "caption", PROMPT, 4)
    loss, correct = evaluate(demo_model, batches)
    again, correct_again = evaluate(demo_model, batches, ())
    np.testing.assert_array_equal(loss, again)
    np.testing.assert_array_equal(correct, correct_again)
    removed, _ = evaluate(demo_model, batches, [(0, 0)])
    assert not np.allclose(removed, loss)


def test_gradient_importance_is_the_derivative_of_the_loss_in_a_heads_gate(demo_model, held_out):
    batch = prepare_batches(demo_model, held_out[:1], "caption", PROMPT, 1)
    importance = gradient_importance(demo_model, batch)
    layer, head = 0, 1
    projection = output_projections(demo_model)[layer]
    width = projection.in_features // importance.shape[1]
    columns = slice(head * width, (head + 1) * width)
    original = projection.weight.data[:, columns].clone()
    losses = []
    try:
        for scale in (1 + 1e-3, 1 - 1e-3):  # o_proj(x * g) = (W * g) x on the head's columns
            projection.weight.data[:, columns] = original * scale
            losses.append(evaluate(demo_model, batch)[0][0])
    finally:
        projection.weight.data[:, columns] = original
    assert importance[layer, head] == pytest.approx(abs(losses[0] - losses[1]) / 2e-3, rel=1e-2)


def test_gradient_importance_builds_no_graph_through_the_vision_tower(demo_model, held_out, monkeypatch):
    """The image features are computed without gradients: on a real model the vision tower's graph is most of the
    memory (SmolVLM-256M: +11 GB for one record)."""
    inner = type(demo_model.model.model)
    original, seen = inner.get_image_features, []

    def get_image_features(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        tensors = output if isinstance(output, torch.Tensor) else output.pooler_output
        seen.append(torch.is_grad_enabled() or any(t.requires_grad for t in tensors))
        return output

    monkeypatch.setattr(inner, "get_image_features", get_image_features)
    importance = gradient_importance(demo_model, prepare_batches(demo_model, held_out[:2], "caption", PROMPT, 1))
    assert seen == [False, False] and np.nanmax(importance) > 0


def test_orders_and_points():
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    scores = np.arange(12.0).reshape(3, 4)
    assert ranked(scores, heads)[:2] == [(2, 3), (2, 2)]
    order = ranked(scores, heads)[:6]
    matched = layer_matched(order, heads, np.random.default_rng(0))
    assert [layer for layer, _ in matched] == [layer for layer, _ in order]
    assert len(set(matched)) == len(matched)
    assert dose_points(12) == [0, 1, 2, 3, 4, 6, 9, 12]
    corners = np.zeros((5, 5))
    corners[[0, 0, 4, 4], [0, 4, 0, 4]] = 1  # four separate regions of one cell: entropy log 4
    assert spatial_entropy(corners) == pytest.approx(np.log(4))
    assert spatial_entropy(np.pad(np.ones((2, 2)), 1)) == 0.0  # one compact region


def test_validate_end_to_end(demo_model, scenes, tmp_path):
    config = ValidationConfig(heads=6, orders=3, max_k=3, ranking_records=2, mean_records=2, batch_size=4,
                              data=DataConfig(eval_fraction=0.25))
    validation = validate(demo_model, scenes, config)
    assert len(validation.heads) == 6 and validation.ks == [0, 1, 2, 3]
    baseline = validation.baseline.mean(axis=0)
    for name, curves in validation.curves.items():  # k = 0: the model as it is, for every order
        np.testing.assert_allclose(curves[:, 0], np.broadcast_to(baseline, curves[:, 0].shape))
    assert set(validation.curves) == {"hi", "mass", "localization", "gradient", "random", "layer-matched"}
    assert validation.effects["zero"].shape == (6, len(validation.record_ids), 2)
    data = write_validation_report(validation, tmp_path / "out", resamples=50, permutations=50)
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert saved["correlations"]["zero"]["loss"]["hi"]["spearman"] == data["correlations"]["zero"]["loss"]["hi"]["spearman"]
    assert {"report.md", "effect_vs_hi.png", "dose_response.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert "Dose-response" in (tmp_path / "out" / "report.md").read_text()


def test_reusing_passes_changes_no_number(demo_model, scenes, monkeypatch):
    """`validate` reuses image features and lower layers' outputs between passes (`replay.py`): its effects and
    curves equal those of every pass computed whole."""
    import contextlib

    import hi_core.causal.head_effects as head_effects

    config = ValidationConfig(orders=3, heads=5, max_k=4, ranking_records=2, mean_records=2, data=DataConfig(eval_fraction=0.25))
    reused = validate(demo_model, scenes, config)
    monkeypatch.setattr(head_effects, "replaying", lambda plan: contextlib.nullcontext())
    whole = validate(demo_model, scenes, config)
    for mode in config.modes:
        np.testing.assert_allclose(reused.effects[mode], whole.effects[mode], atol=1e-6)
    for name in whole.curves:
        np.testing.assert_allclose(reused.curves[name], whole.curves[name], atol=1e-6)
    assert reused.curves["random"][:, 1:].std() > 0  # the orders removed heads that matter


def test_a_given_hi_is_validated_and_the_report_says_where_it_came_from(demo_model, scenes, tmp_path):
    """Also one random order: its 'band' is a single curve, still drawn as a band."""
    config = ValidationConfig(modes=("zero",), heads=3, orders=1, max_k=2, ranking_records=1, mean_records=1,
                              data=DataConfig(eval_fraction=0.25))
    given = np.arange(48.0).reshape(6, 8) / 48  # the last heads first: not HI of the ranking record
    validation = validate(demo_model, scenes, config, hi=given)
    np.testing.assert_array_equal(validation.scores["hi"], given)
    assert validation.orders["hi"][0] == [[5, 7], [5, 6]] and validation.split["hi"] == "given"
    write_validation_report(validation, tmp_path / "out", resamples=20, permutations=20)
    assert "HI as given" in (tmp_path / "out" / "report.md").read_text()
    computed = validate(demo_model, scenes, config)
    assert computed.split["hi"] == "ranking records" and not np.array_equal(computed.scores["hi"], given)


def test_removal_is_undone_after_validation(demo_model, held_out):
    batches = prepare_batches(demo_model, held_out[:2], "caption", PROMPT, 2)
    before = evaluate(demo_model, batches)[0]
    with ablate_heads(demo_model, [(1, 1)]):
        pass
    np.testing.assert_array_equal(evaluate(demo_model, batches)[0], before)


def test_the_cli_writes_the_report_and_refuses_bad_input(scenes, tmp_path, capsys):
    from hi_core.cli.main import main

    out = tmp_path / "validation"
    code = main(["validate", "--model", "demo", "--dataset", str(scenes), "--out", str(out), "--orders", "2",
                 "--sample-heads", "4", "--max-k", "2", "--ranking-records", "2", "--mean-records", "2", "--modes", "zero",
                 "--eval-fraction", "0.25", "--resamples", "20", "--permutations", "20", "--threads", "1"])
    assert code == 0
    data = json.loads((out / "validation.json").read_text())
    assert len(data["heads_removed"]) == 4 and list(data["correlations"]) == ["zero"]
    assert data["dose_response"]["ks"] == [0, 1, 2]
    capsys.readouterr()
    assert main(["validate", "--model", "demo", "--dataset", str(scenes), "--out", str(tmp_path / "x"), "--modes", "zero,half"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: mode must be one of zero, mean, got 'half'"]
    assert not (tmp_path / "x").exists()


def test_a_validation_over_the_time_limit_is_refused_before_the_long_part(demo_model, scenes):
    from hi_core.base.errors import InputError

    seen = []
    config = ValidationConfig(orders=50, ranking_records=1, mean_records=1, data=DataConfig(eval_fraction=0.25))
    with pytest.raises(InputError, match=r"would take about .* this deployment allows 0 min"):
        validate(demo_model, scenes, config, progress=lambda stage, done, total: seen.append(stage), time_limit_s=1e-3)
    assert "estimate" in seen and not any(stage.startswith(("removing", "dose")) for stage in seen)


def test_the_gradient_gates_leave_another_threads_forward_alone(demo_model, held_out, monkeypatch):
    """The gates are hooks on the shared model's o_proj: a forward of another session (another thread, another batch
    size) while they are installed must run as if they were not."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import hi_core.causal.validation as validation

    ours = prepare_batches(demo_model, held_out[:2], "caption", PROMPT, 2)
    theirs = prepare_batches(demo_model, held_out[2:3], "caption", PROMPT, 1)
    expected = evaluate(demo_model, theirs)[0]
    seen, original, main = [], validation.token_losses, threading.current_thread()

    def with_another_session(loaded, batch):
        if threading.current_thread() is main and not seen:  # while the gates are installed
            with ThreadPoolExecutor(1) as pool:
                seen.append(pool.submit(evaluate, loaded, theirs).result()[0])
        return original(loaded, batch)

    monkeypatch.setattr(validation, "token_losses", with_another_session)
    gradient_importance(demo_model, ours)
    np.testing.assert_array_equal(seen[0], expected)
