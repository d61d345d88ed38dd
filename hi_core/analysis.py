"""One image end to end: inputs -> captured head maps -> mask on the grid -> HI of every head.

`analyze_image` is the library's main entry point (the CLI's `score` and the app call it).
Data flows one way: `build_inputs` (inputs.py) -> `capture_attention` (capture.py) ->
`object_patches` (masks.py) -> `head_impact` & co. (scoring.py) -> `ImageAnalysis`.
Image and mask are first brought together to the size the model uses (`images.reduce_image`,
`images.reduce_mask`), so no step after the check of the mask works at the upload's resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .capture import capture_attention
from .errors import InputError, check_choice
from .images import reduce_mask
from .inputs import ModelInputs, Queries, build_inputs, key_phrase_tokens, model_image
from .loading import LoadedModel
from .masks import MaskGrid, check_mask, object_patches
from .outputs import write_json, write_npz
from .scoring import (
    ScoringConfig,
    attention_mass,
    chance_iou,
    head_impact,
    layer_scores,
    rank_heads,
    rank_layers,
)

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Describe the image."


@dataclass(frozen=True)
class AnalysisConfig:
    """What to score and how (DESIGN 1). The CLI and the app build this same object."""

    prompt: str = DEFAULT_PROMPT
    key_phrase: str | None = None
    queries: Queries = "producing"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    max_new_tokens: int = 64  # for generated descriptions

    def __post_init__(self) -> None:
        check_choice("queries", self.queries, Queries)
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class ImageAnalysis:
    """Every head's map and score on one image.

    maps: (layers, heads, gh, gw) float32, mean attention of the selected query rows to each cell.
    valid: (gh, gw) bool, cells that are image (not processor padding); scores use only these.
    hi, mass: (layers, heads). layer_scores: (layers,).
    """

    model: str
    family: str
    text: str
    queries: str
    view: str
    maps: np.ndarray
    mask: MaskGrid
    valid: np.ndarray
    hi: np.ndarray
    mass: np.ndarray
    chance: float
    layer_scores: np.ndarray
    response_tokens: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.valid.shape  # type: ignore[return-value]

    def ranked_heads(self) -> list[tuple[int, int]]:
        return rank_heads(self.hi)

    def to_json(self) -> dict[str, Any]:
        """The `score` JSON of DESIGN section 6."""
        num_layers, num_heads = self.hi.shape
        return {
            "model": self.model,
            "family": self.family,
            "grid": [int(n) for n in self.grid],
            "num_layers": int(num_layers),
            "num_heads": int(num_heads),
            "object_patches": int(self.mask.object_patches.sum()),
            "chance": float(self.chance),
            "response_tokens": int(self.response_tokens),
            "queries": self.queries,
            "text": self.text,
            "view": self.view,
            "heads": [
                {"layer": layer, "head": head, "hi": float(self.hi[layer, head]), "mass": float(self.mass[layer, head])}
                for layer, head in self.ranked_heads()
            ],
            "layers": [{"layer": layer, "score": float(self.layer_scores[layer])} for layer in rank_layers(self.layer_scores)],
        }

    def rescored(self, scoring: ScoringConfig) -> ImageAnalysis:
        """The same maps scored with other binarization / layer-score options (no forward pass)."""
        hi, mass, chance = score_maps(self.maps, self.mask, self.valid, scoring)
        return replace(self, hi=hi, mass=mass, chance=chance, layer_scores=layer_scores(hi, scoring))

    def to_csv(self) -> str:
        """One row per head, by HI descending: layer, head, hi, mass."""
        rows = ["layer,head,hi,mass"]
        rows += [f"{layer},{head},{self.hi[layer, head]:.6f},{self.mass[layer, head]:.6f}" for layer, head in self.ranked_heads()]
        return "\n".join(rows) + "\n"

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def save_maps(self, path: str | Path) -> None:
        """An .npz with `maps` (layers, heads, gh, gw) float32 and `mask_grid` (gh, gw) bool."""
        write_npz(path, maps=self.maps.astype(np.float32), mask_grid=self.mask.object_patches)


def _to_device(tensors: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    moved = {}
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.to(model.device)
            if value.is_floating_point():
                value = value.to(model.dtype)
        moved[key] = value
    return moved


@torch.inference_mode()
def generate_description(loaded: LoadedModel, image: Image.Image, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 64) -> str:
    """The model's own description of the image (greedy decoding), to be scored afterwards."""
    image = model_image(loaded.adapter, loaded.processor, image)
    prefix = _to_device(loaded.adapter.prefix_inputs(loaded.processor, image, prompt), loaded.model)
    output = loaded.model.generate(**prefix, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, prefix["input_ids"].shape[1] :]
    text = loaded.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    if not text:
        raise InputError("the model generated an empty description; give the text to score instead")
    return text


