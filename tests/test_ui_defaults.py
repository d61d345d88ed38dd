"""The page's controls start from hi_core's configs and presets, so the app and the library cannot drift: the
Fine-tune tab from the default preset, the Validate tab from EXPLORER_VALIDATION, the ablation's k from
AblationConfig, the device from LoadConfig, the layer bars' k from the preset's k."""

from __future__ import annotations

from typing import get_args

import pytest

from hi_core.causal.ablation import AblationConfig
from hi_core.causal.head_ablation import AblationMode
from hi_core.causal.validation import EXPLORER_HELD_OUT, EXPLORER_VALIDATION
from hi_core.data.dataset_analysis import DatasetConfig
from hi_core.model.loading import Device, LoadConfig
from hi_core.tuning.finetune import MAX_SEED
from hi_core.tuning.finetune_presets import DEFAULT_PRESET, finetune_preset


@pytest.fixture(scope="module")
def props(page_config) -> dict[str, dict]:
    """Each control's properties, by elem_id."""
    return {c["props"]["elem_id"]: c["props"] for c in page_config["components"] if c["props"].get("elem_id")}


def test_the_finetune_tab_starts_from_the_default_preset(props):
    start = finetune_preset(DEFAULT_PRESET)
    assert props["ft-preset"]["value"] == DEFAULT_PRESET
    shown = {name: props[f"ft-{name.replace('_', '-')}"]["value"] for name in ("k", "rank", "steps", "lr", "seed")}
    assert shown == {"k": start.k, "rank": start.rank, "steps": start.steps, "lr": start.lr, "seed": start.seed}
    assert props["ft-batch-size"]["value"] == start.batch_size
    assert props["ft-seed"]["maximum"] == MAX_SEED
    assert props["top-k"]["value"] == start.k  # the explorer's layer bars highlight the layers LoRA would tune


def test_the_validate_tab_starts_from_the_explorers_validation(props):
    assert props["val-orders"]["value"] == EXPLORER_VALIDATION.orders
    assert props["val-held-out"]["value"] == props["val-held-out"]["maximum"] == EXPLORER_HELD_OUT
    assert props["val-modes"]["value"] == list(EXPLORER_VALIDATION.modes)
    assert [choice[1] for choice in props["val-modes"]["choices"]] == list(get_args(AblationMode))
    assert props["val-task"]["value"] == EXPLORER_VALIDATION.data.task


def test_the_other_controls_start_from_their_configs(props):
    assert props["ablate-k"]["value"] == AblationConfig.k
    assert props["device"]["value"] == LoadConfig.device
    assert [choice[1] for choice in props["device"]["choices"]] == list(get_args(Device))
    assert props["ds-batch-size"]["value"] == DatasetConfig.batch_size
