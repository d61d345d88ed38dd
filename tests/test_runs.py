"""Run folders: a standard peft adapter that reloads and reproduces the logits, run.json, reuse of
finished runs, refusal of other settings, and nothing left behind by an interrupted run; the VQA task
(each held-out record asked its own question, answer accuracy with an interval in run.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import hi_core.tuning.run_folders as run_folders
import hi_core.tuning.runs as runs
from hi_core.data.datasets import write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig, FinetuneConfig, split_dataset
from hi_core.tuning.training import TrainCallbacks, TrainingCancelled, training_batch
from hi_core.method.layer_selection import Ranking
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.metrics import accuracy_interval, answer_correct
from hi_core.tuning.rankings import reuse_ranking
from hi_core.tuning.run_folders import RunRecord
from hi_core.tuning.runs import BeforeAfter, run_before_after, run_finetune, run_pretrained

from .vqa_data import write_vqa_dataset

FAST = DataConfig(max_new_tokens=4, meteor=False, eval_fraction=0.3)
CONFIG = FinetuneConfig(layers="top", k=1, rank=4, steps=3, batch_size=2, lr=1e-2, dropout=0.0, data=FAST)
RANKING = Ranking.from_scores(torch.tensor([0.2, 0.6]).numpy(), "test ranking")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"), n=10, seed=5, size=48, order="reading")


@pytest.fixture(scope="module")
def finished(llava, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "top"
    return out, run_finetune(llava, tiny_data, out, CONFIG, RANKING)


def test_run_folder_holds_adapter_run_json_and_captions(finished):
    out, record = finished
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "run.json", "captions.jsonl"}
    assert not list(out.parent.glob(".*"))  # no partial folder left
    saved = json.loads((out / "run.json").read_text())
    assert RunRecord.from_json(saved) == record
    assert saved["layers"] == [1] and saved["num_layers"] == 2 and len(saved["losses"]) == 3
    assert saved["trainable_share"] == pytest.approx(saved["trainable_parameters"] / saved["total_parameters"])
    assert saved["split"]["train"] + saved["split"]["held_out"] == 10
    assert set(saved["metrics"]) >= {"bleu4", "rouge_l", "cider", "exact"}
    assert any("SPICE" in note for note in saved["metric_notes"]) and any("METEOR" in note for note in saved["metric_notes"])
    assert saved["samples"] and set(saved["samples"][0]) == {"id", "reference", "generated"}
    assert set(saved["timings"]) >= {"train_seconds", "seconds_per_step", "eval_seconds", "started", "finished"}
    assert saved["ranking"]["source"] == "test ranking" and saved["settings"]["ranking"]["layers"] == [1, 0]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16


def test_adapter_reloads_with_peft_and_matches_the_merged_weights(finished, llava_dir, tiny_data):
    """Oracle: W + (alpha / r) B A, computed by hand from the saved tensors on a fresh base model."""
    from peft import PeftModel

    out, _ = finished
    reloaded = load_model(LoadConfig(str(llava_dir), device="cpu"))
    merged = load_model(LoadConfig(str(llava_dir), device="cpu"))
    batch = training_batch(reloaded, split_dataset(tiny_data, FAST).train[:2], FAST.prompt)
    batch.pop("labels")
    with torch.no_grad():
        base_logits = merged.model(**batch).logits
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(".layers.1.self_attn." in key and "vision" not in key for key in tensors)
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            module_name = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            merged.model.get_submodule(module_name).weight += (16 / 4) * b @ a
        merged_logits = merged.model(**batch).logits
        peft_model = PeftModel.from_pretrained(reloaded.model, out).eval()
        peft_logits = peft_model(**batch).logits
    torch.testing.assert_close(peft_logits, merged_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(peft_logits, base_logits)  # the adapter does something


def test_a_rerun_reuses_the_finished_run(finished, llava, tiny_data, monkeypatch):
    out, record = finished
    stamp = (out / "run.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(runs, "train_lora", lambda *args, **kwargs: calls.append(1) or [])
    assert run_finetune(llava, tiny_data, out, CONFIG, RANKING) == record
    assert calls == [] and (out / "run.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "change, message",
    [({"steps": 4}, "other settings (config)"), ({"layers": "bottom"}, "other settings (config)")],
)
def test_a_folder_with_other_settings_is_refused(finished, llava, tiny_data, change, message):
    out, _ = finished
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_finetune(llava, tiny_data, out, replace(CONFIG, **change), RANKING)


def test_another_ranking_is_other_settings(finished, llava, tiny_data):
    out, _ = finished
    with pytest.raises(InputError, match=r"other settings \(ranking\)"):
        run_finetune(llava, tiny_data, out, CONFIG, Ranking.from_scores(torch.tensor([0.2, 0.6]).numpy(), "elsewhere"))


def test_a_folder_that_is_not_a_run_is_refused(llava, tiny_data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not a run folder"):
        run_finetune(llava, tiny_data, tmp_path, CONFIG, RANKING)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _tree(folder):
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else "folder") for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("target, message", [("notes.txt", "is a file, not a folder"), ("notes.txt/run", "is a file, not a folder"),
                                             ("mine", "exists and is not a run folder"), ("damaged", "is not a run.json written by a run")])
def test_a_run_is_never_written_over_what_the_user_owns(llava, tiny_data, tmp_path, target, message):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "run.json").write_text("{not json")
    before = _tree(tmp_path)
    with pytest.raises(InputError, match=message):
        run_finetune(llava, tiny_data, tmp_path / target, CONFIG, RANKING)
    with pytest.raises(InputError, match=message):
        run_pretrained(llava, tiny_data, tmp_path / target, FAST)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("appears", ["file", "folder with a file"])
def test_run_folder_does_not_replace_what_appeared_meanwhile(tmp_path, appears):
    target = tmp_path / "run"
    with pytest.raises(InputError):
        with run_folders.run_folder(target) as partial:
            (partial / "run.json").write_text("{}")
            if appears == "file":
                target.write_text("theirs")
            else:
                target.mkdir()
                (target / "theirs.txt").write_text("theirs")
    assert _tree(tmp_path) == ({"run": b"theirs"} if appears == "file" else {"run": "folder", "run/theirs.txt": b"theirs"})


def test_run_folder_takes_the_place_of_an_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    with run_folders.run_folder(tmp_path / "run") as partial:
        (partial / "run.json").write_text("{}")
    assert _tree(tmp_path) == {"run": "folder", "run/run.json": b"{}"}


@pytest.mark.parametrize("stop", ["cancel", "interrupt"])
def test_an_interrupted_run_leaves_nothing(llava, tiny_data, tmp_path, stop):
    def on_step(step, loss):
        if step == 2 and stop == "interrupt":
            raise KeyboardInterrupt

    callbacks = TrainCallbacks(on_step=on_step, should_stop=(lambda: True) if stop == "cancel" else None)
    with pytest.raises(TrainingCancelled if stop == "cancel" else KeyboardInterrupt):
        run_finetune(llava, tiny_data, tmp_path / "run", CONFIG, RANKING, callbacks=callbacks)
    assert list(tmp_path.iterdir()) == []
    assert not any("lora" in name for name, _ in llava.model.named_modules())


def test_pretrained_run_is_the_untuned_baseline(llava, tiny_data, tmp_path):
    record = run_pretrained(llava, tiny_data, tmp_path / "pretrained", FAST)
    assert record.strategy == "pretrained" and record.layers == [] and record.trainable_parameters == 0 and record.losses == []
    assert set(record.metrics) >= {"bleu4", "cider"}
    assert json.loads((tmp_path / "pretrained" / "run.json").read_text())["trainable_share"] == 0
    assert not (tmp_path / "pretrained" / "adapter_model.safetensors").exists()


def test_data_parallel_run_on_two_cpu_processes(llava_dir, tiny_data, tmp_path):
    """torchrun starts 2 processes (what `accelerate launch` does on GPUs): both train on their
    slices, the main one alone captions and writes; the folder is one complete run."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hi_core", "finetune",
               "--model", str(llava_dir), "--dataset", str(tiny_data), "--layers", "1", "--steps", "2", "--batch-size", "2",
               "--rank", "4", "--max-new-tokens", "2", "--no-meteor", "--eval-fraction", "0.3", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("layers [1]") == 1  # reported once, by the main process
    record = json.loads((out / "run.json").read_text())
    assert record["layers"] == [1] and len(record["losses"]) == 2 and record["metrics"]
    assert (out / "adapter_model.safetensors").is_file() and not list(tmp_path.glob(".*"))


