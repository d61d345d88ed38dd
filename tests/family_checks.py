"""Checks every family adapter must pass, called from each family's test module.

They use independent oracles (eager attention; the language model's input embeddings), so a
wrong token position, a transposed grid or a mis-placed mask fails them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.model.capture import capture_attention
from hi_core.cli.main import main
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import FinetuneConfig
from hi_core.tuning.training import lora_attached, lora_config, trainable_parameters
from hi_core.model.inputs import build_inputs, key_phrase_tokens
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.maps import batch_head_maps, head_maps, run_forward
from hi_core.method.masks import mask_grid

from .oracles import eager_rows, embedding_change, language_model_input

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


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    """Uniform noise of `size` (width, height), from its own seed."""
    width, height = size
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Uniform noise images of the given sizes (width, height), drawn in turn from one generator."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in sizes]


def write_scene(folder: Path, size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[Path, Path]:
    """`two_scenes`' bright image and its mask, saved as image.png and mask.png in `folder`."""
    image, _, mask = two_scenes(size, box)
    image.save(folder / "image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder / "image.png", folder / "mask.png"


def check_capture_equals_eager(loaded, folder, image: Image.Image, text: str = TEXT) -> None:
    """Captured rows (both query modes) equal eager `output_attentions=True` rows to 1e-5, layer by layer.

    Eager returns one tensor per softmax-attention layer (all layers but in a model that mixes in
    linear attention): those are the layers the adapter scores, in order; the others are NaN."""
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, text)
    keys = inputs.layout.keys
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    scored = list(loaded.adapter.scored_layers(loaded.model))
    unscored = [layer for layer in range(layers) if layer not in scored]
    for queries in ("producing", "reading"):
        rows = inputs.query_positions(np.arange(inputs.num_response_tokens), queries)
        with capture_attention(loaded.model, loaded.adapter, rows, keys) as cache:
            run_forward(loaded, inputs.tensors)
        assert sorted(cache.rows) == scored
        captured = cache.stacked()[:, 0].numpy()  # (layers, heads, rows, keys)
        expected = eager_rows(str(folder), inputs, rows, keys)  # (softmax layers, heads, rows, keys)
        assert captured.shape == (layers, *expected.shape[1:]) and expected.shape[0] == len(scored)
        assert captured.shape[2:] == (rows.size, keys.size)
        assert np.isnan(captured[unscored]).all()
        np.testing.assert_allclose(captured[scored], expected, atol=1e-5)
        for layer in scored:
            assert captured[layer].std() > 1e-4, layer


def check_region_lands_on_its_cells(loaded, size: tuple[int, int], box: tuple[int, int, int, int],
                                    view: str = "combined") -> np.ndarray:
    """A changed image region moves the embeddings of exactly the cells its mask lands on (on `view`'s grid, one
    token per cell).

    Returns the mask's object cells (gh, gw) so the caller can also compare them with the
    geometry it expects.
    """
    bright, dark, mask = two_scenes(size, box)
    inputs_a = build_inputs(loaded.adapter, loaded.model, loaded.processor, bright, PROMPT, TEXT, view)
    inputs_b = build_inputs(loaded.adapter, loaded.model, loaded.processor, dark, PROMPT, TEXT, view)
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


# A batch of three noise images (mixed sizes) with responses of mixed lengths, one scored on a key phrase:
# (images, texts, phrases) for `check_batched_equals_one_by_one`.
BATCH_IMAGES = (
    random_images([(130, 90), (70, 110), (64, 64)]),
    ["a red square", TEXT, "a blue circle at the center"],
    [None, "blue circle", None],
)


