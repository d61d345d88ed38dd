"""The released models' token layouts at their true size (`tests/real_models.py`: published configs,
stand-in tokenizer with the real special ids), and, opt-in, one analysis of real-size SmolVLM-256M.

The cheap tests build only processors (no weights). The slow test builds SmolVLM-256M's folder once
(~0.5 GB in ~/.cache/hi-explorer/real-size, see real_models.py) and runs when HI_REAL_SIZE is set:

    HI_REAL_SIZE=1 python -m pytest -q tests/test_real_size.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from .real_models import build_real_model, real_processor, source_dir

SMOL_IMAGE, SMOL_FAKE, SMOL_GLOBAL, SMOL_ROW_1_COL_1, SMOL_END = 49190, 49189, 49152, 49153, 49279
QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_PAD = 151652, 151653, 151655
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]

slow = pytest.mark.real_size  # collected only with HI_REAL_SIZE=1 (tests/conftest.py)


def photo(width: int = 1024, height: int = 768) -> Image.Image:
    """A seeded photo-like RGB image: smooth noise."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def smolvlm():
    return real_processor("smolvlm-256m")


@pytest.fixture(scope="module")
def qwen2_vl():
    return real_processor("qwen2-vl-2b")


def test_the_stand_in_tokenizers_keep_the_real_size_and_special_ids(smolvlm, qwen2_vl):
    for name, processor in (("smolvlm-256m", smolvlm), ("qwen2-vl-2b", qwen2_vl)):
        published = json.loads((source_dir(name) / "special_tokens.json").read_text())
        tokenizer = processor.tokenizer
        for i, entry in published["added_tokens_decoder"].items():
            assert tokenizer.convert_tokens_to_ids(entry["content"]) == int(i), entry["content"]
        assert tokenizer.eos_token == published["eos_token"] and tokenizer.pad_token == published["pad_token"]
    assert len(smolvlm.tokenizer) == 49280
    assert len(qwen2_vl.tokenizer) == 151657  # 151,643 BPE tokens + 14 added; the model's embedding has 151,936 rows
    text = "Describe the red cat."
    assert smolvlm.tokenizer.decode(smolvlm.tokenizer.encode(text, add_special_tokens=False)) == text


def test_smolvlm_256m_cuts_a_1024x768_photo_into_12_tiles_and_a_global_view(smolvlm):
    # The published template (no space after "User:" before an image) and the real special ids.
    text = smolvlm.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>User:<image>Describe the image.<end_of_utterance>\nAssistant:"
    inputs = smolvlm(text=text, images=[photo()], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    # Longest edge 1024 -> 2048 (size.longest_edge), i.e. 2048 x 1536: 4 x 3 tiles of 512 px, each
    # (512 / 16 / 4)^2 = 64 tokens, plus the global view's 64.
    assert tuple(inputs["pixel_values"].shape) == (1, 13, 3, 512, 512)
    assert ids.count(SMOL_IMAGE) == 832 == 12 * 64 + 64
    assert ids[0] == 1 and ids.count(SMOL_END) == 1  # <|im_start|>, <end_of_utterance>
    assert ids.count(SMOL_FAKE) == 12 + 2 and ids.count(SMOL_GLOBAL) == 1
    # Each tile: <fake_token_around_image><row_r_col_c> + 64 x <image>, rows left to right, top to bottom;
    # then <fake_token_around_image><global-img> + 64 x <image> + <fake_token_around_image>.
    markers = [ids[i + 1] for i, token in enumerate(ids) if token == SMOL_FAKE and i + 1 < len(ids) and ids[i + 1] != SMOL_IMAGE]
    markers = [m for m in markers if m == SMOL_GLOBAL or SMOL_ROW_1_COL_1 <= m < SMOL_ROW_1_COL_1 + 36]
    assert markers == [SMOL_ROW_1_COL_1 + 6 * row + col for row in range(3) for col in range(4)] + [SMOL_GLOBAL]
    assert smolvlm.tokenizer.convert_ids_to_tokens([49153, 49156, 49165, 49168]) == [
        "<row_1_col_1>", "<row_1_col_4>", "<row_3_col_1>", "<row_3_col_4>"]
    for marker in markers:
        start = ids.index(marker) + 1
        assert ids[start : start + 64] == [SMOL_IMAGE] * 64 and ids[start + 64] != SMOL_IMAGE
    assert ids[ids.index(SMOL_GLOBAL) + 65] == SMOL_FAKE


def test_qwen2_vl_2b_puts_a_1024x768_photo_on_a_grid_of_28_px_tokens(qwen2_vl):
    settings = json.loads((source_dir("qwen2-vl-2b") / "preprocessor_config.json").read_text())
    patch, merge = settings["patch_size"], settings["merge_size"]
    assert (patch, merge) == (14, 2)
    text = qwen2_vl.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>Describe the image.")
    inputs = qwen2_vl(text=text, images=[photo()], return_tensors="pt")
    t, h, w = (int(n) for n in inputs["image_grid_thw"][0])
    # Smart resize: each side rounded to a multiple of patch x merge = 28 px, within the file's pixel budget.
    unit = patch * merge
    height, width = round(768 / unit) * unit, round(1024 / unit) * unit
    assert settings["min_pixels"] <= height * width <= settings["max_pixels"]
    assert (t, h, w) == (1, height // patch, width // patch) == (1, 54, 74)
    ids = inputs["input_ids"][0].tolist()
    pads = t * h * w // (merge * merge)
    assert ids.count(QWEN_IMAGE_PAD) == pads == 999
    start, end = ids.index(QWEN_VISION_START), ids.index(QWEN_VISION_END)
    assert ids[start + 1 : end] == [QWEN_IMAGE_PAD] * pads  # one run, row-major on the (h/2) x (w/2) grid
    assert tuple(inputs["pixel_values"].shape) == (t * h * w, 3 * settings["temporal_patch_size"] * patch * patch)
    assert math.isclose(pads, 768 * 1024 / unit**2, rel_tol=0.02)


@slow
def test_real_size_smolvlm_256m_loads_and_analyzes_a_1024x768_photo():
    from hi_core.method.analysis import analyze_image
    from hi_core.model.loading import LoadConfig, load_model

    folder = build_real_model("smolvlm-256m")
    loaded = load_model(LoadConfig(model=str(folder), device="cpu"))
    assert loaded.family == "idefics3"
    assert sum(p.numel() for p in loaded.model.parameters()) == 256_484_928
    mask = np.zeros((768, 1024), dtype=bool)
    mask[200:500, 300:700] = True
    analysis = analyze_image(loaded, photo(), mask, "A red box.")
    assert analysis.hi.shape == (30, 9)  # 30 layers x 9 heads
    # 1024 x 768 -> resized to 2048 x 1536 -> 4 x 3 tiles of 8 x 8 tokens, stitched: 24 x 32 cells
    assert analysis.grid == (24, 32) and analysis.view == "12 tiles + global view"
    assert [(view.name, view.grid, view.tokens) for view in analysis.views] == [("tiles", (24, 32), 768), ("global view", (8, 8), 64)]
    assert np.isfinite(analysis.hi).all()
