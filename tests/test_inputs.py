"""The sequence: prefix + response tokens, key-phrase token selection, producing/reading rows."""

from __future__ import annotations

import numpy as np
import pytest

from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs, key_phrase_tokens, phrase_span


@pytest.fixture
def inputs(llava, scene):
    image, _ = scene
    return build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", "a big red square on the left")


def test_response_follows_the_prefix(llava, scene, inputs):
    image, _ = scene
    prefix = llava.adapter.prefix_inputs(llava.processor, image, "Describe the image.")
    ids = inputs.tensors["input_ids"][0].tolist()
    assert ids[: inputs.prefix_length] == prefix["input_ids"][0].tolist()
    assert ids[inputs.prefix_length :] == llava.processor.tokenizer("a big red square on the left", add_special_tokens=False)["input_ids"]
    assert inputs.tensors["attention_mask"].shape == inputs.tensors["input_ids"].shape
    assert inputs.tensors["attention_mask"].all()
    # the prefix ends with the generation prompt
    assert llava.processor.tokenizer.decode(ids[inputs.prefix_length - 2 : inputs.prefix_length]).replace(" ", "") == "assistant:"


def test_key_phrase_selects_overlapping_tokens(inputs):
    np.testing.assert_array_equal(key_phrase_tokens(inputs, "red square"), [2, 3])
    np.testing.assert_array_equal(key_phrase_tokens(inputs, "RED SQ"), [2, 3])  # case-insensitive, partial token
    np.testing.assert_array_equal(key_phrase_tokens(inputs, None), np.arange(7))


def test_key_phrase_missing_is_an_input_error(inputs):
    with pytest.raises(InputError, match="does not occur"):
        key_phrase_tokens(inputs, "green star")


def test_producing_rows_are_one_before_the_token(inputs):
    tokens = np.array([0, 3])
    np.testing.assert_array_equal(inputs.query_positions(tokens, "producing"), inputs.prefix_length + tokens - 1)
    np.testing.assert_array_equal(inputs.query_positions(tokens, "reading"), inputs.prefix_length + tokens)
    with pytest.raises(InputError, match="queries must be one of producing, reading"):
        inputs.query_positions(tokens, "writing")


def test_empty_text_is_an_input_error(llava, scene):
    image, _ = scene
    with pytest.raises(InputError, match="empty"):
        build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", " ")


@pytest.mark.parametrize("text, phrase, expected", [
    ("a snowman and a man", "man", (16, 19)),  # whole words first
    ("A Man and a snowman", "man", (2, 5)),
    ("two red squares", "square", (8, 14)),  # no whole-word match: the first substring (a plural)
    ("a hot-dog", "dog", (6, 9)),
    ("a cat", "dog", None),
])
def test_phrase_span_prefers_whole_words(text, phrase, expected):
    assert phrase_span(text, phrase) == expected


def test_text_beyond_the_context_is_refused_naming_the_limit(llava, scene):
    image, _ = scene
    limit = llava.model.config.get_text_config().max_position_embeddings
    assert limit == 4096
    words = " ".join(["red"] * 5000)
    with pytest.raises(InputError, match=r"are \d+ tokens \(\d+ \+ 5000 of the description\), more than the model's context of 4096"):
        build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", words)
    prefix = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", "red").prefix_length
    fits = build_inputs(llava.adapter, llava.model, llava.processor, image, "Describe the image.", " ".join(["red"] * (limit - prefix)))
    assert fits.tensors["input_ids"].shape[1] == limit  # exactly the context is allowed


def test_a_too_small_image_is_an_input_error(llava):
    from PIL import Image

    with pytest.raises(InputError, match="image is 1x1 px: it must be at least 8 px"):
        build_inputs(llava.adapter, llava.model, llava.processor, Image.new("RGB", (1, 1)), "Describe the image.", "a red square")


@pytest.mark.parametrize("field, prompt, text", [
    ("prompt", "Describe <image> the image.", "a red square"),  # a second image placeholder
    ("description", "Describe the image.", "a red square </s> and a circle"),  # a turn marker
])
def test_a_special_token_typed_into_the_prompt_or_description_is_refused(llava, scene, field, prompt, text):
    with pytest.raises(InputError, match=f"the {field} contains '<?/?[a-z]+>', a special token"):
        build_inputs(llava.adapter, llava.model, llava.processor, scene[0], prompt, text)
    inputs = build_inputs(llava.adapter, llava.model, llava.processor, scene[0], "Describe the image.", "a red square")
    assert inputs.num_response_tokens == 3  # plain words still go through
