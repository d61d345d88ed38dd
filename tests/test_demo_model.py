"""The shipped demo model: loads offline by name, is deep enough to rank layers (>= 6 x 8), describes
scenes and answers questions about them, and its heads localize the objects named or asked about."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.model.captioning import generate_description
from hi_core.cli.main import main
from hi_core.demo import build
from hi_core.data.datasets import read_dataset
from hi_core.model.loading import DEMO_MODEL_DIR, LoadConfig, load_model
from hi_core.data.synth import QUESTION_KINDS, make_vqa

EXAMPLES = DEMO_MODEL_DIR.parent / "examples"
UNSEEN_SEED = 2026  # training streamed scenes from seed 0, the model card's held-out sets use 10000 and 10001

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_model(LoadConfig("demo", device="cpu"))


@pytest.fixture(scope="module")
def questions():
    """Five unseen questions of every kind, with their scenes."""
    rng = np.random.default_rng(UNSEEN_SEED)
    return [make_vqa(rng, kind) for _ in range(5) for kind in QUESTION_KINDS]


def test_demo_is_a_small_safetensors_llava_of_at_least_6_layers_of_8_heads(demo):
    assert demo.family == "llava"
    text = demo.model.config.text_config
    assert text.num_hidden_layers >= 6 and text.num_attention_heads >= 8
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    assert not list(DEMO_MODEL_DIR.glob("*.bin"))
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert "Head Impact profile" in card and "BLEU-4" in card and "Held-out questions" in card


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


def test_demo_top_head_on_the_answers_is_far_above_chance(demo, questions):
    """About the issue's 0.5 on answers (v4: 0.51 on the card's selection questions, 0.49 held out; v3 0.41): the
    bar here is far above chance (0.03) and the untrained model (0.25)."""
    his, chances = [], []
    for scene, question in questions:
        analysis = analyze_image(demo, Image.fromarray(scene.image), scene.masks[question.target], question.answer,
                                 AnalysisConfig(prompt=question.text))
        his.append(analysis.hi)
        chances.append(analysis.chance)
    mean_hi = np.mean(his, axis=0)
    assert mean_hi.max() >= 0.3
    assert mean_hi.max() >= 5 * np.mean(chances)


def test_demo_names_the_objects_it_sees(demo):
    """The bundled examples' key objects named in full ("size colour shape"); the card: 79% of held-out objects."""
    records = list(read_dataset(EXAMPLES))
    named = [r.key_phrase in generate_description(demo, r.image, max_new_tokens=48) for r in records]
    assert np.mean(named) >= 0.6


def test_demo_answers_questions_about_unseen_scenes(demo, questions):
    """Far above guessing (chance: 1/8 colours, 1/6 shapes, 1/9 positions, 1/2 yes/no: 0.22 on
    average); 0.825 on the card's 200 held-out questions."""
    right = [generate_description(demo, Image.fromarray(scene.image), question.text, max_new_tokens=4) == question.answer
             for scene, question in questions]
    assert np.mean(right) >= 0.4


def test_cli_scores_an_example_with_the_demo(demo, tmp_path):
    record = json.loads((EXAMPLES / "data.jsonl").read_text().splitlines()[0])
    out = tmp_path / "s.json"
    code = main(["score", "--model", "demo", "--image", str(EXAMPLES / record["image"]), "--mask", str(EXAMPLES / record["mask"]),
                 "--text", record["text"], "--key-phrase", record["key_phrase"], "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["grid"] == [12, 12] and result["heads"][0]["hi"] > 3 * result["chance"]
    text = demo.model.config.text_config
    assert (result["num_layers"], result["num_heads"]) == (text.num_hidden_layers, text.num_attention_heads)
    assert len(result["heads"]) == text.num_hidden_layers * text.num_attention_heads


def test_the_cards_architecture_and_builds_constants_are_the_shipped_configs():
    """The card's architecture lines and demo/build.py's constants say what config.json holds (they once said one
    CLIP layer when the model had two)."""
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert (
        f"- Vision: CLIP, {vision['num_hidden_layers']} layers, hidden {vision['hidden_size']}, "
        f"{vision['num_attention_heads']} heads, {vision['image_size']}x{vision['image_size']} images, "
        f"{vision['patch_size']}-px patches" in card
    )
    head_size = text["hidden_size"] // text["num_attention_heads"]
    assert (
        f"- Language model: Llama, {text['num_hidden_layers']} layers, hidden {text['hidden_size']}, "
        f"{text['num_attention_heads']} heads (head size {head_size})" in card
    )
    assert (build.VISION_LAYERS, build.VISION_HIDDEN) == (vision["num_hidden_layers"], vision["hidden_size"])
    assert (build.TEXT_LAYERS, build.TEXT_HEADS, build.TEXT_HEAD_DIM) == (
        text["num_hidden_layers"], text["num_attention_heads"], head_size)
    assert (build.IMAGE_SIZE, build.PATCH_SIZE) == (vision["image_size"], vision["patch_size"])