def check_batched_equals_one_by_one(loaded, images, texts, phrases, queries: str, *,
                                    layers_heads: tuple[int, int] | None = None, scored: tuple[int, ...] | None = None) -> list:
    """One batched forward over `images` with `texts` (so padding of tokens, and of pixels where the
    sizes differ) gives each image the maps it has alone: same shape (layers, heads, *its grid), equal
    to 1e-5, NaN exactly on the layers the adapter does not score, varied on the others.

    `layers_heads` and `scored`, where given, are the counts and the scored layers the caller expects.
    Returns the items, so the caller can also check what the batch mixes (grids, tile counts)."""
    items = [build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, text)
             for image, text in zip(images, texts, strict=True)]
    assert len({item.tensors["input_ids"].shape[1] for item in items}) > 1  # padding is exercised
    tokens = [key_phrase_tokens(item, phrase) for item, phrase in zip(items, phrases, strict=True)]
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    heads = loaded.model.config.get_text_config().num_attention_heads
    if layers_heads is not None:
        assert (layers, heads) == layers_heads
    if scored is not None:
        assert loaded.adapter.scored_layers(loaded.model) == tuple(scored)
    scored = list(loaded.adapter.scored_layers(loaded.model))
    unscored = [layer for layer in range(layers) if layer not in scored]
    batched = batch_head_maps(loaded, items, tokens, queries)
    assert len(batched) == len(items)
    for item, selected, maps in zip(items, tokens, batched):
        alone = head_maps(loaded, item, selected, queries)
        assert maps.shape == alone.shape == (layers, heads, *item.layout.grid)
        np.testing.assert_allclose(maps, alone, atol=1e-5, equal_nan=True)
        assert np.isnan(alone[unscored]).all() and np.isfinite(alone[scored]).all()
        assert alone[scored].std() > 1e-4
    return items


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def check_lora_targets_only_language_model(loaded, layers: tuple[int, ...], path: str = "model.language_model.layers",
                                           rank: int = 4) -> None:
    """LoRA on `layers` wraps exactly the q/k/v/o projections of those layers of the language model,
    found by its module name `path` (never the vision tower's, which has layers of the same index), and
    trains exactly rank * (in + out) parameters per projection; leaving the context removes it."""
    assert loaded.adapter.decoder_layers_path(loaded.model) == path
    decoder = loaded.model.get_submodule(path)
    projections = [getattr(decoder[layer].self_attn, p) for layer in layers for p in PROJECTIONS]
    expected = sum(rank * (p.in_features + p.out_features) for p in projections)
    with lora_attached(loaded, lora_config(loaded, layers, FinetuneConfig(layers=layers, rank=rank))) as peft_model:
        wrapped = [name for name, module in loaded.model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]
        assert sorted(wrapped) == sorted(f"{path}.{layer}.self_attn.{p}" for layer in layers for p in PROJECTIONS)
        assert trainable_parameters(peft_model) == expected
    assert not any(hasattr(module, "lora_A") for module in loaded.model.modules())


def score_argv(folder, image: Path, mask: Path, text: str = TEXT, *extra) -> list[str]:
    return ["score", "--model", str(folder), "--image", str(image), "--mask", str(mask), "--text", text, *extra]


def check_cli_scores_folder(folder, tmp_path: Path, capsys, size, box, family: str, grid, *, text: str = TEXT,
                            to_file: bool = False, num_layers: int | None = None, num_heads: int | None = None,
                            object_patches: int | None = None, extra: tuple[str, ...] = ()) -> dict:
    """`python -m hi_core score --model FOLDER` on a Hub-like folder: exit 0 and the design JSON (on
    stdout, or with `to_file` in `--out`, strict JSON without NaN), the family, the grid, one entry per
    head; and where given, the layer and head counts and the mask's object cells."""
    image, mask = write_scene(tmp_path, size, box)
    out = tmp_path / "score.json"
    code = main(score_argv(folder, image, mask, text, *extra, *(["--out", str(out)] if to_file else [])))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    if to_file:
        assert "NaN" not in out.read_text()  # json.loads would accept NaN; null is what the file must hold
        result = json.loads(out.read_text())
    else:
        result = json.loads(captured.out)
    assert result["family"] == family and result["grid"] == list(grid)
    assert len(result["heads"]) == result["num_layers"] * result["num_heads"]
    if num_layers is not None:
        assert result["num_layers"] == num_layers
    if num_heads is not None:
        assert result["num_heads"] == num_heads
    if object_patches is not None:
        assert result["object_patches"] == object_patches
    return result


