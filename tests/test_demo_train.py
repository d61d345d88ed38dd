"""The demo model's trainer: hand-built batches equal the processor's; a few steps reduce the loss."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hi_core.demo.build import build_model, vocabulary
from hi_core.demo.train import TrainConfig, make_batch, prefix_ids, train
from hi_core.synth import make_scene


def test_hand_built_batch_equals_the_processor():
    model, processor = build_model(seed=0)
    scenes = [make_scene(np.random.default_rng(i)) for i in range(3)]
    batch = make_batch(processor, prefix_ids(processor), scenes)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for row, scene in enumerate(scenes):
        reference = processor(text=prompt + " " + scene.text, images=[Image.fromarray(scene.image)], return_tensors="pt")
        length = reference["input_ids"].shape[1]
        np.testing.assert_array_equal(batch["input_ids"][row, :length], reference["input_ids"][0])
        assert batch["input_ids"][row, length] == processor.tokenizer.eos_token_id
        torch.testing.assert_close(batch["pixel_values"][row], reference["pixel_values"][0], atol=1e-5, rtol=0)
        prefix = len(prefix_ids(processor))
        assert (batch["labels"][row, :prefix] == -100).all() and (batch["labels"][row, prefix : length + 1] >= 0).all()


def test_every_scene_word_is_in_the_vocabulary():
    model, processor = build_model(seed=0)
    unknown = processor.tokenizer.unk_token_id
    for seed in range(20):
        ids = processor.tokenizer(make_scene(np.random.default_rng(seed)).text, add_special_tokens=False)["input_ids"]
        assert unknown not in ids
    assert len(set(vocabulary())) == len(vocabulary())


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model, processor = build_model(seed=0)
    losses = train(model, processor, TrainConfig(steps=40, batch_size=8, warmup=5, lr=3e-3))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert not model.training
