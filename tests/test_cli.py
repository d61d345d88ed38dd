"""`python -m hi_core score`: the JSON contract of DESIGN section 6, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hi_core.cli.main import main
from hi_core.families import supported_families

from .test_loading import BROKEN_MODELS, broken_model


@pytest.fixture
def files(tmp_path, scene):
    image, mask = scene
    image.save(tmp_path / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return tmp_path


def score_args(model, files, *extra):
    return ["score", "--model", str(model), "--image", str(files / "image.png"), "--mask", str(files / "mask.png"), *extra]


def test_score_writes_the_design_json_and_maps(llava_dir, files, capsys):
    out, maps = files / "score.json", files / "maps.npz"
    code = main(score_args(llava_dir, files, "--text", "a red square", "--out", str(out), "--maps", str(maps)))
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"model", "family", "grid", "num_layers", "num_heads", "object_patches", "chance",
                           "response_tokens", "queries", "text", "heads", "layers"}
    assert result["family"] == "llava" and result["grid"] == [6, 6]
    assert len(result["heads"]) == result["num_layers"] * result["num_heads"] == 8
    his = [h["hi"] for h in result["heads"]]
    assert his == sorted(his, reverse=True)
    assert [l["score"] for l in result["layers"]] == sorted((l["score"] for l in result["layers"]), reverse=True)
    # layer score (max) is the best head of that layer
    for layer in result["layers"]:
        assert layer["score"] == max(h["hi"] for h in result["heads"] if h["layer"] == layer["layer"])
    saved = np.load(maps)
    assert saved["maps"].shape == (2, 4, 6, 6) and saved["maps"].dtype == np.float32
    assert saved["mask_grid"].dtype == bool and saved["mask_grid"].sum() == result["object_patches"]
    assert list(files.glob(".*.tmp")) == []


def test_score_prints_json_to_stdout_without_out(llava_dir, files, capsys):
    assert main(score_args(llava_dir, files, "--text", "a red square", "--key-phrase", "square",
                           "--queries", "reading", "--binarize", "otsu", "--layer-score", "mean")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == "reading" and result["response_tokens"] == 1


def test_score_generate_scores_the_models_own_text(llava_dir, files, capsys):
    assert main(score_args(llava_dir, files, "--generate", "--max-new-tokens", "5")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] and 1 <= result["response_tokens"] <= 5


def _bad(tmp_path, files, llava_dir):
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    image, mask = str(files / "image.png"), str(files / "mask.png")
    base = ["score", "--model", str(llava_dir)]
    return {
        "empty mask": (base + ["--image", image, "--mask", str(tmp_path / "empty.png"), "--text", "a"], "mask is empty"),
        "mask size": (base + ["--image", image, "--mask", str(tmp_path / "small.png"), "--text", "a"], "mask is 30x30 but the image is 80x60"),
        "not an image": (base + ["--image", str(tmp_path / "notes.png"), "--mask", mask, "--text", "a"], "is not an image file"),
        "missing model": (["score", "--model", str(tmp_path / "nowhere"), "--image", image, "--mask", mask, "--text", "a"], "does not exist"),
        "unsupported family": (["score", "--model", str(tmp_path / "gpt2"), "--image", image, "--mask", mask, "--text", "a"], "unsupported model family 'gpt2': supported families are " + ", ".join(supported_families())),
        "empty text": (base + ["--image", image, "--mask", mask, "--text", "  "], "description text is empty"),
        "key phrase": (base + ["--image", image, "--mask", mask, "--text", "a red square", "--key-phrase", "blue dog"], "key phrase 'blue dog' does not occur"),
        "bad option": (base + ["--image", image, "--mask", mask, "--text", "a", "--binarize", "median"], "invalid choice"),
    }


@pytest.mark.parametrize("case", ["empty mask", "mask size", "not an image", "missing model", "unsupported family",
                                  "empty text", "key phrase", "bad option"])
def test_bad_input_exits_2_with_one_line(case, tmp_path, files, llava_dir, capsys):
    argv, message = _bad(tmp_path, files, llava_dir)[case]
    with pytest.raises(SystemExit) if case == "bad option" else _no_raise() as raised:
        code = main(argv)
    code = raised.value.code if case == "bad option" else code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_process_exit_code_and_stderr(tmp_path, files):
    result = subprocess.run(
        [sys.executable, "-m", "hi_core", "score", "--model", str(tmp_path / "nowhere"), "--image",
         str(files / "image.png"), "--mask", str(files / "mask.png"), "--text", "a"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


# --- every bad input: exit 2, one line, before any slow work, nothing written ------------------------


def _cli(argv):
    """main(argv)'s exit code (argparse's usage errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _tree(folder):
    """Every path under `folder` with its kind and content: equal before and after means nothing
    was written, renamed or removed."""
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else "folder")
            for path in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from hi_core.data.datasets import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("data"), n=6, seed=1, size=48)


