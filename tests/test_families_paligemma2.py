"""PaliGemma 2 (`model_type: paligemma` with a Gemma 2 text model): loaded although Gemma 2 has no
SDPA, soft-capped attention captured exactly (rows and the layer's output), the sliding-window
layer under the model's own mask, and attention the capture cannot reproduce refused at load.

The PaliGemma adapter's grid and sequence are PaliGemma's (tests/test_families_paligemma.py); here
they are checked again on the Gemma 2 model with the same independent oracles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from hi_core.model.capture import IMPLEMENTATION, capture_attention, install_capture
from hi_core.model.inputs import build_inputs, to_model_device
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.maps import run_forward

from .family_checks import (
    BATCH_IMAGES,
    PROMPT,
    TEXT,
    check_batched_equals_one_by_one,
    check_capture_equals_eager,
    check_cli_scores_folder,
    check_lora_targets_only_language_model,
    check_refused_at_load,
    check_region_lands_on_its_cells,
    two_scenes,
)
from .oracles import eager_rows
from .tiny_paligemma import SLIDING_WINDOW, build_paligemma2, build_paligemma_with_sinks

SIZE = (140, 70)  # squashed to 56 x 56: x by 0.4, y by 0.8
BOX = (80, 10, 120, 40)
SIDE = 7


@pytest.fixture(scope="module")
def paligemma2_dir(tmp_path_factory):
    return build_paligemma2(tmp_path_factory.mktemp("paligemma2"))


@pytest.fixture(scope="module")
def paligemma2(paligemma2_dir):
    return load_model(LoadConfig(model=str(paligemma2_dir), device="cpu"))


@pytest.fixture(scope="module")
def inputs(paligemma2):
    image = two_scenes(SIZE, BOX)[0]
    return build_inputs(paligemma2.adapter, paligemma2.model, paligemma2.processor, image, PROMPT, TEXT)


def _eager_model(folder, softcap: bool = True):
    model = AutoModelForImageTextToText.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32).eval()
    if not softcap:
        for layer in model.model.language_model.layers:
            layer.self_attn.attn_logit_softcapping = None
    return model


def test_paligemma2_loads_with_an_attention_gemma2_accepts(paligemma2):
    config = paligemma2.model.config
    assert config.model_type == "paligemma" and config.text_config.model_type == "gemma2"
    assert config.text_config._attn_implementation in ("eager", IMPLEMENTATION)  # Gemma 2 has no SDPA
    assert config.vision_config._attn_implementation == "sdpa"
    install_capture(paligemma2.model, paligemma2.adapter)  # transformers accepts the capture for Gemma 2
    assert config.text_config._attn_implementation == IMPLEMENTATION


def test_paligemma2_capture_equals_eager(paligemma2, paligemma2_dir):
    check_capture_equals_eager(paligemma2, paligemma2_dir, two_scenes(SIZE, BOX)[0])


@torch.no_grad()
def test_paligemma2_soft_cap_and_sliding_window_shape_the_captured_rows(paligemma2, paligemma2_dir, inputs):
    """The rows equal eager only because the cap and the window are reproduced: without the cap
    eager differs, and the sliding layer (0) cuts the image off most response rows, the full one (1) never."""
    total = int(inputs.tensors["input_ids"].shape[1])
    assert total > 3 * SLIDING_WINDOW
    queries = inputs.query_positions(np.arange(inputs.num_response_tokens), "reading")
    keys = inputs.layout.positions.reshape(-1)
    with capture_attention(paligemma2.model, paligemma2.adapter, queries, keys) as cache:
        run_forward(paligemma2, inputs.tensors)
    captured = cache.stacked()[:, 0].numpy()  # (layers, heads, rows, keys)
    uncapped = _eager_model(paligemma2_dir, softcap=False)
    outputs = uncapped(**to_model_device(inputs.tensors, uncapped), output_attentions=True, use_cache=False)
    without_cap = torch.stack([a[0] for a in outputs.attentions])[:, :, queries][..., keys].numpy()
    assert np.abs(captured - without_cap).max() > 1e-2
    np.testing.assert_allclose(captured, eager_rows(str(paligemma2_dir), inputs, queries, keys), atol=1e-5)
    assert (captured[0] == 0).mean() > 0.5 and (captured[1] > 0).all()


@torch.no_grad()
def test_paligemma2_logits_with_the_capture_equal_eager(paligemma2, paligemma2_dir, inputs):
    """Soft-capped layers compute their output with the cap (SDPA cannot): the model's logits with the
    capture installed, and while it records, equal the eager model's, the sliding layer included."""
    expected = _eager_model(paligemma2_dir)(**to_model_device(inputs.tensors, paligemma2.model), use_cache=False).logits
    install_capture(paligemma2.model, paligemma2.adapter)
    plain = paligemma2.model(**to_model_device(inputs.tensors, paligemma2.model), use_cache=False).logits
    with capture_attention(paligemma2.model, paligemma2.adapter, [inputs.prefix_length], [0]):
        recording = paligemma2.model(**to_model_device(inputs.tensors, paligemma2.model), use_cache=False).logits
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(recording, plain, rtol=0, atol=0)
    assert expected.std() > 0.1


