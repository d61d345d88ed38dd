"""HI Explorer: which attention heads of a multimodal LM look at the object a description names.

The public API, re-exported: load a model, analyze an image or a dataset, score maps.
"""

from .analysis import AnalysisConfig, ImageAnalysis, analyze_image, generate_description, head_maps
from .batching import batch_head_maps, collate
from .capture import AttentionCache, capture_attention
from .dataset_scoring import DatasetAnalysis, DatasetConfig, ImageScore, score_dataset
from .datasets import Record, read_dataset
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
    "DatasetAnalysis",
    "DatasetConfig",
    "ImageScore",
    "Record",
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
    "batch_head_maps",
    "binarize",
    "build_inputs",
    "capture_attention",
    "chance_iou",
    "collate",
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
    "read_dataset",
    "score_dataset",
    "supported_families",
]
