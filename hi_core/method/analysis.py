"""One image end to end: the library's main entry point (the CLI's `score` and the app call it).

`analyze_image` checks the mask against the image (both stay as given: the processor gets the model's own pixels,
and the mask goes through the same processor geometry), generates the description when none is given
(`captioning.generate_description`), then runs the per-image steps of `image_scoring` (the same steps a dataset run
takes, in the same order): `prepare_image` -> `maps.head_maps` -> `PreparedImage.score` -> `scoring.layer_scores`.
The result, `ImageAnalysis`, holds every head's map and score, and writes the `score` JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..base.errors import InputError
from ..base.outputs import csv_number, json_number, write_json, write_npz
from ..families import View
from ..model.captioning import generate_description
from ..model.loading import LoadedModel
from .image_scoring import AnalysisConfig, prepare_image
from .maps import head_maps_and_views, shares, token_maps
from .masks import MaskGrid, check_mask
from .scoring import ScoringConfig, every_head, layer_scores, rank_heads, ranking_json, score_maps, scored_layers

logger = logging.getLogger(__name__)

__all__ = ["AnalysisConfig", "ImageAnalysis", "analyze_image", "hi_difference"]  # AnalysisConfig lives in image_scoring


@dataclass(frozen=True)
class ImageAnalysis:
    """Every head's map and score on one image.

    maps: (layers, heads, gh, gw) float32, mean attention of the selected query rows to each cell.
    valid: (gh, gw) bool, cells that are image (not processor padding); scores use only these.
    hi, mass: (layers, heads). layer_scores: (layers,). Layers without softmax attention (a hybrid
    language model's linear-attention layers) keep their index and are NaN in maps, hi, mass and
    layer_scores: not scored (`scored_layers` lists the others).
    With `analyze_image(..., per_token=True)`, the per-token view: `tokens` (the response's tokens
    as text), `key_tokens` (the ones scored: the key phrase's, or all), `token_maps` (layers, heads,
    tokens, gh, gw), each token's own query row; `for_tokens` scores any set of them.
    views: every view of the image the sequence holds (`families.View`: name, grid, tokens; together every
    image token); view_shares (layers, heads, views): each view's share of each head's image attention
    (NaN in unscored layers); token_view_sums (layers, heads, tokens, views) with the per-token view.
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
    tokens: tuple[str, ...] = ()
    key_tokens: tuple[int, ...] = ()
    token_maps: np.ndarray | None = None
    views: tuple[View, ...] = ()
    view_shares: np.ndarray | None = None
    token_view_sums: np.ndarray | None = None
    view_budget: str | None = (
        None  # the processor's view budget the model was loaded with (`LoadConfig.max_view_pixels`)
    )

    @property
    def grid(self) -> tuple[int, int]:
        return self.valid.shape

    def ranked_heads(self) -> list[tuple[int, int]]:
        """The scored heads, by HI descending."""
        return rank_heads(self.hi)

    @property
    def scored_layers(self) -> list[int]:
        """The layers scored: those with softmax attention (every layer, except in hybrid models)."""
        return scored_layers(self.hi)

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
            "views": [
                {
                    "name": view.name,
                    "grid": None if view.grid is None else list(view.grid),
                    "tokens": view.tokens,
                    "share": [
                        [json_number(self.view_shares[layer, head, index]) for head in range(num_heads)]
                        for layer in range(num_layers)
                    ]
                    if self.view_shares is not None
                    else None,
                }
                for index, view in enumerate(self.views)
            ],
            "view_budget": self.view_budget,
            **ranking_json(self.hi, self.layer_scores, mass=self.mass),
        }

    def rescored(self, scoring: ScoringConfig) -> ImageAnalysis:
        """The same maps scored with other binarization / layer-score options (no forward pass)."""
        hi, mass, chance = score_maps(self.maps, self.mask.object_patches, self.valid, scoring)
        return replace(self, hi=hi, mass=mass, chance=chance, layer_scores=layer_scores(hi, scoring))

    def for_tokens(self, indices: Sequence[int], scoring: ScoringConfig) -> ImageAnalysis:
        """This image analyzed on just these response tokens' rows (indices into `tokens`): their
        mean map, scored with `scoring`. Needs the per-token maps (`analyze_image(per_token=True)`)."""
        if self.token_maps is None:
            raise InputError("this analysis kept no per-token maps: analyze with per_token=True")
        chosen = np.unique(np.asarray(list(indices), dtype=np.int64))
        if chosen.size == 0:
            raise InputError("choose at least one token of the description")
        if chosen[0] < 0 or chosen[-1] >= len(self.tokens):
            raise InputError(
                f"token {int(chosen[-1] if chosen[-1] >= len(self.tokens) else chosen[0])} is not one of "
                f"the description's {len(self.tokens)} tokens (0-{len(self.tokens) - 1})"
            )
        maps = self.token_maps[:, :, chosen].mean(axis=2)  # (layers, heads, gh, gw)
        view_shares = None if self.token_view_sums is None else shares(self.token_view_sums[:, :, chosen].sum(axis=2))
        return replace(self, maps=maps, response_tokens=int(chosen.size), view_shares=view_shares).rescored(scoring)

    def to_csv(self) -> str:
        """One row per head, by HI descending: layer, head, hi, mass (heads not scored last, hi and mass empty)."""
        rows = ["layer,head,hi,mass"]
        rows += [
            f"{layer},{head},{csv_number(self.hi[layer, head])},{csv_number(self.mass[layer, head])}"
            for layer, head in every_head(self.hi)
        ]
        return "\n".join(rows) + "\n"

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def save_maps(self, path: str | Path) -> None:
        """An .npz with `maps` (layers, heads, gh, gw) float32 and `mask_grid` (gh, gw) bool."""
        write_npz(path, maps=self.maps.astype(np.float32), mask_grid=self.mask.object_patches)


