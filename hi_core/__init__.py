"""HI Explorer: which attention heads of a multimodal LM look at the object a description names.

The public API, re-exported: load a model, analyze an image or a dataset, score maps, select
layers by HI and fine-tune LoRA on them, compare strategies, ablate heads.

The names are imported on first use (PEP 562), so `import hi_core` and `python -m hi_core --help` do not load torch and
transformers until something needs them (and a Ctrl-C in those first seconds reaches the command line's handler).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the module of hi_core that defines it.
_EXPORTS = {
    **dict.fromkeys(
        (
            "Ablation",
            "AblationConfig",
            "run_ablation",
        ),
        "causal.ablation",
    ),
    **dict.fromkeys(
        (
            "ablate_heads",
            "head_output_means",
            "HeadMeans",
        ),
        "causal.head_ablation",
    ),
    **dict.fromkeys(("write_ablation_report",), "causal.ablation_report"),
    **dict.fromkeys(
        (
            "analyze_image",
            "hi_difference",
            "ImageAnalysis",
        ),
        "method.analysis",
    ),
    **dict.fromkeys(("collate",), "model.batching"),
    **dict.fromkeys(("generate_description",), "model.captioning"),
    **dict.fromkeys(
        (
            "AttentionCache",
            "capture_attention",
            "install_capture",
        ),
        "model.capture",
    ),
    **dict.fromkeys(("convert_coco",), "data.coco"),
    **dict.fromkeys(
        (
            "CompareConfig",
            "Comparison",
            "run_compare",
        ),
        "tuning.compare",
    ),
    **dict.fromkeys(
        (
            "DatasetAnalysis",
            "DatasetConfig",
            "ImageScore",
        ),
        "data.dataset_analysis",
    ),
    **dict.fromkeys(("score_dataset",), "data.dataset_scoring"),
    **dict.fromkeys(
        (
            "load_record",
            "read_dataset",
            "Record",
            "scan_dataset",
        ),
        "data.datasets",
    ),
    **dict.fromkeys(("InputError",), "base.errors"),
    **dict.fromkeys(
        (
            "adapter_for",
            "supported_families",
        ),
        "families",
    ),
    **dict.fromkeys(
        (
            "DataConfig",
            "FinetuneConfig",
        ),
        "tuning.finetune",
    ),
    **dict.fromkeys(
        (
            "lora_config",
            "TrainCallbacks",
            "TrainingCancelled",
            "TrainingDiverged",
        ),
        "tuning.training",
    ),
    **dict.fromkeys(
        (
            "AnalysisConfig",
            "prepare_image",
            "PreparedImage",
        ),
        "method.image_scoring",
    ),
    **dict.fromkeys(
        (
            "image_to_rgb",
            "load_image",
            "load_mask",
            "mask_from_image",
            "MAX_IMAGE_PIXELS",
        ),
        "model.images",
    ),
    **dict.fromkeys(
        (
            "build_inputs",
            "DEFAULT_PROMPT",
            "key_phrase_tokens",
            "ModelInputs",
        ),
        "model.inputs",
    ),
    **dict.fromkeys(
        (
            "check_layer_choice",
            "Ranking",
            "read_ranking",
            "select_layers",
        ),
        "method.layer_selection",
    ),
    **dict.fromkeys(
        (
            "load_model",
            "LoadConfig",
            "LoadedModel",
        ),
        "model.loading",
    ),
    **dict.fromkeys(
        (
            "batch_head_maps",
            "head_maps",
            "run_forward",
        ),
        "method.maps",
    ),
    **dict.fromkeys(
        (
            "check_mask",
            "mask_grid",
            "MaskGrid",
            "object_patches",
        ),
        "method.masks",
    ),
    **dict.fromkeys(
        (
            "dataset_ranking",
            "reuse_ranking",
        ),
        "tuning.rankings",
    ),
    **dict.fromkeys(("RunRecord",), "tuning.run_folders"),
    **dict.fromkeys(
        (
            "BeforeAfter",
            "run_before_after",
            "run_finetune",
            "run_pretrained",
        ),
        "tuning.runs",
    ),
    **dict.fromkeys(
        (
            "attention_mass",
            "binarize",
            "chance_iou",
            "head_impact",
            "layer_scores",
            "rank_heads",
            "rank_layers",
            "score_maps",
            "ScoringConfig",
        ),
        "method.scoring",
    ),
    **dict.fromkeys(
        (
            "validate",
            "Validation",
            "ValidationConfig",
        ),
        "causal.validation",
    ),
    **dict.fromkeys(("write_validation_report",), "causal.validation_report"),
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hi_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what static checkers and editors see
    from .base.errors import InputError  # noqa: F401
    from .causal.ablation import Ablation, AblationConfig, run_ablation  # noqa: F401
    from .causal.ablation_report import write_ablation_report  # noqa: F401
    from .causal.head_ablation import HeadMeans, ablate_heads, head_output_means  # noqa: F401
    from .causal.validation import Validation, ValidationConfig, validate  # noqa: F401
    from .causal.validation_report import write_validation_report  # noqa: F401
    from .data.coco import convert_coco  # noqa: F401
    from .data.dataset_analysis import DatasetAnalysis, DatasetConfig, ImageScore  # noqa: F401
    from .data.dataset_scoring import score_dataset  # noqa: F401
    from .data.datasets import Record, load_record, read_dataset, scan_dataset  # noqa: F401
    from .families import adapter_for, supported_families  # noqa: F401
    from .method.analysis import ImageAnalysis, analyze_image, hi_difference  # noqa: F401
    from .method.image_scoring import AnalysisConfig, PreparedImage, prepare_image  # noqa: F401
    from .method.layer_selection import Ranking, check_layer_choice, read_ranking, select_layers  # noqa: F401
    from .method.maps import batch_head_maps, head_maps, run_forward  # noqa: F401
    from .method.masks import MaskGrid, check_mask, mask_grid, object_patches  # noqa: F401
    from .method.scoring import (  # noqa: F401
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
    from .model.batching import collate  # noqa: F401
    from .model.captioning import generate_description  # noqa: F401
    from .model.capture import AttentionCache, capture_attention, install_capture  # noqa: F401
    from .model.images import MAX_IMAGE_PIXELS, image_to_rgb, load_image, load_mask, mask_from_image  # noqa: F401
    from .model.inputs import DEFAULT_PROMPT, ModelInputs, build_inputs, key_phrase_tokens  # noqa: F401
    from .model.loading import LoadConfig, LoadedModel, load_model  # noqa: F401
    from .tuning.compare import CompareConfig, Comparison, run_compare  # noqa: F401
    from .tuning.finetune import DataConfig, FinetuneConfig  # noqa: F401
    from .tuning.rankings import dataset_ranking, reuse_ranking  # noqa: F401
    from .tuning.run_folders import RunRecord  # noqa: F401
    from .tuning.runs import BeforeAfter, run_before_after, run_finetune, run_pretrained  # noqa: F401
    from .tuning.training import TrainCallbacks, TrainingCancelled, TrainingDiverged, lora_config  # noqa: F401