def check_refused_at_load(folder, message: str | tuple[str, ...], capsys, tmp_path: Path) -> None:
    """`load_model` raises InputError naming `message` (each of the strings); the CLI on the folder
    exits 2 with that message as the one line on stderr (the CLI turns transformers' "Loading weights"
    progress bar off when stderr is not a terminal, as under capsys), no traceback, nothing on stdout."""
    messages = (message,) if isinstance(message, str) else message
    with pytest.raises(InputError) as error:
        load_model(LoadConfig(model=str(folder), device="cpu"))
    assert all(part in str(error.value) for part in messages), str(error.value)
    image, mask = write_scene(tmp_path, (64, 48), (8, 8, 40, 32))
    capsys.readouterr()  # what load_model above wrote is not the CLI's
    code = main(score_argv(folder, image, mask))
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ") and all(part in captured.err for part in messages), captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@torch.no_grad()
def check_scores_exactly_the_base_view(loaded, size: tuple[int, int], side: int, cls_tokens: int) -> None:
    """LLaVA-NeXT / OneVision: the scored tokens are the base view, first among the image tokens. Oracle:
    the base view's pixels alone (`pixel_values[:, 0]`) through the vision tower (its `cls_tokens`
    dropped) and the projector give exactly the language model's input embeddings there, row-major;
    changing only the tiles moves other image tokens, never the scored ones."""
    model = loaded.model
    image, _, _ = two_scenes(size, (10, 10, 40, 30))
    inputs = build_inputs(loaded.adapter, model, loaded.processor, image, PROMPT, TEXT, "global")
    layout = inputs.layout
    assert layout.view == "base view" and layout.grid == (side, side) and layout.valid.all()
    image_positions = np.flatnonzero(inputs.tensors["input_ids"][0].numpy() == model.config.image_token_id)
    # Base view (side^2) + 2 tiles of side x side unpadded into a (side x 2 side) or (2 side x side) grid,
    # and one newline per row.
    tile_rows = 2 * side if size[1] > size[0] else side
    assert image_positions.size == side * side + side * side * 2 + tile_rows
    assert layout.positions[0, 0] == image_positions[0]  # the base view comes first
    pixel_values = inputs.tensors["pixel_values"]
    assert pixel_values.shape[:2] == (1, 3)  # base view + 2 tiles

    hidden = model.model.vision_tower(pixel_values[:, 0], output_hidden_states=True).hidden_states
    features = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, cls_tokens:])[0]
    embeddings = language_model_input(loaded, inputs.tensors)
    np.testing.assert_allclose(embeddings[layout.positions.reshape(-1)].numpy(), features.numpy(), atol=1e-5)

    tiles_changed = dict(inputs.tensors, pixel_values=pixel_values.clone())
    noise = torch.randn(pixel_values[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    tiles_changed["pixel_values"][:, 1:] = noise
    change = (language_model_input(loaded, tiles_changed) - embeddings).norm(dim=-1).numpy()
    assert change[layout.positions.reshape(-1)].max() == 0
    assert (change[np.setdiff1d(image_positions, layout.positions)] > 0).sum() >= side * side * 2


def check_grid_matches_rope(loaded, size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Qwen-VL families: the model's own M-RoPE index gives each image token its (row, col); ours must
    agree, every other token has equal indices on the three axes, and the forward pass uses exactly
    these positions (response tokens included)."""
    image, _, _ = two_scenes(size, (0, 0, 10, 10))
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, PROMPT, TEXT)
    tensors, positions = inputs.tensors, inputs.layout.positions
    assert positions.shape == grid
    rope, _ = loaded.model.model.get_rope_index(
        tensors["input_ids"],
        mm_token_type_ids=tensors["mm_token_type_ids"],
        image_grid_thw=tensors["image_grid_thw"],
        attention_mask=tensors["attention_mask"],
    )
    temporal, height, width = (rope[axis, 0].numpy() for axis in range(3))
    # Image tokens: (t, h, w) = start + (0, row, col); so h - t is the row and w - t the column.
    rows, cols = np.indices(grid)
    np.testing.assert_array_equal(height[positions] - temporal[positions], rows)
    np.testing.assert_array_equal(width[positions] - temporal[positions], cols)
    text = np.setdiff1d(np.arange(temporal.size), positions.reshape(-1))
    assert (temporal[text] == height[text]).all() and (temporal[text] == width[text]).all()

    used = []
    hook = loaded.model.model.language_model.rotary_emb.register_forward_pre_hook(
        lambda module, args: used.append(args[1].detach().clone())
    )
    try:
        run_forward(loaded, tensors)
    finally:
        hook.remove()
    torch.testing.assert_close(used[0], rope)
