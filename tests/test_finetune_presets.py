"""The demo's fine-tune presets and the estimate of a run's wall time from measured rates."""

from __future__ import annotations

import pytest

from hi_core.base.errors import InputError
from hi_core.tuning.finetune import FinetuneConfig
from hi_core.tuning.finetune_presets import DEMO_RATES, PRESETS, RANK_LIMIT, RunRates, finetune_preset, preset_names


def test_every_preset_is_a_valid_config_with_a_rank_limit_and_quick_is_the_smaller_run():
    assert set(PRESETS) == set(preset_names()) == set(RANK_LIMIT)
    quick, full = finetune_preset("quick"), finetune_preset("full")
    assert all(isinstance(config, FinetuneConfig) for config in (quick, full))
    assert quick.steps * quick.batch_size < full.steps * full.batch_size
    assert quick.data.eval_limit < full.data.eval_limit and RANK_LIMIT["quick"] < RANK_LIMIT["full"]
    assert not quick.data.meteor  # a Java start costs seconds the quick run does not have


def test_a_preset_takes_changes_and_refuses_an_unknown_name():
    assert finetune_preset("quick", steps=7).steps == 7 and PRESETS["quick"].steps != 7  # the preset itself unchanged
    with pytest.raises(InputError, match="preset"):
        finetune_preset("slow")


def test_the_estimate_is_the_sum_of_its_stages_at_the_given_rates():
    rates = RunRates(train_sample_s=0.5, caption_s=2.0, rank_s=0.25, source="a test")
    stages = rates.estimate(FinetuneConfig(steps=10, batch_size=4), held_out=3, ranked=8)
    assert stages == {"ranking": 2.0, "training": 20.0, "captioning": 12.0, "total": 34.0}
    assert rates.estimate(FinetuneConfig(steps=10, batch_size=4), held_out=3, ranked=0)["ranking"] == 0.0


def test_updated_rates_replace_only_what_was_measured():
    updated = DEMO_RATES.updated(train_sample_s=1.0, rank_s=None, source="measured")
    assert (updated.train_sample_s, updated.caption_s, updated.rank_s, updated.source) == (
        1.0, DEMO_RATES.caption_s, DEMO_RATES.rank_s, "measured")
