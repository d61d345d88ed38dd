"""Held-out captions: left-padded batches generate what one-at-a-time generation does, each image with
its own prompt when given one; metrics and notes; VQA answers scored by answer accuracy."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.model.captioning import evaluate_answers, evaluate_captions, generate_captions, left_padded
from hi_core.model.metrics import accuracy_interval


def test_left_padding_aligns_the_ends_and_masks_the_padding():
    short = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.ones(1, 2, dtype=torch.long), "pixel_values": torch.zeros(1, 3, 4, 4)}
    long = {"input_ids": torch.tensor([[7, 8, 9, 10]]), "attention_mask": torch.ones(1, 4, dtype=torch.long), "pixel_values": torch.ones(1, 3, 4, 4)}
    batch = left_padded([short, long], pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6], [7, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["pixel_values"][1].eq(1).all()


def test_batched_captions_equal_one_at_a_time(llava):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(5)]
    batched = generate_captions(llava, images, "describe the image .", max_new_tokens=6, batch_size=3)
    assert batched == [one_caption(llava, image) for image in images]
    assert any(batched)


def test_each_image_is_asked_its_own_prompt(llava):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(4)]
    prompts = ["what is at the top ?", "describe the image .", "what is at the left ?", "what is in this picture ?"]
    batched = generate_captions(llava, images, prompts, max_new_tokens=6, batch_size=4)  # prompts of 3 lengths, left-padded
    assert batched == [one_caption(llava, image, prompt) for image, prompt in zip(images, prompts)]
    assert batched != generate_captions(llava, images, "describe the image .", max_new_tokens=6, batch_size=4)  # the prompts mattered
    with pytest.raises(ValueError, match="argument 2 is shorter than argument 1"):  # 3 prompts for 4 images
        generate_captions(llava, images, prompts[:3])


def test_answers_are_scored_by_accuracy_with_an_interval_and_marked():
    references = {"1": "red", "2": "circle", "3": "2", "4": "blue"}
    answers = {"1": "Red.", "2": "the circle", "3": "three", "4": ""}
    questions = {"1": "what colour is it ?", "2": "what shape is it ?", "3": "how many ?"}  # record 4 has no prompt of its own
    result = evaluate_answers(references, answers, questions)
    assert result.metrics == {"accuracy": 0.5}  # no caption metrics for one-word answers
    low, high = accuracy_interval(2, 4)
    assert result.intervals == {"accuracy": {"low": low, "high": high}} and low < 0.5 < high
    assert [c["correct"] for c in result.captions] == [True, True, False, False]
    assert result.captions[0] == {"id": "1", "prompt": "what colour is it ?", "reference": "red", "generated": "Red.", "correct": True}
    assert "prompt" not in result.captions[3] and any("normalized exact match" in note for note in result.notes)
    with pytest.raises(ValueError):
        evaluate_answers(references, {"1": "red"})


@torch.inference_mode()
def one_caption(loaded, image, prompt="describe the image ."):
    prefix = loaded.adapter.prefix_inputs(loaded.processor, image, prompt)
    output = loaded.model.generate(**prefix, max_new_tokens=6, do_sample=False)
    return loaded.processor.tokenizer.decode(output[0, prefix["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_metrics_exact_match_and_notes():
    references = {"1": "a big red circle at the top", "2": "a small blue star at the left"}
    result = evaluate_captions(references, {"1": "a big red circle at the top", "2": "a small red star at the left"}, meteor=False)
    assert result.metrics["exact"] == 0.5 and 0 < result.metrics["bleu4"] < 1
    assert "meteor" not in result.metrics and any("SPICE" in n for n in result.notes) and any("METEOR" in n for n in result.notes)
    assert result.samples == [{"id": "1", "reference": references["1"], "generated": "a big red circle at the top"},
                              {"id": "2", "reference": references["2"], "generated": "a small red star at the left"}]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_where_java_is_installed():
    references = {"1": "a big red circle at the top", "2": "a small blue star at the left"}
    half = evaluate_captions(references, {"1": "a dog", "2": "a small blue star at the left"})  # one Java start (~6 s)
    assert 0 < half.metrics["meteor"] < 1
    assert not any("METEOR" in note for note in half.notes)


def test_meteor_is_skipped_with_a_note_without_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = evaluate_captions({"1": "a cat"}, {"1": "a cat"})
    assert "meteor" not in result.metrics and any("Java is not installed" in note for note in result.notes)