def _scored(layer_scores, images=3):
    """A DatasetAnalysis standing for the Dataset tab's scores (only layer_scores and images matter here)."""
    from hi_core.data.dataset_analysis import DatasetAnalysis, DatasetConfig

    hi = torch.zeros(len(layer_scores), 2).numpy()
    return DatasetAnalysis(model="m", family="f", dataset="d", queries="producing", images=[None] * images, hi=hi,
                           hi_low=hi, hi_high=hi, mass=hi, layer_scores=torch.tensor(layer_scores).numpy(),
                           skipped=[], config=DatasetConfig())


def test_reuse_ranking_only_for_the_same_model_config_and_the_same_records(tmp_path):
    scored_folder, same, other = tmp_path / "scored", tmp_path / "same", tmp_path / "other"
    for folder, text in ((scored_folder, '{"id": "a"}\n'), (same, '{"id": "a"}\n'), (other, '{"id": "b"}\n')):
        folder.mkdir()
        (folder / "data.jsonl").write_text(text)
    load = LoadConfig("demo", device="cpu")
    scored = _scored([0.1, 0.7, 0.4])
    ranking = reuse_ranking(scored, load, scored_folder, LoadConfig("demo", device="cpu"), same)
    assert ranking is not None and ranking.layers == (1, 2, 0) and ranking.scores == pytest.approx((0.7, 0.4, 0.1))
    assert "3 images" in ranking.source
    assert reuse_ranking(scored, load, scored_folder, load, scored_folder).layers == (1, 2, 0)
    assert reuse_ranking(scored, load, scored_folder, load, other) is None  # other records
    assert reuse_ranking(scored, load, scored_folder, LoadConfig("demo", device="cpu", lora="x"), same) is None  # other model
    assert reuse_ranking(None, load, scored_folder, load, same) is None
    assert reuse_ranking(scored, None, scored_folder, load, same) is None
    assert reuse_ranking(scored, load, None, load, same) is None
    assert reuse_ranking(scored, load, tmp_path / "gone", load, same) is None  # the scored files were cleaned up


