"""Scoring one image: the steps every image goes through, alone or in a dataset, in this order.

1. `prepare_image`: the sequence (`inputs.build_inputs`: prefix + response), the response tokens a
   key phrase selects (`inputs.key_phrase_tokens`), the key-object mask on the grid
   (`masks.mask_grid`);
2. head maps: `maps.batch_head_maps` over one or many prepared images (`maps.head_maps` for one);
3. `PreparedImage.score`: HI, mass and chance of every head (`scoring.score_maps`).
`AnalysisConfig` says what to score and how. `analysis.analyze_image` runs these steps for one
image (after generating its description, when asked); `dataset_scoring.score_batch` for a batch of
records, each with the options `DatasetConfig.record_analysis` gives it. So a record's HI is the
same in a dataset run and alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from ..base.errors import check_choice, check_whole
from ..model.inputs import DEFAULT_PROMPT, ModelInputs, Queries, build_inputs, key_phrase_tokens
from ..model.loading import LoadedModel
from .masks import MaskGrid, mask_grid
from .scoring import ScoringConfig, score_maps

View = Literal["combined", "global", "tiles"]  # families.VIEWS


@dataclass(frozen=True)
class AnalysisConfig:
    """What to score and how (DESIGN 1). The CLI and the app build this same object."""

    prompt: str = DEFAULT_PROMPT
    key_phrase: str | None = None
    queries: Queries = "producing"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    max_new_tokens: int = 64  # for generated descriptions
    view: View = "combined"  # of an image written in several views (tiles + a global view): what is scored

    def __post_init__(self) -> None:
        check_choice("queries", self.queries, Queries)
        check_choice("view", self.view, View)
        check_whole("max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the forward pass: its sequence, the selected response tokens (indices
    into the response), and the key object on its grid."""

    inputs: ModelInputs
    tokens: np.ndarray
    grid: MaskGrid

    @property
    def valid(self) -> np.ndarray:
        """(gh, gw) bool: the grid cells that are image (not processor padding)."""
        return self.inputs.layout.valid

    def score(self, maps: np.ndarray, scoring: ScoringConfig) -> tuple[np.ndarray, np.ndarray, float]:
        """(hi, mass, chance) of this image's maps (layers, heads, gh, gw)."""
        return score_maps(maps, self.grid.object_patches, self.valid, scoring)


def prepare_image(
    loaded: LoadedModel, image: Image.Image, mask: np.ndarray, text: str, config: AnalysisConfig
) -> PreparedImage:
    """Steps 1 of DESIGN 1 for one image: sequence, selected response tokens, mask on the grid.
    `mask` is (H, W) of `image`, already checked (`masks.check_mask`, or a dataset record's own check)."""
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, config.prompt, text, config.view)
    return PreparedImage(
        inputs=inputs, tokens=key_phrase_tokens(inputs, config.key_phrase), grid=mask_grid(loaded, inputs, mask)
    )