def analyze_image(
    loaded: LoadedModel,
    image: Image.Image,
    mask: np.ndarray,
    text: str | None,
    config: AnalysisConfig = AnalysisConfig(),
    per_token: bool = False,
) -> ImageAnalysis:
    """HI of every language-model head on one image. `text=None` scores the model's own description.
    `per_token`: also keep every response token's maps (the per-token view; the same forward pass)."""
    mask = check_mask(mask, image)
    if text is None:
        text = generate_description(loaded, image, config.prompt, config.max_new_tokens)
        logger.info("generated description: %s", text)
    prepared = prepare_image(loaded, image, mask, text, config)
    every_token = sums = None
    if per_token:
        every_token, sums = token_maps(
            loaded, prepared.inputs, config.queries
        )  # (layers, heads, tokens, gh, gw | views)
        maps = every_token[:, :, prepared.tokens].mean(axis=2)
        view_shares = shares(sums[:, :, prepared.tokens].sum(axis=2))
    else:
        maps, view_shares = head_maps_and_views(loaded, prepared.inputs, prepared.tokens, config.queries)
    hi, mass, chance = prepared.score(maps, config.scoring)
    return ImageAnalysis(
        model=loaded.name,
        family=loaded.family,
        text=text,
        queries=config.queries,
        view=prepared.inputs.layout.view,
        maps=maps,
        mask=prepared.grid,
        valid=prepared.valid,
        hi=hi,
        mass=mass,
        chance=chance,
        layer_scores=layer_scores(hi, config.scoring),
        response_tokens=int(prepared.tokens.size),
        tokens=tuple(text[start:end] for start, end in prepared.inputs.response_offsets) if per_token else (),
        key_tokens=tuple(int(i) for i in prepared.tokens) if per_token else (),
        token_maps=every_token,
        views=prepared.inputs.layout.views,
        view_shares=view_shares,
        token_view_sums=sums,
        view_budget=loaded.view_budget,
    )


def hi_difference(base: ImageAnalysis, tuned: ImageAnalysis) -> np.ndarray:
    """(layers, heads): `tuned.hi - base.hi`, the before/after view of one image, mask and text scored
    by a model and its tuned copy (the same architecture, so the same heads and grid)."""
    if base.hi.shape != tuned.hi.shape or base.grid != tuned.grid:
        raise InputError(
            f"the two analyses are of different models: {base.hi.shape[0]}x{base.hi.shape[1]} heads on a "
            f"{base.grid[0]}x{base.grid[1]} grid vs {tuned.hi.shape[0]}x{tuned.hi.shape[1]} on "
            f"{tuned.grid[0]}x{tuned.grid[1]}"
        )
    if base.text != tuned.text or not np.array_equal(base.mask.object_patches, tuned.mask.object_patches):
        raise InputError("the two analyses score different texts or masks: compare the same image, mask and text")
    return tuned.hi - base.hi