def _cases(tmp, files, dataset_dir, llava_dir):
    """name -> (argv, message, early): `early` cases must fail before the model is loaded."""
    user_file, user_dir = tmp / "notes.txt", tmp / "mine"
    user_file.write_text("the user's own file")
    user_dir.mkdir()
    (user_dir / "keep.txt").write_text("keep me")
    (tmp / "empty").mkdir()
    (tmp / "r.cache").write_text("not a cache folder")
    (tmp / "before").mkdir()
    (tmp / "before" / "adapter").write_text("not a run folder")
    image, mask = str(files / "image.png"), str(files / "mask.png")
    score = ["score", "--model", str(llava_dir), "--image", image, "--mask", mask, "--text", "a red square"]
    data = ["score", "--model", str(llava_dir), "--dataset", str(dataset_dir)]
    tune = ["--model", str(llava_dir), "--dataset", str(dataset_dir), "--steps", "1", "--batch-size", "2", "--no-meteor"]
    finetune = ["finetune", *tune, "--layers", "all", "--out", str(tmp / "run")]
    compare = ["compare", *tune, "--out", str(tmp / "cmp")]
    synth = ["dataset", "synth", "--n", "2", "--size", "32"]
    cases = {
        # score: outputs checked before the model loads
        "score --out is a folder": (score + ["--out", str(tmp / "empty")], "--out '", True),
        "score --maps is a folder": (score + ["--maps", str(tmp / "empty")], "is a folder: give a file path", True),
        "score --out under a file": (score + ["--out", str(user_file / "x.json")], "is a file, not a folder", True),
        "score --maps under a file": (score + ["--maps", str(user_file / "m" / "x.npz")], "is a file, not a folder", True),
        "score --out = --maps": (score + ["--out", str(tmp / "x"), "--maps", str(tmp / "x")], "--out and --maps name the same file", True),
        "score --out empty": (score + ["--out", ""], "--out is empty", True),
        "score --quantile nan": (score + ["--binarize", "quantile", "--quantile", "nan"], "quantile must be strictly between 0 and 1, got nan", True),
        "score --quantile inf": (score + ["--quantile", "inf"], "quantile must be strictly between 0 and 1, got inf", True),
        "score --quantile 1": (score + ["--quantile", "1"], "quantile must be strictly between 0 and 1, got 1.0", True),
        "score --max-new-tokens 0": (score + ["--max-new-tokens", "0"], "max_new_tokens must be a whole number of at least 1", True),
        "score missing image": (score[:3] + ["--image", str(tmp / "none.png"), "--mask", mask, "--text", "a"], "none.png", True),
        "dataset --cache is a file": (data + ["--cache", str(user_file)], "--cache '", True),
        "dataset default cache is a file": (data + ["--out", str(tmp / "r.json")], "the cache folder (--out with .cache)", True),
        "dataset --out is a folder": (data + ["--out", str(tmp / "empty")], "is a folder: give a file path", True),
        "dataset --images-csv is a folder": (data + ["--images-csv", str(tmp / "empty")], "--images-csv '", True),
        "dataset with --maps": (data + ["--maps", str(tmp / "m.npz")], "drop --maps", True),
        "dataset --batch-size 0": (data + ["--batch-size", "0"], "batch_size must be a whole number of at least 1, got 0", True),
        "dataset --seed -1": (data + ["--seed", "-1"], "seed must be a whole number of at least 0, got -1", True),
        "dataset --quantile nan": (data + ["--quantile", "nan"], "quantile must be strictly between 0 and 1, got nan", True),
        "dataset missing": (["score", "--model", str(llava_dir), "--dataset", str(tmp / "none")], "is not a dataset folder", True),
        "score bad int": (score + ["--max-new-tokens", "many"], "invalid int value: 'many'", True),
        # finetune: the output folder and every number, before the model loads
        "finetune --out is a file": (finetune[:-1] + [str(user_file)], "is a file, not a folder", True),
        "finetune --out under a file": (finetune[:-1] + [str(user_file / "run")], "is a file, not a folder", True),
        "finetune --out is someone's folder": (finetune[:-1] + [str(user_dir)], "is not a run folder (no run.json)", True),
        "finetune --out empty": (finetune[:-1] + [""], "--out is empty", True),
        "finetune --before --out is someone's folder": (finetune[:-1] + [str(user_dir), "--before"], "holds other things (keep.txt)", True),
        "finetune --before --out/adapter is a file": (finetune[:-1] + [str(tmp / "before"), "--before"], "--out's adapter/ '", True),
        "finetune --lr nan": (finetune + ["--lr", "nan"], "lr must be a number in (0, 1], got nan", True),
        "finetune --lr inf": (finetune + ["--lr", "inf"], "lr must be a number in (0, 1], got inf", True),
        "finetune --lr 1e30": (finetune + ["--lr", "1e30"], "lr must be a number in (0, 1], got 1e+30", True),
        "finetune --lr 0": (finetune + ["--lr", "0"], "lr must be a number in (0, 1], got 0.0", True),
        "finetune --alpha nan": (finetune + ["--alpha", "nan"], "alpha must be a number > 0, got nan", True),
        "finetune --dropout nan": (finetune + ["--dropout", "nan"], "dropout must be a number in [0, 1), got nan", True),
        "finetune --warmup inf": (finetune + ["--warmup", "inf"], "warmup must be a share of the steps in [0, 1), got inf", True),
        "finetune --eval-fraction nan": (finetune + ["--eval-fraction", "nan"], "eval_fraction must be a number in [0, 1), got nan", True),
        "finetune --steps 0": (finetune + ["--steps", "0"], "steps must be a whole number of at least 1, got 0", True),
        "finetune --steps -5": (finetune + ["--steps", "-5"], "steps must be a whole number of at least 1, got -5", True),
        "finetune --batch-size 0": (finetune + ["--batch-size", "0"], "batch_size must be a whole number of at least 1, got 0", True),
        "finetune --rank -1": (finetune + ["--rank", "-1"], "rank must be a whole number of at least 1, got -1", True),
        "finetune -k 0": (finetune + ["-k", "0"], "k must be a whole number of at least 1, got 0", True),
        "finetune --seed -1": (finetune + ["--seed", "-1"], "seed must be a whole number in [0, 4294967295], got -1", True),
        "finetune --targets ,": (finetune + ["--targets", ","], "targets must be names of linear modules", True),
        "finetune --layers empty": (finetune[:-4] + ["--layers", "", "--out", str(tmp / "run")], "layers must be one of", True),
        "finetune --layers 0,,1": (finetune[:-4] + ["--layers", "0,,1", "--out", str(tmp / "run")], "got '0,,1'", True),
        "finetune --eval-limit 0": (finetune + ["--eval-limit", "0"], "eval_limit must be a whole number of at least 1, got 0", True),
        "finetune --max-new-tokens 0": (finetune + ["--max-new-tokens", "0"], "max_new_tokens must be a whole number of at least 1, got 0", True),
        "finetune --ranking-limit 0": (finetune + ["--ranking-limit", "0"], "--ranking-limit must be at least 1, got 0", True),
        "finetune --ranking is a folder": (finetune + ["--ranking", str(tmp / "empty")], "is a folder (give the JSON written by `score`)", True),
        "finetune --ranking not JSON": (finetune + ["--ranking", str(user_file)], "is not JSON", True),
        "finetune --threads 0": (finetune + ["--threads", "0"], "threads must be between 1 and this machine's", True),
        "finetune --threads huge": (finetune + ["--threads", "100000"], "CPUs, got 100000", True),
        "finetune --eval-dataset missing": (finetune + ["--eval-dataset", str(tmp / "none")], "is not a dataset folder", True),
        "finetune --layers 5": (finetune[:-4] + ["--layers", "0,5", "--out", str(tmp / "run")], "layer 5 does not exist", False),
        "finetune --rank huge": (finetune + ["--rank", "1000000000"], "rank must be at most 32 for this model", False),
        "finetune -k 9 random": (finetune[:-4] + ["--layers", "random", "-k", "9", "--out", str(tmp / "run")], "k must be between 1 and", False),
        # compare
        "compare --out is a file": (compare[:-1] + [str(user_file)], "is a file, not a folder", True),
        "compare --out is someone's folder": (compare[:-1] + [str(user_dir)], "is not a comparison folder", True),
        "compare --seeds 0": (compare + ["--seeds", "0"], "seeds must be a whole number of at least 1, got 0", True),
        "compare seeds past the largest": (compare + ["--seed", "4294967295", "--seeds", "2"], "go past the largest seed", True),
        "compare --strategies empty": (compare + ["--strategies", ""], "strategies must be among", True),
        "compare --lr nan": (compare + ["--lr", "nan"], "lr must be a number in (0, 1], got nan", True),
        # dataset
        "synth --n 0": (synth[:2] + ["--out", str(tmp / "s"), "--n", "0"], "--n must be at least 1, got 0", True),
        "synth --n -3": (synth[:2] + ["--out", str(tmp / "s"), "--n", "-3"], "--n must be at least 1, got -3", True),
        "synth --out is a file": (synth + ["--out", str(user_file)], "is a file, not a folder", True),
        "synth --out under a file": (synth + ["--out", str(user_file / "s")], "is a file, not a folder", True),
        "synth --out is someone's folder": (synth + ["--out", str(user_dir)], "exists and is not empty", True),
        "synth --size 0": (synth[:2] + ["--out", str(tmp / "s"), "--size", "0"], "size must be a whole number of pixels in [16, 4096], got 0", True),
        "synth --size huge": (synth[:2] + ["--out", str(tmp / "s"), "--size", "100000"], "got 100000", True),
        "synth --seed -1": (synth + ["--out", str(tmp / "s"), "--seed", "-1"], "--seed must be a whole number >= 0", True),
        "from-coco --out is a file": (["dataset", "from-coco", "--instances", str(user_file), "--captions", str(user_file),
                                       "--images", str(tmp / "empty"), "--out", str(user_file)], "is a file, not a folder", True),
    }
    for change, message in BROKEN_MODELS.items():
        folder = broken_model(llava_dir, tmp / change.replace(" ", "-"), change)
        cases[f"model: {change}"] = (["score", "--model", str(folder), "--image", image, "--mask", mask, "--text", "a"], message, False)
    return cases