@pytest.fixture(scope="module")
def before_after(llava, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("before-after")
    (out / "dataset").mkdir()  # the caller's own things beside the two runs stay
    stages = []
    return out, stages, run_before_after(llava, tiny_data, out, CONFIG, RANKING, on_stage=stages.append)


def test_before_after_is_the_untuned_and_the_tuned_model_on_one_split(before_after, llava, tiny_data):
    out, stages, result = before_after
    assert isinstance(result, BeforeAfter) and result.ranking == RANKING
    assert result.before.strategy == "pretrained" and result.after.strategy == "top" and result.after.layers == [1]
    assert result.before.split == result.after.split and result.before.split["held_out"] > 0
    before_ids = [json.loads(line)["id"] for line in (out / "pretrained" / "captions.jsonl").read_text().splitlines()]
    after_ids = [json.loads(line)["id"] for line in (out / "adapter" / "captions.jsonl").read_text().splitlines()]
    assert before_ids == after_ids == [r.id for r in split_dataset(tiny_data, FAST).held_out]
    assert RunRecord.from_json(json.loads((out / "pretrained" / "run.json").read_text())) == result.before
    assert RunRecord.from_json(json.loads((out / "adapter" / "run.json").read_text())) == result.after
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "dataset").is_dir()
    assert [stage.split(" ")[0] for stage in stages] == ["reading", "captioning", "training"]
    assert not any("lora" in name for name, _ in llava.model.named_modules())


def test_before_after_reuses_both_finished_runs(before_after, llava, tiny_data, monkeypatch):
    out, _, result = before_after
    monkeypatch.setattr(runs, "train_lora", lambda *args, **kwargs: pytest.fail("trained again"))
    monkeypatch.setattr(runs, "generate_captions", lambda *args, **kwargs: pytest.fail("captioned again"))
    assert run_before_after(llava, tiny_data, out, CONFIG, RANKING) == result


@pytest.mark.parametrize("config, ranking, message", [
    (replace(CONFIG, k=3), RANKING, "k must be between 1 and the language model's 2 layers, got 3"),
    (CONFIG, None, "needs a ranking"),
    (replace(CONFIG, layers="0,2"), None, "layer 2 does not exist"),
])
def test_before_after_checks_the_layer_choice_before_any_work(llava, tiny_data, tmp_path, monkeypatch, config, ranking, message):
    stages = []
    with pytest.raises(InputError, match=message):
        run_before_after(llava, tiny_data, tmp_path / "out", config, ranking, on_stage=stages.append)
    assert stages == [] and not (tmp_path / "out").exists()


