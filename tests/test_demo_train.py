"""The demo model's trainer: hand-built batches equal the processor's, for descriptions and
questions; each task's loss counts once; a few steps reduce the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hi_core.demo.evaluation as demo_evaluation
import hi_core.demo.train as demo_train
from hi_core.demo.build import build_model, vocabulary
from hi_core.demo.train import (
    Prefixes,
    TrainConfig,
    caption_example,
    make_batch,
    prefix_ids,
    task_loss,
    train,
    training_examples,
    vqa_example,
)
from hi_core.base.errors import InputError
from hi_core.model.loading import DEMO_MODEL_DIR, LoadConfig, load_model
from hi_core.model.metrics import normalize_answer
from hi_core.data.synth import QUESTION_KINDS, Scene, SceneObject, make_scene, make_vqa

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built():
    return build_model(seed=0)


def _examples():
    captions = [caption_example(make_scene(np.random.default_rng(i))) for i in range(3)]
    rng = np.random.default_rng(5)
    return captions + [vqa_example(*make_vqa(rng, kind)) for kind in QUESTION_KINDS]


def test_hand_built_batch_equals_the_processor(built):
    model, processor = built
    examples = _examples()
    batch = make_batch(processor, Prefixes(processor), examples)
    assert batch["vqa"].tolist() == [False] * 3 + [True] * len(QUESTION_KINDS)
    for row, example in enumerate(examples):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.prompt}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reference = processor(text=prompt + " " + example.target, images=[Image.fromarray(example.image)], return_tensors="pt")
        length = reference["input_ids"].shape[1]
        np.testing.assert_array_equal(batch["input_ids"][row, :length], reference["input_ids"][0])
        assert batch["input_ids"][row, length] == processor.tokenizer.eos_token_id
        assert (batch["attention_mask"][row, : length + 1] == 1).all() and (batch["attention_mask"][row, length + 1 :] == 0).all()
        torch.testing.assert_close(batch["pixel_values"][row], reference["pixel_values"][0], atol=1e-5, rtol=0)
        prefix = len(prefix_ids(processor, example.prompt))
        assert (batch["labels"][row, :prefix] == -100).all() and (batch["labels"][row, length + 1 :] == -100).all()
        np.testing.assert_array_equal(batch["labels"][row, prefix : length + 1], batch["input_ids"][row, prefix : length + 1])


def test_each_task_loss_is_its_own_token_mean(built):
    model, processor = built
    examples = _examples()
    batch = make_batch(processor, Prefixes(processor), examples)
    with torch.no_grad():
        loss = task_loss(model, batch)
        # oracle: the model's own loss (mean over labelled tokens) on each task's rows alone
        alone = []
        for task in ("caption", "vqa"):
            rows = make_batch(processor, Prefixes(processor), [e for e in examples if e.task == task])
            rows.pop("vqa")
            alone.append(model(**rows, use_cache=False).loss)
    torch.testing.assert_close(loss, alone[0] + alone[1], atol=1e-4, rtol=1e-4)


def test_every_scene_word_is_in_the_vocabulary(built):
    model, processor = built
    unknown = processor.tokenizer.unk_token_id
    rng = np.random.default_rng(0)
    for seed in range(20):
        scene, question = make_vqa(rng, QUESTION_KINDS[seed % len(QUESTION_KINDS)])
        for text in (make_scene(np.random.default_rng(seed)).text, question.text, question.answer):
            assert unknown not in processor.tokenizer(text, add_special_tokens=False)["input_ids"], text
    assert len(set(vocabulary())) == len(vocabulary())


@pytest.mark.parametrize("text, normalized", [("red", "red"), (" The Red. ", "red"), ("top  left", "top left"), ("Yes!", "yes"),
                                              ("a circle", "circle")])
def test_answers_are_normalized_before_matching(text, normalized):  # the pipeline's metric, on the demo's answers
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize("field, value", [("vqa_share", 1.5), ("vqa_share", -0.1), ("steps", 0), ("batch_size", 0),
                                          ("vision_hidden", 0), ("vision_hidden", 66), ("vision_layers", 0), ("text_head_dim", 15), ("text_head_dim", 0), ("patch_shape_weight", -1.0),
                                          ("patch_shape_weight", float("nan"))])
def test_bad_training_settings_are_input_errors(field, value):
    with pytest.raises(InputError, match=field):
        TrainConfig(**{field: value})


def test_a_wider_or_deeper_vision_tower_or_wider_heads_are_built_on_request_and_the_default_is_the_shipped_model():
    shipped = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    default, _ = build_model(seed=0)
    wide, processor = build_model(seed=0, vision_hidden=128)
    deep, _ = build_model(seed=0, vision_layers=2)
    wide_heads, _ = build_model(seed=0, text_head_dim=32)
    assert (default.config.vision_config.hidden_size, default.config.vision_config.num_hidden_layers) == (
        shipped["vision_config"]["hidden_size"], shipped["vision_config"]["num_hidden_layers"])
    text = shipped["text_config"]
    assert default.config.text_config.head_dim == text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
    assert (wide.config.vision_config.hidden_size, wide.config.vision_config.intermediate_size) == (128, 256)
    assert len(deep.model.vision_tower.encoder.layers) == 2
    attention = wide_heads.model.language_model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.o_proj.in_features, attention.head_dim) == (8 * 32, 8 * 32, 32)
    batch = make_batch(processor, Prefixes(processor), training_examples(np.random.default_rng(0), TrainConfig(batch_size=2)))
    assert all(torch.isfinite(task_loss(model, batch)) for model in (wide, deep, wide_heads))


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model, processor = build_model(seed=0)
    losses = train(model, processor, TrainConfig(steps=40, batch_size=8, warmup=5, lr=3e-3))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    assert not model.training


def test_single_object_report_counts_each_attribute_stated_right(monkeypatch):
    objects = [SceneObject("star", "red", "big", 0, 1), SceneObject("circle", "blue", "small", 1, 1),
               SceneObject("cross", "white", "big", 2, 0)]
    scenes = [Scene(np.zeros((96, 96, 3), np.uint8), np.ones((1, 96, 96), bool), (obj,), 0) for obj in objects]
    captions = ["a big red star at the top",  # all four right
                "a small blue square at the center",  # the shape wrong
                "a big white cross at the bottom"]  # the position wrong: bottom left
    monkeypatch.setattr(demo_evaluation, "generate_captions", lambda loaded, images, prompt, max_new_tokens: captions)
    report = demo_evaluation.single_object_report(None, scenes)
    assert report == {"shape": pytest.approx(2 / 3), "colour": 1.0, "size": 1.0, "position": pytest.approx(2 / 3),
                      "all": pytest.approx(1 / 3), "scenes": 3}


def test_a_short_run_saves_a_loadable_model_and_a_card_of_every_evaluation(tmp_path):
    config = TrainConfig(steps=3, batch_size=2, warmup=1, eval_scenes=3, eval_questions=1, hi_scenes=2, eval_single=2,
                         vision_layers=2, patch_shape_weight=0.5)
    report = demo_evaluation.run(tmp_path / "model", config, command="python -m hi_core.demo train --steps 3", threads=1)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["vision_config"]["num_hidden_layers"] == 2 and report["config"]["vision_layers"] == 2
    assert report["single_object"]["scenes"] == 2 and report["vqa"]["questions_per_kind"] == {k: 1 for k in QUESTION_KINDS}
    assert json.loads((tmp_path / "model" / "eval.json").read_text()) == json.loads(json.dumps(report))
    card = (tmp_path / "model" / "README.md").read_text()
    assert "0.5 x the image tokens' shape loss" in card and "CLIP, 2 layers" in card and "One object alone (2 held-out scenes" in card and "--steps 3" in card
    assert (tmp_path / "model" / "top_head.png").read_bytes()[:4] == b"\x89PNG"


def test_patch_shapes_label_each_token_with_the_shape_covering_most_of_it():
    masks = np.zeros((2, 96, 96), bool)
    masks[0, :8, :8] = True  # the star covers token (0, 0)
    masks[0, :8, 8:9] = True  # and 1/8 of token (0, 1): too little
    masks[0, 8:12, 8:16] = True  # half of token (1, 1)
    masks[1, 12:15, 8:16] = True  # 3/8 of token (1, 1): the star's half wins
    masks[1, 16:20, 16:24] = True  # half of token (2, 2): the circle's
    objects = (SceneObject("star", "red", "big", 0, 0), SceneObject("circle", "blue", "small", 1, 1))
    labels = demo_train.patch_shapes(Scene(np.zeros((96, 96, 3), np.uint8), masks, objects, 0)).reshape(12, 12)
    star, circle = 1 + demo_train.SHAPES.index("star"), 1 + demo_train.SHAPES.index("circle")
    expected = np.zeros((12, 12), int)
    expected[0, 0], expected[1, 1], expected[2, 2] = star, star, circle
    np.testing.assert_array_equal(labels, expected)


def test_the_patch_shape_loss_trains_a_probe_that_is_not_saved_and_leaves_no_hook():
    torch.manual_seed(0)
    model, processor = build_model(seed=0)
    keys = set(model.state_dict())
    examples = training_examples(np.random.default_rng(0), TrainConfig(batch_size=4))
    loss = demo_train.PatchShapeLoss(model)
    model(**{k: v for k, v in make_batch(processor, Prefixes(processor), examples).items() if k not in ("labels", "vqa")})
    value = loss(torch.from_numpy(np.stack([example.shapes for example in examples])))
    assert value.item() == pytest.approx(np.log(len(demo_train.SHAPES) + 1), abs=0.5)  # an untrained probe: near uniform
    loss.remove()
    train(model, processor, TrainConfig(steps=3, batch_size=4, warmup=1, patch_shape_weight=1.0))
    assert not model.model.multi_modal_projector._forward_hooks and set(model.state_dict()) == keys


def test_training_can_start_from_a_trained_demo_model_of_the_same_architecture(tmp_path):
    model, _ = build_model(seed=1)
    parent = demo_train.start_from(model, DEMO_MODEL_DIR)
    shipped = load_model(LoadConfig(str(DEMO_MODEL_DIR), device="cpu")).model.state_dict()
    assert all(torch.equal(value, shipped[name]) for name, value in model.state_dict().items())
    assert parent["command"].startswith("python -m hi_core.demo train")
    line = demo_evaluation._init_line({"init_from": parent})
    assert parent["command"] in line and "continued it" in line and demo_evaluation._init_line({"init_from": None}) == ""
    wide, _ = build_model(seed=0, vision_hidden=128)
    with pytest.raises(InputError, match="architecture"):
        demo_train.start_from(wide, DEMO_MODEL_DIR)
    with pytest.raises(InputError, match="not a trained demo model folder"):
        demo_train.start_from(model, tmp_path)