CASE_NAMES = [
    "score --out is a folder", "score --maps is a folder", "score --out under a file", "score --maps under a file",
    "score --out = --maps", "score --out empty", "score --quantile nan", "score --quantile inf", "score --quantile 1",
    "score --max-new-tokens 0", "score missing image", "dataset --cache is a file", "dataset default cache is a file",
    "dataset --out is a folder", "dataset --images-csv is a folder", "dataset with --maps", "dataset --batch-size 0",
    "dataset --seed -1", "dataset --quantile nan", "dataset missing", "score bad int",
    "finetune --out is a file", "finetune --out under a file", "finetune --out is someone's folder", "finetune --out empty",
    "finetune --before --out is someone's folder", "finetune --before --out/adapter is a file",
    "finetune --lr nan", "finetune --lr inf", "finetune --lr 1e30", "finetune --lr 0", "finetune --alpha nan",
    "finetune --dropout nan", "finetune --warmup inf", "finetune --eval-fraction nan", "finetune --steps 0",
    "finetune --steps -5", "finetune --batch-size 0", "finetune --rank -1", "finetune -k 0", "finetune --seed -1",
    "finetune --targets ,", "finetune --layers empty", "finetune --layers 0,,1", "finetune --eval-limit 0",
    "finetune --max-new-tokens 0", "finetune --ranking-limit 0", "finetune --ranking is a folder",
    "finetune --ranking not JSON", "finetune --threads 0", "finetune --threads huge", "finetune --eval-dataset missing", "finetune --layers 5",
    "finetune --rank huge", "finetune -k 9 random", "compare --out is a file", "compare --out is someone's folder", "compare --seeds 0",
    "compare seeds past the largest", "compare --strategies empty", "compare --lr nan", "synth --n 0", "synth --n -3",
    "synth --out is a file", "synth --out under a file", "synth --out is someone's folder", "synth --size 0",
    "synth --size huge", "synth --seed -1", "from-coco --out is a file",
    *(f"model: {change}" for change in BROKEN_MODELS),
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_bad_input_exits_2_with_one_line_before_work_and_writes_nothing(
        case, tmp_path, files, dataset_dir, llava_dir, capsys, monkeypatch):
    import hi_core.cli.common as common

    tmp = tmp_path / "work"
    tmp.mkdir()
    argv, message, early = _cases(tmp, files, dataset_dir, llava_dir)[case]
    if early:
        def no_model(args):
            raise AssertionError("the model was loaded before the bad input was found")

        monkeypatch.setattr(common, "load", no_model)
    before, data_before = _tree(tmp_path), _tree(dataset_dir)
    code = _cli(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].strip() and message in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert _tree(tmp_path) == before and _tree(dataset_dir) == data_before  # nothing written, renamed or removed


def test_case_table_is_complete(tmp_path, files, dataset_dir, llava_dir):
    assert sorted(_cases(tmp_path, files, dataset_dir, llava_dir)) == sorted(CASE_NAMES)


@pytest.mark.parametrize("case", ["finetune --out is a file", "model: truncated weights"])
def test_a_real_process_prints_one_line_and_exits_2(case, tmp_path, files, dataset_dir, llava_dir):
    tmp = tmp_path / "work"
    tmp.mkdir()
    argv, message, _ = _cases(tmp, files, dataset_dir, llava_dir)[case]
    before = _tree(tmp_path)
    result = subprocess.run([sys.executable, "-m", "hi_core", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert _tree(tmp_path) == before


def test_score_creates_missing_parent_folders_of_its_outputs(llava_dir, files):
    out, maps = files / "new" / "deeper" / "score.json", files / "maps" / "m.npz"
    assert main(score_args(llava_dir, files, "--text", "a red square", "--out", str(out), "--maps", str(maps))) == 0
    assert json.loads(out.read_text())["family"] == "llava" and np.load(maps)["maps"].shape == (2, 4, 6, 6)
