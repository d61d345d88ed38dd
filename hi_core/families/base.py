"""The family adapter interface: everything that differs between model families, in one place.

An adapter answers four questions about a loaded model, and nothing else in `hi_core` asks
"is this Qwen?":
- how the prefix (prompt + image + generation prompt) is built (`prefix_inputs`);
- which sequence positions hold the scored view's image tokens, and the (row, col) grid they form
  (`image_layout`);
- where a key-object mask lands on that grid after the processor's resize / crop / pad / tiling
  (`mask_fractions`: the mask is sent through the processor's own image pipeline, so the
  geometry is the processor's, not a copy of it);
- which modules are the language model's decoder layers (`decoder_layers`) and which of them have
  softmax attention (`attention_modules`, `scored_layers`), shared by attention capture and LoRA
  targeting, so "layer 7" means one module everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..base.errors import InputError

VIEWS = ("combined", "global", "tiles")  # what is scored of an image its model writes in several views (DESIGN 1.2)


@dataclass(frozen=True)
class View:
    """One view of the image as the sequence writes it: `keys[start:stop]` of the layout (its image tokens, in
    sequence order) on a `grid` (rows, cols) of the image, or None for tokens that cover no area of it."""

    name: str
    start: int
    stop: int
    grid: tuple[int, int] | None

    @property
    def tokens(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ImageLayout:
    """The image tokens of one sequence and how a head's attention to them lands on the image.

    keys: (K,) int64, the sequence positions of every image token, view by view (`views`), in order.
    placement: (key index, cell index, weight) arrays, one entry per (token, cell) it covers: the share of the
        token's area in that cell of the (gh, gw) grid HI is computed on, row-major. A token that is one cell
        has one entry of weight 1, a token covering several cells is spread evenly over them (mass
        conserved), a token of a view not scored has none.
    valid: (gh, gw) bool, False where the cell only holds padding added by the processor.
    view: what is scored, in words ("image", "global view", "12 tiles + global view").
    views: every view of the image, covering all K keys.
    """

    keys: np.ndarray
    placement: tuple[np.ndarray, np.ndarray, np.ndarray]
    valid: np.ndarray
    view: str = "image"
    views: tuple[View, ...] = ()

    def __post_init__(self) -> None:
        if not self.views:
            object.__setattr__(self, "views", (View("image", 0, int(self.keys.size), self.grid),))
        key, cell, weight = self.placement
        if not key.shape == cell.shape == weight.shape or (
            key.size and (key.max() >= self.keys.size or cell.max() >= self.valid.size)
        ):
            raise ValueError(
                f"a placement of {key.size} entries does not fit {self.keys.size} keys on a {self.grid} grid"
            )
        if sum(view.tokens for view in self.views) != self.keys.size:
            raise ValueError(f"views of {[view.tokens for view in self.views]} tokens for {self.keys.size} keys")

    @classmethod
    def cells(cls, positions: np.ndarray, valid: np.ndarray, view: str = "image") -> ImageLayout:
        """One token per grid cell: `positions` (gh, gw) the sequence position of the token at each cell."""
        index = np.arange(positions.size)
        return cls(
            keys=positions.reshape(-1),
            placement=(index, index, np.ones(index.size, np.float32)),
            valid=valid,
            view=view,
        )

    @classmethod
    def one_view(cls, keys: np.ndarray, views: tuple[View, ...], scored: str, valid: np.ndarray) -> ImageLayout:
        """Every image token (`keys`, view by view), the view named `scored` alone on the grid, one token per
        cell (its `grid`, row-major); the other views' tokens counted (their shares) but not placed."""
        view = next(view for view in views if view.name == scored)
        placement = (np.arange(view.start, view.stop), np.arange(view.tokens), np.ones(view.tokens, np.float32))
        return cls(keys=keys, placement=placement, valid=valid, view=scored, views=views)

    @property
    def grid(self) -> tuple[int, int]:
        rows, columns = self.valid.shape
        return int(rows), int(columns)

    @property
    def positions(self) -> np.ndarray:
        """(gh, gw): the position of each cell's token, for a layout of one token per cell (tests, oracles)."""
        key, cell, weight = self.placement
        if key.size != self.valid.size or np.unique(cell).size != cell.size or not np.allclose(weight, 1.0):
            raise ValueError("the layout spreads tokens over several cells: it has no one position per cell")
        positions = np.empty(self.valid.size, dtype=self.keys.dtype)
        positions[cell] = self.keys[key]
        return positions.reshape(self.grid)

    def place(self, attention: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., K) attention to the keys -> (..., gh, gw) float32 on the grid."""
        values = torch.as_tensor(attention, dtype=torch.float32)
        key, cell, weight = (torch.from_numpy(np.asarray(part)) for part in self.placement)
        placed = torch.zeros(*values.shape[:-1], self.valid.size, dtype=torch.float32)
        placed.index_add_(-1, cell.long(), values[..., key.long()] * weight.float())
        return placed.reshape(*values.shape[:-1], *self.grid).numpy()


def stitched_layout(
    keys: np.ndarray,
    rows: int,
    cols: int,
    side: int,
    with_global: bool,
    global_name: str,
    valid: np.ndarray | None = None,
) -> ImageLayout:
    """Tiles of side x side tokens (rows x cols of them, row by row, each row-major) followed by one global view
    of side x side tokens of the whole image: the tiles stitched are the grid, one token per cell; with
    `with_global`, each global token is spread evenly over the rows x cols cells under it (the global view is
    the same whole image squashed to a square, so each of its cells covers exactly that many)."""
    tiles = rows * cols * side * side
    fine = (rows * side, cols * side)
    cells = np.arange(fine[0] * fine[1]).reshape(fine)
    # tile (r, c): its token (a, b) is fine cell (r * side + a, c * side + b)
    key_index, cell_index = (
        [np.arange(tiles)],
        [cells.reshape(rows, side, cols, side).transpose(0, 2, 1, 3).reshape(-1)],
    )
    weights = [np.ones(tiles, np.float32)]
    if with_global:  # global token (a, b): the rows x cols fine cells under it
        covered = cells.reshape(side, rows, side, cols).transpose(0, 2, 1, 3).reshape(side * side, rows * cols)
        key_index.append(np.repeat(tiles + np.arange(side * side), rows * cols))
        cell_index.append(covered.reshape(-1))
        weights.append(np.full(covered.size, 1.0 / (rows * cols), np.float32))
    views = (View("tiles", 0, tiles, fine), View(global_name, tiles, int(keys.size), (side, side)))
    return ImageLayout(
        keys=keys,
        placement=(np.concatenate(key_index), np.concatenate(cell_index), np.concatenate(weights)),
        valid=np.ones(fine, dtype=bool) if valid is None else valid,
        view=f"{rows * cols} tiles" + (f" + {global_name}" if with_global else ""),
        views=views,
    )


def block_mean(view: np.ndarray, cell_h: int, cell_w: int) -> np.ndarray:
    """Area-average a (H, W) array onto (H // cell_h, W // cell_w) cells (H, W multiples of them)."""
    height, width = view.shape
    if height % cell_h or width % cell_w:
        raise InputError(
            f"the processor's view of {height}x{width} px is not a multiple of the model's "
            f"{cell_h}x{cell_w}-px grid cell"
        )
    return view.reshape(height // cell_h, cell_h, width // cell_w, cell_w).mean(axis=(1, 3))


def mask_as_image(mask: np.ndarray) -> Image.Image:
    """A (H, W) mask as an RGB image for the image processor: object white, rest black.

    A boolean mask is 0 / 255; a float one is coverage in [0, 1] and becomes grey levels.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        levels = mask.astype(np.uint8) * np.uint8(255)
    else:
        levels = np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(levels[..., None], 3, axis=-1))


def size_value(size: Any, key: str) -> int | None:
    """One entry of an image processor's size setting (a dict or a `SizeDict`), None if unset."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processed_mask(processor: Any, mask: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Send a mask through the processor's image pipeline, unnormalized: pixel values in [0, 1].

    The result has the layout of the processor's `pixel_values` for that image, so it went
    through exactly the image's geometric transform (resize, crop, pad, tiling).
    """
    out = processor.image_processor(
        images=[mask_as_image(mask)], do_normalize=False, do_rescale=True, return_tensors="pt", **kwargs
    )
    return out["pixel_values"].float().clamp(0.0, 1.0).numpy()


def token_positions(input_ids: torch.Tensor, token_id: int) -> np.ndarray:
    """Positions of `token_id` in a (1, T) or (T,) id tensor, in sequence order."""
    return torch.nonzero(input_ids.reshape(-1) == token_id).reshape(-1).cpu().numpy()


def chat_prompt(processor: Any, prompt: str, apply_template: Callable[..., str] | None = None) -> str:
    """The text of one user turn, an image then `prompt`, in the processor's chat template, ending with the
    generation prompt (what every family's prefix starts from). `apply_template(processor, messages, ...)`:
    another implementation of `apply_chat_template` to use (default: the processor's own)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if apply_template is None:
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return apply_template(processor, messages, add_generation_prompt=True, tokenize=False)


class FamilyAdapter:
    """Base adapter; subclasses set `name`, `model_types` and implement the grid and the mask."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: What to append to per-token tensors other than input_ids for each response token.
    response_token_values: ClassVar[dict[str, int]] = {
        "attention_mask": 1,
        "token_type_ids": 0,
        "mm_token_type_ids": 0,
    }

    def prefix_inputs(self, processor: Any, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        """Processor outputs for the prompt with the image and the generation prompt (batch of 1)."""
        return dict(processor(text=chat_prompt(processor, prompt), images=[image], return_tensors="pt"))

    def check_loaded(self, model: Any, processor: Any) -> None:
        """Raise `InputError` naming what was expected and what was found when this model or processor is
        not one the adapter can score (an unset token id, an attention feature the capture cannot
        reproduce). `load_model` calls it once, so such a model is refused at load time, never in the
        middle of an analysis. The default checks nothing."""

    def limit_view(self, processor: Any, max_pixels: int) -> str | None:
        """Set the processor to make at most about `max_pixels` of image pixels per image (a view budget: fewer
        image tokens, a faster vision tower); what was set, in words, or None for a family whose view is one
        fixed size (nothing to limit). The default: nothing to limit."""
        return None

    def image_layout(self, model: Any, inputs: dict[str, torch.Tensor]) -> ImageLayout:
        raise NotImplementedError

    def view_layout(
        self,
        model: Any,
        processor: Any,
        inputs: dict[str, torch.Tensor],
        view: str = "combined",
        image_size: tuple[int, int] | None = None,
    ) -> ImageLayout:
        """The layout for `view` (one of `VIEWS`) of an image of `image_size` (width, height): families that write
        one view of the image have one layout whatever is asked (`image_layout`)."""
        return self.image_layout(model, inputs)

    def view_mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor], layout: ImageLayout
    ) -> np.ndarray:
        """(gh, gw) on `layout`'s grid: `mask_fractions` for families with one grid."""
        return self.mask_fractions(model, processor, mask, inputs)

    def mask_fractions(
        self, model: Any, processor: Any, mask: np.ndarray, inputs: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """(gh, gw) float in [0, 1]: the fraction of each grid cell covered by the mask."""
        raise NotImplementedError

    def decoder_layers(self, model: Any) -> torch.nn.ModuleList:
        """The language model's decoder layers, in order (layer l = element l)."""
        return model.get_decoder().layers

    def decoder_layers_path(self, model: Any) -> str:
        """The dotted module name of `decoder_layers(model)` inside `model` (for peft targeting)."""
        layers = self.decoder_layers(model)
        for name, module in model.named_modules():
            if module is layers:
                return name
        raise RuntimeError("decoder layers not found among the model's modules")

    def attention_modules(self, model: Any) -> list[torch.nn.Module | None]:
        """The softmax self-attention module of each decoder layer, in layer order; None for a layer
        without one (a linear-attention or convolution layer of a hybrid language model), which is
        then not scored but keeps its index, so layer l is the model's own layer l everywhere."""
        return [getattr(layer, "self_attn", None) for layer in self.decoder_layers(model)]

    def scored_layers(self, model: Any) -> tuple[int, ...]:
        """The indices of the decoder layers with softmax attention: the only layers captured, scored,
        ranked and adapted by LoRA (every layer for a model with softmax attention throughout)."""
        return tuple(index for index, module in enumerate(self.attention_modules(model)) if module is not None)

    def text_config_key(self, model: Any) -> str:
        """The name of the language model's sub-config (for `set_attn_implementation`)."""
        return "text_config"
