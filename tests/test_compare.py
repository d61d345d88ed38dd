"""The comparison: every strategy and seed run once, the right layers per strategy, report.md,
results.json and figures; a rerun reuses finished runs; an interruption keeps the finished ones;
`compare --task vqa` end to end, reporting answer accuracy with intervals."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

import hi_core.tuning.compare as compare
import hi_core.tuning.compare_report as compare_report
import hi_core.tuning.rankings as rankings
import hi_core.tuning.runs as runs
from hi_core.cli.main import main
from hi_core.tuning.compare import CompareConfig, run_compare
from hi_core.tuning.intervals import difference_interval, mean_interval
from hi_core.data.datasets import write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig, FinetuneConfig
from hi_core.method.head_selection import HeadRanking, select_heads
from hi_core.method.layer_selection import Ranking, select_layers
from hi_core.model.metrics import accuracy_interval

from .vqa_data import write_vqa_dataset

FAST = DataConfig(max_new_tokens=3, meteor=False, eval_fraction=0.3)
CONFIG = CompareConfig(finetune=FinetuneConfig(k=1, rank=4, steps=2, batch_size=2, lr=1e-2, data=FAST), seeds=2)
RANKING = Ranking.from_scores(np.array([0.2, 0.6]), "test ranking")  # layer 1 first
NAMES = ["pretrained", "top-seed0", "top-seed1", "random-seed0", "random-seed1", "bottom-seed0", "bottom-seed1", "all-seed0", "all-seed1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"), n=10, seed=6, size=48, order="reading")


@pytest.fixture(scope="module")
def compared(llava, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, run_compare(llava, tiny_data, out, CONFIG, RANKING)


def test_every_run_once_with_the_right_layers(compared):
    out, comparison = compared
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(NAMES)
    layers = {strategy: [r.layers for r in records] for strategy, records in comparison.runs.items()}
    assert layers["pretrained"] == [[]]
    assert layers["top"] == [[1], [1]] and layers["bottom"] == [[0], [0]] and layers["all"] == [[0, 1], [0, 1]]
    assert layers["random"] == [list(select_layers("random", 2, 1, None, seed)) for seed in (0, 1)]
    seeds = [r.settings["config"]["seed"] for r in comparison.runs["top"]]
    assert seeds == [0, 1] and comparison.reused == []


def test_report_results_and_figures(compared):
    out, comparison = compared
    results = json.loads((out / "results.json").read_text())
    assert list(results["strategies"]) == ["pretrained", "top", "random", "bottom", "all"]
    for strategy, entry in results["strategies"].items():
        for metric in ("bleu4", "rouge_l", "cider", "exact"):
            value = entry["metrics"][metric]
            if strategy == "pretrained":
                assert value["low"] is None and len(value["values"]) == 1
            else:
                assert value["low"] <= value["mean"] <= value["high"] and len(value["values"]) == 2
    assert results["strategies"]["all"]["trainable_parameters"] > results["strategies"]["top"]["trainable_parameters"] > 0
    assert set(results["differences"]) == {"top - random", "top - bottom"}
    assert results["ranking"]["layers"][0] == {"layer": 1, "score": 0.6}
    report = (out / "report.md").read_text()
    assert "| top | 1 / 1 |" in report and "| all | 0,1 / 0,1 |" in report and "top - bottom" in report
    for figure in ("metrics.png", "loss.png", "layers.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*")) and not list((out / "runs").glob(".*"))


def test_a_rerun_reuses_every_finished_run(compared, llava, tiny_data, monkeypatch):
    out, first = compared
    stamps = {name: (out / "runs" / name / "run.json").stat().st_mtime_ns for name in NAMES}
    calls = []
    monkeypatch.setattr(runs, "train_lora", lambda *args, **kwargs: calls.append(1) or [])
    monkeypatch.setattr(runs, "generate_captions", lambda *args, **kwargs: calls.append(1) or [])
    announced = []
    again = run_compare(llava, tiny_data, out, CONFIG, RANKING, on_run=lambda i, n, name, reused: announced.append((name, reused)))
    assert calls == [] and again.reused == NAMES and announced == [(name, True) for name in NAMES]
    assert {name: (out / "runs" / name / "run.json").stat().st_mtime_ns for name in NAMES} == stamps
    assert again.summary() == first.summary()
    assert "Reused finished runs" in (out / "report.md").read_text()


def test_an_interrupted_compare_keeps_finished_runs_and_resumes(llava, tiny_data, tmp_path):
    config = CompareConfig(finetune=CONFIG.finetune, seeds=1, strategies=("top", "bottom", "all"))

    def interrupt(index, total, name, reused):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_compare(llava, tiny_data, tmp_path, config, RANKING, on_run=interrupt)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["top-seed0"] and not (tmp_path / "report.md").exists()
    comparison = run_compare(llava, tiny_data, tmp_path, config, RANKING)
    assert comparison.reused == ["top-seed0"] and (tmp_path / "report.md").is_file()


def test_the_ranking_is_computed_from_the_dataset_once_and_kept(llava, tiny_data, tmp_path, monkeypatch):
    config = CompareConfig(finetune=CONFIG.finetune, seeds=1, strategies=("top",))
    comparison = run_compare(llava, tiny_data, tmp_path, config)
    kept = json.loads((tmp_path / "ranking.json").read_text())
    assert kept["source"].startswith("dataset HI of") and len(kept["layers"]) == 2
    assert comparison.runs["top"][0].layers == [kept["layers"][0]["layer"]]
    monkeypatch.setattr(compare, "dataset_ranking", lambda *args: pytest.fail("the kept ranking should be used"))
    assert run_compare(llava, tiny_data, tmp_path, config).reused == ["top-seed0"]


def test_intervals_match_scipy():
    values = [0.51, 0.55, 0.49, 0.60]
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    entry = mean_interval(values)
    assert entry["low"] == pytest.approx(ci.low) and entry["high"] == pytest.approx(ci.high)
    a, b = [0.7, 0.72, 0.69], [0.6, 0.66, 0.61, 0.58]
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    entry = difference_interval(a, b)
    assert entry["low"] == pytest.approx(welch.low) and entry["high"] == pytest.approx(welch.high)
    assert mean_interval([0.3])["low"] is None and difference_interval([0.3], b) is None


def test_config_validation():
    with pytest.raises(InputError, match="seeds must be a whole number of at least 1"):
        CompareConfig(seeds=0)
    with pytest.raises(InputError, match="strategies must be among"):
        CompareConfig(strategies=("top", "middle"))


def test_cli_compare_and_its_errors(llava_dir, tiny_data, tmp_path, capsys):
    ranking = tmp_path / "score.json"
    ranking.write_text(json.dumps({"layers": [{"layer": 1, "score": 0.5}, {"layer": 0, "score": 0.1}]}))
    base = ["compare", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", str(tmp_path / "c"), "--steps", "1",
            "--batch-size", "2", "--max-new-tokens", "2", "--no-meteor", "--eval-fraction", "0.3"]
    argv = base + ["-k", "1", "--seeds", "1", "--strategies", "pretrained,top,bottom", "--ranking", str(ranking)]
    assert main(argv) == 0
    assert {"report.md", "results.json", "metrics.png", "loss.png", "layers.png"} <= {p.name for p in (tmp_path / "c").iterdir()}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "run 2/3 top-seed0: finished earlier, reused" in err and "3 run(s) reused" in err
    for extra, message in [(["-k", "3"], "k must be between 1 and the language model's 2 layers, got 3"),
                           (["-k", "1", "--ranking", str(tmp_path / "nope.json")], "does not exist"),
                           (["-k", "1", "--seeds", "0"], "seeds must be a whole number of at least 1"),
                           (["-k", "1", "--strategies", "top,best"], "strategies must be among")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("target, message", [("notes.txt", "is a file, not a folder"), ("notes.txt/out", "is a file, not a folder"),
                                             ("mine", "is not a comparison folder"), ("kept", "ranking.json' is damaged")])
def test_a_comparison_is_never_written_over_what_the_user_owns(llava, tiny_data, tmp_path, target, message):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my own report")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "ranking.json").write_text("{not json")
    before = {str(p): p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    with pytest.raises(InputError, match=message):
        run_compare(llava, tiny_data, tmp_path / target, CONFIG)
    assert {str(p): p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before


@pytest.mark.parametrize("kwargs, message", [({"seeds": float("nan")}, "seeds must be a whole number of at least 1, got nan"),
                                             ({"seeds": 2, "finetune": FinetuneConfig(seed=2**32 - 1)}, "go past the largest seed")])
def test_config_refuses_nan_and_seeds_past_numpys_range(kwargs, message):
    with pytest.raises(InputError, match=message):
        CompareConfig(**kwargs)


def test_cli_compare_task_vqa_reports_answer_accuracy_with_intervals(llava_dir, tmp_path, capsys):
    folder = write_vqa_dataset(tmp_path / "vqa", n=10, prompts="some")
    ranking = tmp_path / "score.json"
    ranking.write_text(json.dumps({"layers": [{"layer": 1, "score": 0.5}, {"layer": 0, "score": 0.1}]}))
    out = tmp_path / "c"
    argv = ["compare", "--model", str(llava_dir), "--dataset", str(folder), "--out", str(out), "--task", "vqa", "--steps", "1",
            "--batch-size", "2", "--max-new-tokens", "2", "--eval-fraction", "0.4", "-k", "1", "--seeds", "2",
            "--strategies", "pretrained,top,bottom", "--ranking", str(ranking)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "vqa" and results["config"]["finetune"]["data"]["task"] == "vqa"
    for strategy, entry in results["strategies"].items():
        assert list(entry["metrics"]) == ["accuracy"]  # instead of the caption metrics
        accuracy = entry["metrics"]["accuracy"]
        runs_of = [json.loads((out / path / "run.json").read_text()) for path in results["runs"][strategy]]
        assert [run["task"] for run in runs_of] == ["vqa"] * len(runs_of)
        assert accuracy["values"] == [run["metrics"]["accuracy"] for run in runs_of]
        if strategy == "pretrained":  # one run: its Wilson interval over the held-out records
            answers = [json.loads(line) for line in (out / "runs" / "pretrained" / "captions.jsonl").read_text().splitlines()]
            low, high = accuracy_interval(sum(a["correct"] for a in answers), len(answers))
            assert (accuracy["low"], accuracy["high"], accuracy["interval"]) == (low, high, "held-out records")
        else:  # two seeds: the t-interval over seeds, as for every metric
            assert accuracy["interval"] == "seeds" and (accuracy["low"], accuracy["high"]) == pytest.approx(
                (mean_interval(accuracy["values"])["low"], mean_interval(accuracy["values"])["high"]))
    assert set(results["differences"]["top - bottom"]) == {"accuracy"}
    report = (out / "report.md").read_text()
    assert "| answer accuracy | final loss |" in report and "closed-form VQA" in report and "Wilson interval" in report
    assert (out / "metrics.png").is_file()
    capsys.readouterr()
    captions = tmp_path / "captions"  # the same command on records without questions: one line, exit 2, before any run
    write_vqa_dataset(captions, n=4, prompts="none")
    argv[argv.index("--dataset") + 1], argv[argv.index("--out") + 1] = str(captions), str(tmp_path / "c2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the VQA task needs records whose `prompt` is the question" in err
    assert not (tmp_path / "c2").exists()


# --- head strategies: head-level LoRA on as many heads as k layers hold --------------------------

HEAD_RANKING = HeadRanking.from_hi(np.array([[0.3, 0.8, 0.1, 0.5], [0.7, 0.2, 0.6, 0.9]]), "test head ranking")
HEAD_NAMES = [f"{s}-seed{seed}" for s in ("top", "top-heads", "random-heads", "bottom-heads") for seed in (0, 1)]


def _by_hand(heads, rank=4):
    """Trainable entries of head-level LoRA on the tiny model (hidden 64, 4 heads of 16, 2 KV heads): per
    wrapped layer rank x 64 for each of A of q/k/v and B of o, plus rank x 16 per chosen query head
    (q rows, o columns) and per trained KV head (k rows, v rows)."""
    total = 0
    for layer in {l for l, _ in heads}:
        query = [h for l, h in heads if l == layer]
        kv = {h // 2 for h in query}
        total += 4 * rank * 64 + rank * 16 * (2 * len(query) + 2 * len(kv))
    return total


@pytest.fixture(scope="module")
def head_compared(llava, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    config = CompareConfig(finetune=CONFIG.finetune, seeds=2, strategies=("top", "top-heads", "random-heads", "bottom-heads"))
    return out, run_compare(llava, tiny_data, out, config, RANKING, head_ranking=HEAD_RANKING)


def test_head_strategies_train_k_layers_worth_of_heads_with_exact_counts(head_compared):
    out, comparison = head_compared
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(HEAD_NAMES)
    assert comparison.heads_k == 4  # k = 1 layer x 4 heads per layer
    heads = {strategy: [[tuple(h) for h in r.heads] for r in records] for strategy, records in comparison.runs.items() if strategy != "top"}
    assert heads["top-heads"] == [[(0, 1), (1, 0), (1, 2), (1, 3)]] * 2  # HI 0.8, 0.7, 0.6, 0.9
    assert heads["bottom-heads"] == [[(0, 0), (0, 2), (0, 3), (1, 1)]] * 2  # HI 0.3, 0.1, 0.5, 0.2
    assert heads["random-heads"] == [list(select_heads("random", (0, 1), 4, 4, None, seed)) for seed in (0, 1)]
    assert heads["random-heads"][0] != heads["random-heads"][1]
    for strategy, records in comparison.runs.items():
        for record in records:
            if strategy == "top":
                assert record.heads is None and record.layers == [1]
            else:
                assert record.strategy == strategy and record.trainable_parameters == _by_hand(record.heads)
                assert record.kv_heads == {str(l): sorted({h // 2 for ll, h in record.heads if ll == l}) for l in record.layers}


def test_head_strategies_in_the_report(head_compared):
    out, comparison = head_compared
    results = json.loads((out / "results.json").read_text())
    assert results["heads_k"] == 4 and results["head_ranking"]["heads"][0] == {"layer": 1, "head": 3, "hi": 0.9}
    assert set(results["differences"]) == {"top-heads - random-heads", "top-heads - bottom-heads", "top-heads - top"}
    entry = results["strategies"]["random-heads"]
    assert entry["trainable_per_run"] == [_by_hand(h) for h in entry["heads"]]
    report = (out / "report.md").read_text()
    assert report.startswith("# LoRA layer selection")  # a layer strategy ran too
    heads_only = replace(comparison, config=replace(comparison.config, strategies=tuple(compare.HEAD_STRATEGIES)))
    assert compare_report.report_markdown(heads_only).startswith("# LoRA on the top-HI heads against other heads")
    assert "| strategy | layers (per seed) | heads (per seed) | trainable parameters |" in report
    top = f"| top-heads | 0,1 / 0,1 | 0:1,1:0,1:2,1:3 / 0:1,1:0,1:2,1:3 | {_by_hand(HEAD_RANKING.heads[:4]):,} ("
    assert top in report and "| top | 1 / 1 | - |" in report
    random_counts = " / ".join(f"{n:,}" for n in entry["trainable_per_run"])
    assert (random_counts in report) == (len(set(entry["trainable_per_run"])) > 1)
    assert "head-level LoRA on 4 heads (default: k x 4 heads per layer" in report and "4 query heads share 2 KV heads" in report


def test_both_rankings_come_from_one_scoring_pass_and_are_kept(llava, tiny_data, tmp_path, monkeypatch):
    passes = []
    score = rankings.score_dataset
    monkeypatch.setattr(rankings, "score_dataset", lambda *args, **kwargs: passes.append(1) or score(*args, **kwargs))
    config = CompareConfig(finetune=replace(CONFIG.finetune, steps=1), seeds=1, strategies=("top", "bottom-heads"), heads_k=2)
    comparison = run_compare(llava, tiny_data, tmp_path, config)
    assert passes == [1]
    kept = json.loads((tmp_path / "head_ranking.json").read_text())
    bottom = sorted((h["layer"], h["head"]) for h in kept["heads"][-2:])  # the two lowest HI of the kept ranking
    assert [tuple(h) for h in comparison.runs["bottom-heads"][0].heads] == bottom
    assert (tmp_path / "ranking.json").is_file()
    assert run_compare(llava, tiny_data, tmp_path, config).reused == ["top-seed0", "bottom-heads-seed0"] and passes == [1]


def test_cli_compare_head_strategies_and_their_errors(llava_dir, tiny_data, tmp_path, capsys):
    ranking = tmp_path / "score.json"
    ranking.write_text(json.dumps({"num_layers": 2, "num_heads": 4, "layers": [{"layer": 1, "score": 0.9}, {"layer": 0, "score": 0.8}],
                                   "heads": [{"layer": l, "head": h, "hi": float(HEAD_RANKING.scores[i])}
                                             for i, (l, h) in enumerate(HEAD_RANKING.heads)]}))
    base = ["compare", "--model", str(llava_dir), "--dataset", str(tiny_data), "--out", str(tmp_path / "c"), "--steps", "1",
            "--batch-size", "2", "--max-new-tokens", "2", "--no-meteor", "--eval-fraction", "0.3", "-k", "1", "--seeds", "1",
            "--ranking", str(ranking)]
    assert main(base + ["--strategies", "top,top-heads,random-heads", "--heads-k", "2"]) == 0
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert results["strategies"]["top-heads"]["heads"] == [[[0, 1], [1, 3]]] and results["heads_k"] == 2
    layers_only = tmp_path / "layers.json"
    layers_only.write_text(json.dumps({"layers": [{"layer": 1, "score": 0.5}, {"layer": 0, "score": 0.1}]}))
    capsys.readouterr()
    for extra, message in [(["--strategies", "top-heads", "--heads-k", "9"], "k must be between 1 and the language model's 8 scored heads, got 9"),
                           (["--strategies", "random-heads", "--heads-k", "0"], "heads_k must be a whole number of at least 1, got 0"),
                           (["--strategies", "top,top-heads", "--ranking", str(layers_only)], "has no `heads` list"),
                           (["--strategies", "top,middle-heads"], "strategies must be among")]:
        argv = base + extra
        argv[argv.index("--out") + 1] = str(tmp_path / "bad")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
        assert not (tmp_path / "bad").exists()
