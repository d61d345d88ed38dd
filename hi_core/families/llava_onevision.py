"""LLaVA-OneVision: LLaVA-NeXT's layout (a base view first, then the tiles); the base view is scored.

For one image the processor gives `pixel_values` (1, 1 + tiles, 3, S, S): element 0 is the base
view, the whole image resized to S x S ignoring its aspect ratio; the rest are tiles of the image
resized and padded to the best `image_grid_pinpoints` resolution. The model's
`pack_image_features` puts the base view's (S / patch)^2 features first, row-major with no newline
token, then the unpadded tiles (bilinearly shrunk above `anyres_max_N` tiles' worth) with one
`image_newline` per row, all at `<image>` positions. So the scored grid, its mask geometry and its
positions are LLaVA-NeXT's, and that adapter's code serves both (`LlavaNextAdapter`); only the
vision tower differs (SigLIP, no CLS token: `vision_feature_select_strategy="full"`).

The processor counts the tokens it writes from its own settings (`num_image_tokens`, its strategy,
its image processor's pinpoints), the model splits its features by the config's; where they differ
transformers fails in the middle of the forward pass. `check_loaded` compares them at load time.
The processor owns a video processor that needs torchvision; `hi_core.model.loading` builds it without one.
"""

from __future__ import annotations

from typing import Any

from ..base.errors import InputError
from .base import size_value
from .llava import patch_grid_side
from .llava_next import LlavaNextAdapter


def _pinpoints(value: Any) -> list[list[int]]:
    return [[int(n) for n in point] for point in value or []]


class LlavaOnevisionAdapter(LlavaNextAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)

    def check_loaded(self, model: Any, processor: Any) -> None:
        """The processor writes as many `<image>` tokens as the model has features for one image."""
        config = model.config
        _, side = patch_grid_side(model)
        image_processor = processor.image_processor
        size = getattr(image_processor, "size", None) or {}
        edge = size_value(size, "shortest_edge")  # the processor's fallback when height/width are unset
        view = (size_value(size, "height") or edge, size_value(size, "width") or edge)
        strategy = getattr(processor, "vision_feature_select_strategy", None)
        base_tokens = int(getattr(processor, "num_image_tokens", 0) or 0) - (1 if strategy == "default" else 0)
        vision_size = int(config.vision_config.image_size)
        pairs = {
            "image token id (config `image_token_index`, processor `<image>`)": (
                config.image_token_id,
                getattr(processor, "image_token_id", None),
            ),
            "vision_feature_select_strategy": (config.vision_feature_select_strategy, strategy),
            f"base-view tokens ({side}x{side} of the vision tower, processor `num_image_tokens`)": (
                side * side,
                base_tokens,
            ),
            "view size in pixels (vision tower, image processor `size`)": (
                (vision_size, vision_size),
                view,
            ),
            "image_grid_pinpoints (config, image processor)": (
                _pinpoints(config.image_grid_pinpoints),
                _pinpoints(getattr(image_processor, "image_grid_pinpoints", None)),
            ),
            "vision_aspect_ratio (config, processor)": (
                config.vision_aspect_ratio,
                getattr(processor, "vision_aspect_ratio", None),
            ),
        }
        for what, (expected, found) in pairs.items():
            if expected != found:
                raise InputError(
                    f"this LLaVA-OneVision model and its processor disagree on the {what}: the model expects "
                    f"{expected!r}, the processor has {found!r}"
                )
        ratio = str(config.vision_aspect_ratio)
        if not ratio.startswith("anyres_max_") or not ratio.removeprefix("anyres_max_").isdigit():
            raise InputError(f"vision_aspect_ratio is {ratio!r}; expected 'anyres_max_N' (at most N tiles' worth)")
