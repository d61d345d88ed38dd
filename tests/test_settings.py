"""The deployment policy's view budgets: the allow-list's ~2 B models load with the lower one in public."""

from __future__ import annotations

import pytest

from hi_core.base.errors import InputError
from ui.settings import LARGE_VIEW_MODELS, RELEASED_MODEL_TYPES, Settings


def test_public_view_budget_is_lower_for_the_large_models():
    public = Settings.public_defaults()
    assert public.view_pixels("HuggingFaceTB/SmolVLM-256M-Instruct") == public.max_view_pixels == 1_048_576
    for model in LARGE_VIEW_MODELS:
        assert model in RELEASED_MODEL_TYPES
        assert public.view_pixels(model) == 262_144


def test_view_budgets_follow_the_settings():
    large = next(iter(sorted(LARGE_VIEW_MODELS)))
    assert Settings().view_pixels(large) is None  # local: the model's own settings
    assert Settings(max_view_pixels=100_000, large_model_view_pixels=262_144).view_pixels(large) == 100_000
    assert Settings(large_model_view_pixels=262_144).view_pixels(large) == 262_144
    assert Settings(large_model_view_pixels=262_144).view_pixels("demo") is None
    environ = {"HI_PUBLIC": "1", "HI_LARGE_MODEL_VIEW_PIXELS": ""}  # an empty value: no limit of its own
    assert Settings.from_env(environ=environ).view_pixels(large) == 1_048_576


@pytest.mark.parametrize("name", ["max_image_pixels", "max_image_side", "concurrency", "max_run_storage_mb", "cache_ttl_s"])
def test_an_empty_variable_is_refused_for_a_bound_that_has_no_off(name):
    with pytest.raises(InputError, match=f"setting {name} must be a positive number: it has no 'no limit'"):
        Settings.from_env(environ={"HI_PUBLIC": "1", f"HI_{name.upper()}": ""})


def test_an_empty_variable_lifts_a_bound_that_may_be_off():
    assert Settings.from_env(environ={"HI_PUBLIC": "1", "HI_MAX_DATASET_IMAGES": ""}).max_dataset_images is None
