"""HI Explorer: which attention heads of a multimodal LM look at the object a description names.

The public API, re-exported: load a model, analyze an image or a dataset, score maps, select
layers by HI and fine-tune LoRA on them, compare strategies, ablate heads.
"""

from .ablation import Ablation, AblationConfig, HeadMeans, ablate_heads, head_output_means, run_ablation
from .ablation_report import write_ablation_report
from .analysis import ImageAnalysis, analyze_image, hi_difference
from .batching import collate
from .capture import AttentionCache, capture_attention, install_capture
from .captioning import generate_description
from .coco import convert_coco
from .compare import CompareConfig, Comparison, run_compare
from .dataset_scoring import DatasetAnalysis, DatasetConfig, ImageScore, score_dataset
from .datasets import Record, load_record, read_dataset, scan_dataset
from .errors import InputError
from .families import adapter_for, supported_families
from .finetune import DataConfig, FinetuneConfig, TrainCallbacks, TrainingCancelled, TrainingDiverged, lora_config
from .image_scoring import AnalysisConfig, PreparedImage, prepare_image
from .images import MAX_IMAGE_PIXELS, image_to_rgb, mask_from_image
from .inputs import DEFAULT_PROMPT, ModelInputs, build_inputs, key_phrase_tokens
from .layer_selection import Ranking, check_layer_choice, read_ranking, select_layers
from .loading import LoadConfig, LoadedModel, load_model
from .maps import batch_head_maps, head_maps, run_forward
from .masks import MaskGrid, check_mask, load_image, load_mask, mask_grid, object_patches
from .runs import BeforeAfter, RunRecord, dataset_ranking, reuse_ranking, run_before_after, run_finetune, run_pretrained
from .scoring import (
    ScoringConfig,
    attention_mass,
    binarize,
    chance_iou,
    head_impact,
    layer_scores,
    rank_heads,
    rank_layers,
    score_maps,
)

__all__ = [
    "ablate_heads",
    "Ablation",
    "AblationConfig",
    "adapter_for",
    "AnalysisConfig",
    "analyze_image",
    "attention_mass",
    "AttentionCache",
    "batch_head_maps",
    "BeforeAfter",
    "binarize",
    "build_inputs",
    "capture_attention",
    "chance_iou",
    "check_layer_choice",
    "check_mask",
    "collate",
    "CompareConfig",
    "Comparison",
    "convert_coco",
    "DataConfig",
    "dataset_ranking",
    "DatasetAnalysis",
    "DatasetConfig",
    "DEFAULT_PROMPT",
    "FinetuneConfig",
    "generate_description",
    "head_impact",
    "head_output_means",
    "HeadMeans",
    "hi_difference",
    "head_maps",
    "image_to_rgb",
    "ImageAnalysis",
    "ImageScore",
    "InputError",
    "install_capture",
    "key_phrase_tokens",
    "layer_scores",
    "load_image",
    "load_mask",
    "load_model",
    "load_record",
    "LoadConfig",
    "LoadedModel",
    "lora_config",
    "mask_from_image",
    "mask_grid",
    "MaskGrid",
    "MAX_IMAGE_PIXELS",
    "ModelInputs",
    "object_patches",
    "prepare_image",
    "PreparedImage",
    "rank_heads",
    "rank_layers",
    "Ranking",
    "read_dataset",
    "read_ranking",
    "Record",
    "reuse_ranking",
    "run_ablation",
    "run_before_after",
    "run_compare",
    "run_finetune",
    "run_forward",
    "run_pretrained",
    "RunRecord",
    "scan_dataset",
    "score_dataset",
    "score_maps",
    "ScoringConfig",
    "select_layers",
    "supported_families",
    "TrainCallbacks",
    "TrainingCancelled",
    "TrainingDiverged",
    "write_ablation_report",
]
