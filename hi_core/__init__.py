"""HI Explorer: which attention heads of a multimodal LM look at the object a description names.

The public API, re-exported: load a model, analyze an image or a dataset, score maps, select
layers by HI and fine-tune LoRA on them, compare strategies.
"""

from .analysis import AnalysisConfig, ImageAnalysis, analyze_image, generate_description, head_maps
from .batching import batch_head_maps, collate
from .capture import AttentionCache, capture_attention
from .coco import convert_coco
from .compare import CompareConfig, Comparison, run_compare
from .dataset_scoring import DatasetAnalysis, DatasetConfig, ImageScore, score_dataset
from .datasets import Record, read_dataset
from .errors import InputError
from .families import adapter_for, supported_families
from .finetune import DataConfig, FinetuneConfig, TrainCallbacks, TrainingCancelled, lora_config
from .inputs import ModelInputs, build_inputs, key_phrase_tokens
from .layer_selection import Ranking, read_ranking, select_layers
from .loading import LoadConfig, LoadedModel, load_model
from .masks import MaskGrid, check_mask, load_image, load_mask, object_patches
from .runs import RunRecord, dataset_ranking, run_finetune, run_pretrained
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
    "CompareConfig",
    "Comparison",
    "DataConfig",
    "DatasetAnalysis",
    "DatasetConfig",
    "FinetuneConfig",
    "ImageAnalysis",
    "ImageScore",
    "InputError",
    "LoadConfig",
    "LoadedModel",
    "MaskGrid",
    "ModelInputs",
    "Ranking",
    "Record",
    "RunRecord",
    "ScoringConfig",
    "TrainCallbacks",
    "TrainingCancelled",
    "adapter_for",
    "analyze_image",
    "attention_mass",
    "batch_head_maps",
    "binarize",
    "build_inputs",
    "capture_attention",
    "chance_iou",
    "check_mask",
    "collate",
    "convert_coco",
    "dataset_ranking",
    "generate_description",
    "head_impact",
    "head_maps",
    "key_phrase_tokens",
    "layer_scores",
    "load_image",
    "load_mask",
    "load_model",
    "lora_config",
    "object_patches",
    "rank_heads",
    "rank_layers",
    "read_dataset",
    "read_ranking",
    "run_compare",
    "run_finetune",
    "run_pretrained",
    "score_dataset",
    "select_layers",
    "supported_families",
]
