"""`python -m hi_core score`: the JSON contract of DESIGN section 6, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hi_core.cli import main
from hi_core.families import supported_families


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