@torch.no_grad()
def test_paligemma2_generation_with_the_capture_equals_eager(paligemma2, paligemma2_dir, inputs):
    """Decode steps (one query over the cache) through the capture give eager's greedy tokens."""
    install_capture(paligemma2.model, paligemma2.adapter)
    prefix = {key: value[:, : inputs.prefix_length] if value.dim() == 2 else value for key, value in inputs.tensors.items()}
    settings = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    ours = paligemma2.model.generate(**to_model_device(prefix, paligemma2.model), **settings)
    theirs = _eager_model(paligemma2_dir).generate(**prefix, **settings)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_paligemma2_grid_follows_the_squash_resize(paligemma2):
    # Box x 80..120 -> 32..48 -> cols 4-5; y 10..40 -> 8..32 -> rows 1-3 (8-px cells).
    cells = check_region_lands_on_its_cells(paligemma2, SIZE, BOX)
    expected = np.zeros((SIDE, SIDE), dtype=bool)
    expected[1:4, 4:6] = True
    np.testing.assert_array_equal(cells, expected)


@pytest.mark.parametrize("queries", ["producing", "reading"])
def test_paligemma2_batched_equals_one_by_one(paligemma2, queries):
    check_batched_equals_one_by_one(paligemma2, *BATCH_IMAGES, queries)


def test_paligemma2_lora_targets_only_language_model_layers(paligemma2):
    check_lora_targets_only_language_model(paligemma2, (0, 1))


def test_paligemma2_folder_scores_from_the_command_line(paligemma2_dir, tmp_path, capsys):
    check_cli_scores_folder(paligemma2_dir, tmp_path, capsys, SIZE, BOX, "paligemma", (SIDE, SIDE), text="a red square",
                            num_layers=2, num_heads=4)


def test_paligemma2_tester_config_captures_eager(tmp_path):
    """transformers' own PaliGemma 2 tester config (one KV head, head_dim 8, cap 50, 4 x 4 tokens)."""
    folder = build_paligemma2(tmp_path, tester=True)
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    assert loaded.model.config.text_config.attn_logit_softcapping == 50.0
    check_capture_equals_eager(loaded, folder, two_scenes(SIZE, BOX)[0])
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, two_scenes(SIZE, BOX)[0], PROMPT, TEXT)
    assert inputs.layout.grid == (4, 4)


@pytest.fixture(scope="module")
def sinks_dir(tmp_path_factory):
    return build_paligemma_with_sinks(tmp_path_factory.mktemp("sinks"))


def test_attention_sinks_are_refused_at_load_naming_them(sinks_dir, tmp_path, capsys):
    check_refused_at_load(sinks_dir, "attention sinks (s_aux), which the attention capture cannot reproduce", capsys, tmp_path)