def run_forward(loaded: LoadedModel, tensors: dict[str, torch.Tensor]) -> None:
    """One teacher-forced forward pass, computing no logits beyond the last position."""
    loaded.model(**_to_device(tensors, loaded.model), use_cache=False, logits_to_keep=1)


@torch.inference_mode()
def head_maps(loaded: LoadedModel, inputs: ModelInputs, token_indices: np.ndarray, queries: Queries) -> np.ndarray:
    """(layers, heads, gh, gw) float32: each head's attention to each grid cell, averaged over rows."""
    layout = inputs.layout
    query_positions = inputs.query_positions(token_indices, queries)
    with capture_attention(loaded.model, loaded.adapter, query_positions, layout.positions.reshape(-1)) as cache:
        run_forward(loaded, inputs.tensors)
    rows = cache.stacked()[:, 0]  # (layers, heads, queries, cells)
    return rows.mean(dim=2).reshape(rows.shape[0], rows.shape[1], *layout.grid).numpy().astype(np.float32)


def mask_grid(loaded: LoadedModel, inputs: ModelInputs, mask: np.ndarray) -> MaskGrid:
    """The mask (H, W), bool or float coverage, on the grid of `inputs` (brought to the model's size first)."""
    mask = reduce_mask(mask, loaded.adapter.view_side(loaded.processor))
    fractions = loaded.adapter.mask_fractions(loaded.model, loaded.processor, mask, inputs.tensors)
    return object_patches(fractions, inputs.layout.valid)


def score_maps(maps: np.ndarray, grid: MaskGrid, valid: np.ndarray, config: ScoringConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(hi, mass, chance) of maps (layers, heads, gh, gw) against the object cells, on valid cells."""
    cells = maps[..., valid]  # (layers, heads, valid cells)
    target = grid.object_patches[valid]
    hi = head_impact(cells, target, config)
    mass = attention_mass(cells, target)
    return hi, mass, chance_iou(int(valid.sum()), int(target.sum()))


def analyze_image(
    loaded: LoadedModel,
    image: Image.Image,
    mask: np.ndarray,
    text: str | None,
    config: AnalysisConfig = AnalysisConfig(),
) -> ImageAnalysis:
    """HI of every language-model head on one image. `text=None` scores the model's own description."""
    mask = check_mask(mask, image)
    view_side = loaded.adapter.view_side(loaded.processor)
    image, mask = model_image(loaded.adapter, loaded.processor, image), reduce_mask(mask, view_side)
    if text is None:
        text = generate_description(loaded, image, config.prompt, config.max_new_tokens)
        logger.info("generated description: %s", text)
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, config.prompt, text)
    tokens = key_phrase_tokens(inputs, config.key_phrase)
    grid = mask_grid(loaded, inputs, mask)
    maps = head_maps(loaded, inputs, tokens, config.queries)
    hi, mass, chance = score_maps(maps, grid, inputs.layout.valid, config.scoring)
    return ImageAnalysis(
        model=loaded.name,
        family=loaded.family,
        text=text,
        queries=config.queries,
        view=inputs.layout.view,
        maps=maps,
        mask=grid,
        valid=inputs.layout.valid,
        hi=hi,
        mass=mass,
        chance=chance,
        layer_scores=layer_scores(hi, config.scoring),
        response_tokens=int(tokens.size),
    )