def test_before_after_stops_where_on_stage_raises(llava, tiny_data, tmp_path):
    def on_stage(text):
        if text == "training":
            raise TrainingCancelled("cancelled before training started")

    with pytest.raises(TrainingCancelled):
        run_before_after(llava, tiny_data, tmp_path, CONFIG, RANKING, on_stage=on_stage)
    assert (tmp_path / "pretrained" / "run.json").is_file() and not (tmp_path / "adapter").exists()


def test_a_vqa_run_asks_each_held_out_record_its_question_and_reports_answer_accuracy(llava, tmp_path, monkeypatch):
    folder = write_vqa_dataset(tmp_path / "vqa", n=12, prompts="some")
    asked = []
    original = runs.generate_captions

    def spy(loaded, images, prompt, *args):
        asked.append(list(prompt))
        return original(loaded, images, prompt, *args)

    monkeypatch.setattr(runs, "generate_captions", spy)
    data = replace(FAST, task="vqa", eval_fraction=0.5, max_new_tokens=2)
    config = replace(CONFIG, layers="all", data=data)
    record = run_finetune(llava, folder, tmp_path / "run", config)
    split = split_dataset(folder, data)
    assert asked == [[r.prompt or data.prompt for r in split.held_out]]
    assert any(r.prompt for r in split.held_out) and any(not r.prompt for r in split.held_out)  # both kinds were asked
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["task"] == "vqa" and saved["settings"]["config"]["data"]["task"] == "vqa" and RunRecord.from_json(saved) == record
    captions = [json.loads(line) for line in (tmp_path / "run" / "captions.jsonl").read_text().splitlines()]
    assert [c["id"] for c in captions] == [r.id for r in split.held_out]
    assert [c.get("prompt") for c in captions] == [r.prompt for r in split.held_out]
    correct = [answer_correct(c["reference"], c["generated"]) for c in captions]  # the oracle: the metric on the saved answers
    assert [c["correct"] for c in captions] == correct
    assert saved["metrics"] == {"accuracy": sum(correct) / len(correct)}
    low, high = accuracy_interval(sum(correct), len(correct))
    assert saved["metric_intervals"] == {"accuracy": {"low": low, "high": high}}
    pretrained = run_pretrained(llava, folder, tmp_path / "pretrained", data)
    assert pretrained.task == "vqa" and set(pretrained.metrics) == {"accuracy"} and "accuracy" in pretrained.metric_intervals


def test_a_vqa_run_on_records_without_questions_is_refused_before_any_work(llava, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "train_lora", lambda *args, **kwargs: pytest.fail("trained"))
    data = replace(FAST, task="vqa")
    for run in (lambda: run_finetune(llava, tiny_data, tmp_path / "run", replace(CONFIG, data=data), RANKING),
                lambda: run_pretrained(llava, tiny_data, tmp_path / "run", data),
                lambda: run_before_after(llava, tiny_data, tmp_path / "run", replace(CONFIG, data=data), RANKING),
                lambda: run_finetune(llava, write_vqa_dataset(tmp_path / "vqa", n=4), tmp_path / "run", replace(CONFIG, data=data),
                                     RANKING, eval_dataset=tiny_data)):
        with pytest.raises(InputError, match="the VQA task needs records whose `prompt` is the question"):
            run()
    assert not (tmp_path / "run").exists()


def test_runs_written_before_tasks_are_reused_as_caption_runs(finished, llava, tiny_data, tmp_path, monkeypatch):
    out, record = finished
    old = tmp_path / "old"
    shutil.copytree(out, old)
    saved = json.loads((old / "run.json").read_text())
    del saved["settings"]["config"]["data"]["task"], saved["task"], saved["metric_intervals"]  # as written before tasks
    (old / "run.json").write_text(json.dumps(saved))
    monkeypatch.setattr(runs, "train_lora", lambda *args, **kwargs: pytest.fail("trained again"))
    again = run_finetune(llava, tiny_data, old, CONFIG, RANKING)
    assert again.task == "caption" and again.metrics == record.metrics and again.metric_intervals == {}
