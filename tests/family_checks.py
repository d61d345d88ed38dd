"""Checks every family adapter must pass, called from each family's test module.

They use independent oracles (eager attention; the language model's input embeddings), so a
wrong token position, a transposed grid or a mis-placed mask fails them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from hi_core.maps import run_forward
from hi_core.masks import mask_grid
from hi_core.capture import capture_attention
from hi_core.inputs import build_inputs

from .oracles import eager_rows, embedding_change

PROMPT = "Describe the image."
TEXT = "a red square at the top left and a blue circle"


def two_scenes(size: tuple[int, int], box: tuple[int, int, int, int], seed: int = 0):
    """Two images of `size` (width, height) equal except inside `box` (x0, y0, x1, y1), and its mask."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = (rng.random((height, width, 3)) * 60 + 60).astype(np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    bright, dark = background.copy(), background.copy()
    bright[mask] = 255
    dark[mask] = 0
    return Image.fromarray(bright), Image.fromarray(dark), mask


def check_capture_equals_eager(loaded, folder, image: Image.Image, text: str = TEXT) -> None:
    """Captured rows (both query modes) equal eager `output_attentions=True` rows to 1e-5."""
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, text)
    keys = inputs.layout.positions.reshape(-1)
    for queries in ("producing", "reading"):
        rows = inputs.query_positions(np.arange(inputs.num_response_tokens), queries)
        with capture_attention(loaded.model, loaded.adapter, rows, keys) as cache:
            run_forward(loaded, inputs.tensors)
        captured = cache.stacked()[:, 0].numpy()
        expected = eager_rows(str(folder), inputs, rows, keys)
        assert captured.shape == expected.shape
        np.testing.assert_allclose(captured, expected, atol=1e-5)
        assert captured.std() > 1e-4


def check_region_lands_on_its_cells(loaded, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A changed image region moves the embeddings of exactly the cells its mask lands on.

    Returns the mask's object cells (gh, gw) so the caller can also compare them with the
    geometry it expects.
    """
    bright, dark, mask = two_scenes(size, box)
    inputs_a = build_inputs(loaded.adapter, loaded.model, loaded.processor, bright, PROMPT, TEXT)
    inputs_b = build_inputs(loaded.adapter, loaded.model, loaded.processor, dark, PROMPT, TEXT)
    np.testing.assert_array_equal(inputs_a.tensors["input_ids"], inputs_b.tensors["input_ids"])
    change = embedding_change(loaded, inputs_a, inputs_b)  # (gh, gw)
    grid = mask_grid(loaded, inputs_a, mask)
    valid = inputs_a.layout.valid
    inside = grid.object_patches & valid
    outside = (grid.fractions == 0) & valid
    assert inside.any() and outside.any()
    # The most changed cell is an object cell, and object cells change far more than the rest.
    assert inside.flat[int(np.argmax(np.where(valid, change, -np.inf)))]
    assert change[inside].min() > 2 * change[outside].max()
    return grid.object_patches
