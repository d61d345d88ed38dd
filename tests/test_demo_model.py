"""The shipped demo model: loads offline by name, describes scenes, and its heads localize objects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.captioning import generate_description
from hi_core.cli import main
from hi_core.datasets import read_dataset
from hi_core.loading import DEMO_MODEL_DIR, LoadConfig, load_model

EXAMPLES = DEMO_MODEL_DIR.parent / "examples"


@pytest.fixture(scope="module")
def demo():
    return load_model(LoadConfig("demo", device="cpu"))


def test_demo_is_a_small_safetensors_llava(demo):
    assert demo.family == "llava"
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    assert not list(DEMO_MODEL_DIR.glob("*.bin"))
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert "Head Impact profile" in card and "BLEU-4" in card


def test_demo_top_head_is_far_above_chance_on_the_examples(demo):
    his, chances = [], []
    for record in read_dataset(EXAMPLES):
        analysis = analyze_image(demo, record.image, record.mask, record.text, AnalysisConfig(key_phrase=record.key_phrase))
        assert analysis.grid == (12, 12)
        his.append(analysis.hi)
        chances.append(analysis.chance)
    mean_hi = np.mean(his, axis=0)
    assert mean_hi.max() >= 0.5
    assert mean_hi.max() >= 5 * np.mean(chances)


def test_demo_names_the_objects_it_sees(demo):
    records = list(read_dataset(EXAMPLES))
    named = [obj_phrase in generate_description(demo, r.image, max_new_tokens=40) for r in records for obj_phrase in [r.key_phrase]]
    assert np.mean(named) >= 0.6


def test_cli_scores_an_example_with_the_demo(tmp_path):
    record = json.loads((EXAMPLES / "data.jsonl").read_text().splitlines()[0])
    out = tmp_path / "s.json"
    code = main(["score", "--model", "demo", "--image", str(EXAMPLES / record["image"]), "--mask", str(EXAMPLES / record["mask"]),
                 "--text", record["text"], "--key-phrase", record["key_phrase"], "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["grid"] == [12, 12] and result["heads"][0]["hi"] > 3 * result["chance"]
