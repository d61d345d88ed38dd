"""HI Explorer: which attention heads of a multimodal LM look at the object a description names.

The public API, re-exported: load a model, analyze an image, score maps.
"""

from .analysis import AnalysisConfig, ImageAnalysis, analyze_image, generate_description, head_maps
from .capture import AttentionCache, capture_attention
from .errors import InputError
from .families import adapter_for, supported_families
from .inputs import ModelInputs, build_inputs, key_phrase_tokens
from .loading import LoadConfig, LoadedModel, load_model
from .masks import MaskGrid, check_mask, load_image, load_mask, object_patches
from .scoring import (
    ScoringConfig,
    attention_mass,
    binarize,
    chance_iou,
    head_impact,
    layer_scores,
    rank_heads,
    rank_layers,
)

__all__ = [
    "AnalysisConfig",
    "AttentionCache",
    "ImageAnalysis",
    "InputError",
    "LoadConfig",
    "LoadedModel",
    "MaskGrid",
    "ModelInputs",
    "ScoringConfig",
    "adapter_for",
    "analyze_image",
    "attention_mass",
    "binarize",
    "build_inputs",
    "capture_attention",
    "chance_iou",
    "check_mask",
    "generate_description",
    "head_impact",
    "head_maps",
    "key_phrase_tokens",
    "layer_scores",
    "load_image",
    "load_mask",
    "load_model",
    "object_patches",
    "rank_heads",
    "rank_layers",
    "supported_families",
]
