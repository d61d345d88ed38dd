"""LoRA on chosen layers: exact targeting and parameter counts, training that changes only the
adapter, labels on the description + eos, the held-out split, records read lazily (per batch, and a bad
file failing then, naming its record), cancellation, the finetune CLI."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

import hi_core.tuning.finetune as finetune
from hi_core.cli.main import main
from hi_core.data.datasets import read_dataset, write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig, DatasetRecords, FinetuneConfig, check_task, has_prompts, is_held_out, split_dataset
from hi_core.tuning.training import TrainCallbacks, TrainingCancelled, TrainingDiverged, lora_attached, lora_config, train_lora, trainable_parameters, training_batch
from hi_core.tuning.runs import run_pretrained


from .vqa_data import QUESTIONS, write_vqa_dataset

FAST = DataConfig(max_new_tokens=4, meteor=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"), n=12, seed=3, size=48, order="reading")


@pytest.fixture(scope="module")
def records(tiny_data):
    return list(read_dataset(tiny_data))


def lora_modules(model):
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


@pytest.mark.parametrize("layers", [(0,), (1,), (0, 1)])
def test_lora_wraps_only_the_chosen_layers_attention_projections(llava, layers):
    config = FinetuneConfig(layers=layers, rank=4)
    # independent count: rank * (in + out) for every q/k/v/o projection of the chosen text layers
    expected = 0
    for layer in layers:
        attention = llava.model.model.language_model.layers[layer].self_attn
        expected += sum(4 * (p.in_features + p.out_features) for p in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj))
    with lora_attached(llava, lora_config(llava, layers, config)) as peft_model:
        wrapped = lora_modules(llava.model)
        assert trainable_parameters(peft_model) == expected
        assert sorted(wrapped) == sorted(f"model.language_model.layers.{l}.self_attn.{p}" for l in layers for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        # the vision tower has layer 0 too, with q/k/v projections: never wrapped
        assert not any("vision" in name for name in wrapped)
        assert all(("lora_" in name) == parameter.requires_grad for name, parameter in peft_model.named_parameters())
    assert lora_modules(llava.model) == []


def test_named_targets_and_unknown_target(llava):
    config = FinetuneConfig(layers=(1,), targets=("q_proj", "v_proj"))
    with lora_attached(llava, lora_config(llava, (1,), config)):
        assert sorted(lora_modules(llava.model)) == ["model.language_model.layers.1.self_attn.q_proj", "model.language_model.layers.1.self_attn.v_proj"]
    with pytest.raises(InputError, match="target 'gate_proj' is not a linear module of the attention"):
        lora_config(llava, (1,), FinetuneConfig(targets=("gate_proj",)))


def test_labels_cover_the_description_and_eos_only(llava, records):
    tokenizer = llava.processor.tokenizer
    two = [records[0], max(records, key=lambda r: len(r.text))]
    batch = training_batch(llava, two, "describe the image .")
    for row, record in enumerate(two):
        ids = tokenizer(record.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = batch["labels"][row]
        kept = labels[labels != -100].tolist()
        assert kept == ids
        start = int(torch.nonzero(labels != -100)[0])
        assert batch["input_ids"][row, start : start + len(ids)].tolist() == ids  # at the response positions
        assert batch["attention_mask"][row, start + len(ids) :].sum() == 0  # after them only padding


def test_training_asks_each_record_its_own_question_and_learns_its_answer(llava, tmp_path):
    """A VQA record's prefix is built from its own prompt (the question), a record without one from
    the run's prompt; the labels are the answer's tokens + eos."""
    records = list(read_dataset(write_vqa_dataset(tmp_path / "vqa", n=3, prompts="some")))  # top, (none), left
    tokenizer, default = llava.processor.tokenizer, "describe the image ."
    batch = training_batch(llava, records, default)
    prefixes = []
    for row, record in enumerate(records):
        labels = batch["labels"][row]
        start = int(torch.nonzero(labels != -100)[0])  # where the answer starts: the prefix's length
        oracle = llava.adapter.prefix_inputs(llava.processor, record.image, record.prompt or default)["input_ids"][0].tolist()
        prefix = batch["input_ids"][row, :start].tolist()
        assert prefix == oracle
        answer = tokenizer(record.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert labels[labels != -100].tolist() == answer and batch["input_ids"][row, start : start + len(answer)].tolist() == answer
        prefixes.append(tokenizer.decode(prefix))
    assert prefixes[0].endswith(f"{QUESTIONS['top']} assistant :") and prefixes[2].endswith(f"{QUESTIONS['left']} assistant :")
    assert prefixes[1].endswith(f"{default} assistant :")
    assert len(set(prefixes)) == 3  # two questions, two prefixes: not one prompt for every record


def test_vqa_needs_records_with_prompts(tmp_path, tiny_data):
    some = write_vqa_dataset(tmp_path / "some", n=4, prompts="some")
    none = write_vqa_dataset(tmp_path / "none", n=4, prompts="none")
    assert has_prompts(some) and not has_prompts(none) and not has_prompts(tiny_data)
    check_task("vqa", some)
    check_task("caption", none)  # captioning needs none
    with pytest.raises(InputError, match=r"the VQA task needs records whose `prompt` is the question .*; no record of the "
                                         r"scenes has a prompt: choose such a dataset, or the caption task"):
        check_task("vqa", none, "the scenes")
    with pytest.raises(InputError, match="task must be one of caption, vqa"):
        DataConfig(task="qa")


def test_training_changes_only_the_adapter_and_leaves_the_base_bitwise_equal(llava, records):
    before = {name: tensor.clone() for name, tensor in llava.model.state_dict().items()}
    config = FinetuneConfig(layers=(1,), steps=3, batch_size=2, lr=1e-2, data=FAST)
    with lora_attached(llava, lora_config(llava, (1,), config)) as peft_model:
        train_lora(llava, records, config)
        lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it was trained
    after = llava.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(parameter.requires_grad for parameter in llava.model.parameters())  # flags restored
    assert not llava.model.training


def test_a_few_steps_reduce_the_loss(llava, records):
    config = FinetuneConfig(layers=(0, 1), rank=8, steps=12, batch_size=4, lr=2e-2, warmup=0.0, dropout=0.0, data=FAST)
    with lora_attached(llava, lora_config(llava, (0, 1), config)):
        losses = train_lora(llava, records[:4], config)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.5 * losses[0]


def test_training_is_seeded(llava, records):
    config = FinetuneConfig(layers=(1,), steps=3, batch_size=2, data=FAST)
    runs = []
    for _ in range(2):
        with lora_attached(llava, lora_config(llava, (1,), config)):
            runs.append(train_lora(llava, records, config))
    assert runs[0] == runs[1]


def test_callbacks_see_every_step_and_cancel_restores_the_model(llava, records):
    seen = []
    config = FinetuneConfig(layers=(0,), steps=4, batch_size=2, data=FAST)
    with lora_attached(llava, lora_config(llava, (0,), config)):
        train_lora(llava, records, config, TrainCallbacks(on_step=lambda step, loss: seen.append((step, loss))))
    assert [step for step, _ in seen] == [1, 2, 3, 4] and all(np.isfinite(loss) for _, loss in seen)
    with pytest.raises(TrainingCancelled):
        with lora_attached(llava, lora_config(llava, (0,), config)):
            train_lora(llava, records, config, TrainCallbacks(should_stop=lambda: len(seen) >= 6, on_step=lambda s, l: seen.append((s, l))))
    assert len(seen) == 6 and lora_modules(llava.model) == []


def test_training_stops_when_the_loss_becomes_nan(llava, records):
    calls = []

    def nan_logits(module, inputs, output):  # from the second forward on, the loss is NaN
        calls.append(1)
        return output * float("nan") if len(calls) >= 2 else output

    seen = []
    config = FinetuneConfig(layers=(0,), steps=4, batch_size=2, lr=1e-2, data=FAST)
    hook = llava.model.get_output_embeddings().register_forward_hook(nan_logits)
    try:
        with pytest.raises(TrainingDiverged, match=r"^training diverged at step 2 of 4 \(loss nan\): lower lr \(now 0.01\)$"):
            with lora_attached(llava, lora_config(llava, (0,), config)):
                train_lora(llava, records, config, TrainCallbacks(on_step=lambda step, loss: seen.append(step)))
    finally:
        hook.remove()
    assert seen == [1] and lora_modules(llava.model) == [] and not llava.model.training
    assert isinstance(TrainingDiverged("x"), InputError)  # the CLI's exit 2 and the app's message


def test_training_stops_when_the_weights_become_infinite(llava, records, monkeypatch):
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step(torch.optim.AdamW.step, after=2))
    config = FinetuneConfig(layers=(0,), steps=4, batch_size=2, lr=1e-2, data=FAST)
    with pytest.raises(TrainingDiverged, match=r"at step 2 of 4 \(the adapter's weights became NaN or infinite\)"):
        with lora_attached(llava, lora_config(llava, (0,), config)):
            train_lora(llava, records, config)
    assert lora_modules(llava.model) == []


def poisoned_step(original, after):
    """An optimizer step that, from step `after` on, leaves an infinite weight (an overflowing update)."""
    count = []

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count.append(1)
        if len(count) >= after:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    return step


def test_held_out_split_is_by_id_and_never_trained_on(tiny_data, tmp_path):
    split = split_dataset(tiny_data, DataConfig(eval_fraction=0.3))
    train_ids, held_ids = {r.id for r in split.train}, {r.id for r in split.held_out}
    assert train_ids and held_ids and not train_ids & held_ids and len(train_ids | held_ids) == 12
    assert held_ids == {r.id for r in read_dataset(tiny_data) if is_held_out(r.id, 0.3)}
    # the same records whatever the file order
    lines = (tiny_data / "data.jsonl").read_text().splitlines()
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for sub in ("images", "masks"):
        (shuffled / sub).symlink_to(tiny_data / sub)
    (shuffled / "data.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    assert {r.id for r in split_dataset(shuffled, DataConfig(eval_fraction=0.3)).held_out} == held_ids
    # a separate evaluation set: its ids are left out of training
    other = write_synthetic(tmp_path / "other", n=3, seed=3, size=48)  # the ids of the first 3 records
    separate = split_dataset(tiny_data, DataConfig(), eval_dataset=other)
    assert len(separate.held_out) == 3 and {r.id for r in separate.train} == {r.id for r in list(read_dataset(tiny_data))[3:]}
    with pytest.raises(InputError, match="no records to train on outside the held-out set"):
        split_dataset(tiny_data, DataConfig(), eval_dataset=tiny_data)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "field, value, message",
    [("rank", 0, "rank must be a whole number of at least 1, got 0"), ("steps", -1, "steps must be a whole number of at least 1, got -1"),
     ("lr", -1.0, r"lr must be a number in \(0, 1\], got -1.0"), ("lr", NAN, r"lr must be a number in \(0, 1\], got nan"),
     ("lr", INF, "lr must .*, got inf"), ("lr", 1e30, "lr must .*, got 1e\\+30"), ("alpha", NAN, "alpha must be a number > 0, got nan"),
     ("alpha", -INF, "alpha must .*, got -inf"), ("dropout", 1.5, r"dropout must be a number in \[0, 1\), got 1.5"),
     ("dropout", NAN, "dropout must .*, got nan"), ("warmup", INF, "warmup must .*, got inf"),
     ("weight_decay", NAN, "weight_decay must .*, got nan"), ("max_grad_norm", 0.0, "max_grad_norm must be a number > 0"),
     ("seed", -1, "seed must be a whole number in"), ("targets", ("q_proj", " "), "targets must be names"),
     ("schedule", "step", "schedule must be one of"), ("layers", "best", "layers must be one of")],
)
def test_config_validation_names_the_field_the_value_and_what_is_allowed(field, value, message):
    with pytest.raises(InputError, match=message):
        FinetuneConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("eval_fraction", 1.0), ("eval_fraction", NAN), ("eval_limit", 0),
                                          ("max_new_tokens", 0), ("eval_batch_size", INF)])
def test_data_config_validation(field, value):
    with pytest.raises(InputError, match=f"{field} must be"):
        DataConfig(**{field: value})


def test_config_round_trips_through_json():
    config = FinetuneConfig(layers=(2, 0), targets=("q_proj",), data=DataConfig(eval_limit=3))
    assert FinetuneConfig.from_json(json.loads(json.dumps(asdict(config)))) == config


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_finetune_writes_a_peft_adapter_and_run_json(llava_dir, tiny_data, tmp_path, capsys):
    ranking = tmp_path / "score.json"
    ranking.write_text(json.dumps({"num_layers": 2, "layers": [{"layer": 1, "score": 0.5}, {"layer": 0, "score": 0.2}]}))
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--layers", "top", "-k", "1",
            "--ranking", str(ranking), "--steps", "2", "--batch-size", "2", "--rank", "4", "--max-new-tokens", "3",
            "--no-meteor", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["layers"] == [1] and record["strategy"] == "top" and len(record["losses"]) == 2
    assert record["ranking"]["source"] == str(ranking)
    assert {"adapter_config.json", "adapter_model.safetensors", "captions.jsonl"} <= {p.name for p in out.iterdir()}
    assert "layers [1]" in capsys.readouterr().err
    assert main(argv) == 0  # a rerun finds the finished run
    assert "not trained again" in capsys.readouterr().err
    argv[argv.index("--steps") + 1] = "3"
    assert main(argv) == 2
    assert "holds a run made with other settings (config)" in capsys.readouterr().err


def test_cli_finetune_before_reports_the_untuned_and_the_tuned_model(llava_dir, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--layers", "1", "--steps", "2",
            "--batch-size", "2", "--rank", "4", "--max-new-tokens", "3", "--no-meteor", "--before", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("before tuning: held-out bleu4") and str(out / "pretrained") in err[0]
    assert err[1].startswith("layers [1]: ") and str(out / "adapter") in err[1]
    before, after = (json.loads((out / name / "run.json").read_text()) for name in ("pretrained", "adapter"))
    assert before["strategy"] == "pretrained" and after["layers"] == [1] and before["split"] == after["split"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and sorted(p.name for p in out.iterdir()) == ["adapter", "pretrained"]
    assert main(argv) == 0  # a rerun finds both finished runs
    assert "not trained again" in capsys.readouterr().err


def test_cli_finetune_task_vqa_reports_answer_accuracy_with_its_interval(llava_dir, tmp_path, capsys):
    folder = write_vqa_dataset(tmp_path / "vqa", n=10, prompts="all")
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(folder), "--task", "vqa", "--layers", "1", "--steps", "2",
            "--batch-size", "2", "--rank", "4", "--max-new-tokens", "2", "--eval-fraction", "0.4", "--before", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    for line, name in zip(err, ("pretrained", "adapter")):
        record = json.loads((out / name / "run.json").read_text())
        interval = record["metric_intervals"]["accuracy"]
        assert record["task"] == "vqa" and list(record["metrics"]) == ["accuracy"]
        assert (f"held-out accuracy {record['metrics']['accuracy']:.3f} [95% {interval['low']:.3f}, {interval['high']:.3f}]"
                in line)
    with pytest.raises(SystemExit) as usage:  # argparse's own one-line usage error
        main(argv[:-1] + [str(tmp_path / "other"), "--task", "qa"])
    assert usage.value.code == 2 and "argument --task: invalid choice: 'qa'" in capsys.readouterr().err


def _cli_bad_cases(tmp_path, tiny_data, llava_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.jsonl").write_text("\n")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"layers": [{"layer": i, "score": 1.0 - i / 28} for i in range(28)]}))
    base = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", str(tmp_path / "o"), "--steps", "1"]
    return {
        "unknown layer": (base + ["--layers", "0,7"], "layer 7 does not exist: the language model has layers 0..1"),
        "k too large": (base + ["--layers", "random", "-k", "3"], "k must be between 1 and the language model's 2 layers, got 3"),
        "missing ranking": (base + ["--layers", "top", "--ranking", str(tmp_path / "nope.json")], "does not exist"),
        "other model's ranking": (base + ["--layers", "bottom", "-k", "1", "--ranking", str(big)], "covers 28 layers but the model has 2"),
        "empty dataset": (["finetune", "--model", str(llava_dir), "--dataset", str(tmp_path / "empty"), "--layers", "all",
                           "--out", str(tmp_path / "o")], "is empty"),
        "no dataset": (["finetune", "--model", str(llava_dir), "--dataset", str(tmp_path / "nowhere"), "--layers", "all",
                        "--out", str(tmp_path / "o")], "is not a dataset folder"),
        "bad layers": (base + ["--layers", "best"], "layers must be one of top, bottom, random, all"),
        "bad rank": (base + ["--layers", "all", "--rank", "0"], "rank must be a whole number of at least 1"),
        "vqa without questions": (base + ["--layers", "all", "--task", "vqa"],
                                  f"the VQA task needs records whose `prompt` is the question (and `text` its answer); "
                                  f"no record of {str(tiny_data)!r} has a prompt"),
    }


@pytest.mark.parametrize("case", ["unknown layer", "k too large", "missing ranking", "other model's ranking", "empty dataset",
                                  "no dataset", "bad layers", "bad rank", "vqa without questions"])
def test_cli_finetune_bad_input_exits_2_with_one_line(case, tmp_path, tiny_data, llava_dir, capsys):
    argv, message = _cli_bad_cases(tmp_path, tiny_data, llava_dir)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_finetune_that_diverges_exits_2_and_writes_nothing(llava_dir, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step(torch.optim.AdamW.step, after=1))
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--layers", "all", "--steps", "3",
            "--batch-size", "2", "--no-meteor", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: training diverged at step 1 of 3 (the adapter's weights became NaN or infinite): lower lr (now 0.0002)\n"
    assert list(tmp_path.iterdir()) == []  # no run folder, no partial one


def test_regex_targets_are_anchored_at_the_decoder_layers(llava):
    config = lora_config(llava, (1,), FinetuneConfig())
    assert re.fullmatch(config.target_modules, "model.language_model.layers.1.self_attn.q_proj")
    assert not re.fullmatch(config.target_modules, "model.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj")
    assert not re.fullmatch(config.target_modules, "model.language_model.layers.11.self_attn.q_proj")


# --- records read lazily: the split holds ids, batches read their own records -----------------


@pytest.fixture
def loads(monkeypatch):
    """The ids of the records whose files are opened (`load_record`), in order."""
    opened = []
    original = finetune.load_record

    def counted(folder, line, *limits):
        opened.append(line.id)
        return original(folder, line, *limits)

    monkeypatch.setattr(finetune, "load_record", counted)
    return opened


@pytest.mark.parametrize("data", [DataConfig(eval_fraction=0.3), DataConfig(eval_fraction=0.3, eval_limit=2), DataConfig(eval_fraction=0.0)])
def test_split_opens_no_image_and_holds_the_same_ids_in_order_as_reading_every_record(tiny_data, loads, data):
    split = split_dataset(tiny_data, data)
    assert loads == []
    # the oracle: the split as it was made from every record read into memory
    every = list(read_dataset(tiny_data))
    held = [r.id for r in every if is_held_out(r.id, data.eval_fraction)]
    assert split.train.ids == [r.id for r in every if not is_held_out(r.id, data.eval_fraction)]
    assert split.held_out.ids == held[: data.eval_limit]
    assert isinstance(split.train[:2], DatasetRecords) and split.train[:2].ids == split.train.ids[:2] and loads == []
    assert [r.id for r in split.train] == split.train.ids and loads == split.train.ids  # iterating reads one by one


def test_split_skips_malformed_lines_and_repeated_ids_as_reading_every_record_does(tiny_data, tmp_path, loads):
    data = _copy(tiny_data, tmp_path / "data")
    lines = (data / "data.jsonl").read_text().splitlines()
    (data / "data.jsonl").write_text("\n".join([lines[0], "{not json", lines[4], json.dumps({"id": "x"}), *lines[1:]]) + "\n")
    split = split_dataset(data, DataConfig(eval_fraction=0.3))
    every = [r.id for r in read_dataset(data)]  # the first record of a repeated id counts
    assert len(every) == 12 and split.train.ids == [rid for rid in every if not is_held_out(rid, 0.3)]
    assert split.held_out.ids == [rid for rid in every if is_held_out(rid, 0.3)] and loads == []


def test_training_reads_each_batch_when_it_needs_it_and_matches_records_read_up_front(llava, tiny_data, loads):
    split = split_dataset(tiny_data, DataConfig(eval_fraction=0.3))
    eager = [r for r in read_dataset(tiny_data) if r.id in set(split.train.ids)]  # in memory before training
    config = FinetuneConfig(layers=(0, 1), steps=4, batch_size=3, lr=1e-2, data=FAST)
    with lora_attached(llava, lora_config(llava, (0, 1), config)):
        expected = train_lora(llava, eager, config)
    loads.clear()
    opened_by_step = []
    with lora_attached(llava, lora_config(llava, (0, 1), config)):
        losses = train_lora(llava, split.train, config, TrainCallbacks(on_step=lambda step, loss: opened_by_step.append(len(loads))))
    assert losses == expected  # the same records in the same batches: the same loss curve
    assert opened_by_step == [3, 6, 9, 12]  # one batch of records read per step, none ahead


def _copy(folder, destination):
    shutil.copytree(folder, destination)
    return destination


def test_an_image_removed_after_the_split_fails_only_when_a_batch_needs_it(llava, tiny_data, tmp_path, loads):
    data = _copy(tiny_data, tmp_path / "data")
    split = split_dataset(data, DataConfig(eval_fraction=0.3))
    config = FinetuneConfig(layers=(1,), steps=3, batch_size=2, data=FAST)
    by_step = []
    with lora_attached(llava, lora_config(llava, (1,), config)):
        train_lora(llava, split.train, config, TrainCallbacks(on_step=lambda step, loss: by_step.append(list(loads))))
    first_at_step_3 = next(rid for rid in by_step[2][4:] if rid not in by_step[1])  # read first by the third batch
    line = next(line for line in split.train.lines if line.id == first_at_step_3)
    (data / line.fields["image"]).unlink()
    seen = []
    with pytest.raises(InputError, match=rf"^record '{first_at_step_3}' \(line {line.number} of '.*data.jsonl'\) cannot be read: .*does not exist"):
        with lora_attached(llava, lora_config(llava, (1,), config)):
            train_lora(llava, split.train, config, TrainCallbacks(on_step=lambda step, loss: seen.append(step)))
    assert seen == [1, 2] and lora_modules(llava.model) == [] and not llava.model.training


def test_held_out_captions_read_one_batch_of_records_at_a_time(llava, tiny_data, tmp_path, loads, monkeypatch):
    data = DataConfig(eval_fraction=0.5, eval_batch_size=2, max_new_tokens=3, meteor=False)
    split = split_dataset(tiny_data, data)
    assert len(split.held_out) >= 5
    opened_at_generate = []
    generate = llava.model.generate
    monkeypatch.setattr(llava.model, "generate", lambda *args, **kwargs: opened_at_generate.append(len(loads)) or generate(*args, **kwargs))
    record = run_pretrained(llava, tiny_data, tmp_path / "run", data)
    batches = len(opened_at_generate)
    assert batches == -(-len(split.held_out) // 2)
    # each batch's records are read when it is made (the next record is read to know the batch is full)
    assert all(opened <= 2 * (index + 1) + 1 for index, opened in enumerate(opened_at_generate))
    assert sorted(loads) == sorted(split.held_out.ids)  # every held-out record read once
    captions = [json.loads(line) for line in (tmp_path / "run" / "captions.jsonl").read_text().splitlines()]
    assert [c["id"] for c in captions] == split.held_out.ids and record.split["held_out"] == len(split.held_out)
    assert [c["reference"] for c in captions] == [r.text for r in read_dataset(tiny_data) if r.id in set(split.held_out.ids)]


@pytest.mark.parametrize("where", ["train", "held_out"])
def test_cli_finetune_with_an_unreadable_image_exits_2_naming_the_record_and_leaves_nothing(llava_dir, tiny_data, tmp_path, capsys, where):
    data = _copy(tiny_data, tmp_path / "data")
    line = getattr(split_dataset(data, DataConfig(eval_fraction=0.3)), where).lines[0]
    (data / line.fields["image"]).write_bytes(b"not a PNG")  # found unreadable only when its batch is made
    out = tmp_path / "runs" / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(data), "--layers", "1", "--steps", "6", "--batch-size", "2",
            "--eval-fraction", "0.3", "--max-new-tokens", "2", "--no-meteor", "--before", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"record '{line.id}' (line {line.number} of" in err and "Traceback" not in err
    # the untuned model's run fails on a held-out record, or is a finished run beside no adapter run
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == ([] if where == "held_out" else ["pretrained"])
    assert not list(out.parent.glob(".*")) and not (out / "adapter").exists()
    if left:
        assert (out / "pretrained" / "run.json").is_file()


# --- head-level LoRA from the CLI (the masking itself: test_head_lora.py) ------------------------


def _score_json(path):
    """A `score` JSON of the tiny model (2 layers x 4 heads): head 1:3 best, then 0:1, 1:2, ..."""
    order = [(1, 3), (0, 1), (1, 2), (0, 0), (1, 0), (0, 2), (1, 1), (0, 3)]
    heads = [{"layer": l, "head": h, "hi": 0.9 - 0.1 * i, "mass": 0.5} for i, (l, h) in enumerate(order)]
    path.write_text(json.dumps({"num_layers": 2, "num_heads": 4, "heads": heads,
                                "layers": [{"layer": 1, "score": 0.9}, {"layer": 0, "score": 0.8}]}))
    return path


def test_cli_finetune_heads_trains_the_top_heads_and_says_which_kv_heads(llava_dir, tiny_data, tmp_path, capsys):
    ranking = _score_json(tmp_path / "score.json")
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--heads", "top", "-k", "3",
            "--ranking", str(ranking), "--steps", "2", "--batch-size", "2", "--rank", "4", "--max-new-tokens", "3",
            "--no-meteor", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["strategy"] == "top-heads" and record["heads"] == [[0, 1], [1, 2], [1, 3]] and record["layers"] == [0, 1]
    assert record["kv_heads"] == {"0": [0], "1": [1]} and (record["num_heads"], record["num_kv_heads"]) == (4, 2)
    # by hand (test_head_lora.py): 1024 per wrapped layer + 64 per chosen q/o head block and per trained k/v block
    assert record["trainable_parameters"] == (1024 + 64 * 4) + (1024 + 64 * 6)
    assert record["trainable_share"] == record["trainable_parameters"] / record["total_parameters"]
    assert record["settings"]["ranking"]["heads"][0] == [1, 3] and record["ranking"]["heads"][0]["hi"] == 0.9
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    err = capsys.readouterr().err
    assert "heads 0:1,1:2,1:3 (KV heads trained by layer: 0: 0; 1: 1): 2,688 trainable parameters" in err
    assert main(argv) == 0 and "not trained again" in capsys.readouterr().err  # a rerun finds the finished run


def test_cli_finetune_head_list_scores_nothing(llava_dir, tiny_data, tmp_path, monkeypatch):
    import hi_core.cli.tuning_commands as commands

    monkeypatch.setattr(commands, "dataset_head_ranking", lambda *args: pytest.fail("a list of heads needs no ranking"))
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--heads", "1:0,1:1", "--steps", "1",
            "--batch-size", "2", "--rank", "2", "--max-new-tokens", "2", "--no-meteor", "--before", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "adapter" / "run.json").read_text())
    assert record["strategy"] == "list-heads" and record["layers"] == [1] and record["kv_heads"] == {"1": [0]}


def _cli_head_cases(tmp_path, tiny_data, llava_dir):
    layers_only = tmp_path / "layers.json"
    layers_only.write_text(json.dumps({"layers": [{"layer": 1, "score": 0.5}, {"layer": 0, "score": 0.2}]}))
    base = ["finetune", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", str(tmp_path / "o"), "--steps", "1"]
    return {
        "heads and layers": (base + ["--heads", "top", "--layers", "1"], "argument --layers: not allowed with argument --heads"),
        "bad pair": (base + ["--heads", "0:1,1-2"], "heads must be one of top, bottom, random or layer:head pairs like 2:5,4:0; got '0:1,1-2'"),
        "no such head": (base + ["--heads", "0:4"], "head 0:4 does not exist: each layer has heads 0..3"),
        "no such layer": (base + ["--heads", "2:0"], "head 2:0: layer 2 is not a scored layer of the language model"),
        "repeated head": (base + ["--heads", "0:1,0:1"], "heads 0:1,0:1 repeat a head"),
        "k too large": (base + ["--heads", "random", "-k", "9"], "k must be between 1 and the language model's 8 scored heads, got 9"),
        "ranking without heads": (base + ["--heads", "top", "--ranking", str(layers_only)], "has no `heads` list"),
        "unknown target": (base + ["--heads", "0:1", "--targets", "q_proj,nope"], "target 'nope' is not a linear module"),
    }


@pytest.mark.parametrize("case", ["heads and layers", "bad pair", "no such head", "no such layer", "repeated head", "k too large",
                                  "ranking without heads", "unknown target"])
def test_cli_finetune_bad_heads_exit_2_with_one_line(case, tmp_path, tiny_data, llava_dir, capsys):
    argv, message = _cli_head_cases(tmp_path, tiny_data, llava_dir)[case]
    if case == "heads and layers":  # argparse's own usage error: one line, exit 2
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_head_config_round_trips_through_json():
    for heads in ("random", ((1, 3), (0, 1))):
        config = FinetuneConfig(heads=heads, k=3, data=DataConfig(eval_limit=3))
        assert FinetuneConfig.from_json(json.loads(json.dumps(asdict(config)))) == config
