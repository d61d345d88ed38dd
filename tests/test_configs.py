"""Every configuration object refuses what is not a number of its kind, in one InputError naming the field:
`True` (Python counts it as 1), a fraction where a count goes, NaN, and values below the allowed range."""

import math

import pytest

from hi_core import AnalysisConfig, DatasetConfig, FinetuneConfig, LoadConfig, ScoringConfig
from hi_core.causal.ablation import AblationConfig
from hi_core.tuning.compare import CompareConfig
from hi_core.demo.train import TrainConfig
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig
from hi_core.data.datasets import write_synthetic
from hi_core.data.synth_vqa import write_synthetic_vqa
from hi_core.causal.validation import ValidationConfig

COUNTS = [
    (AnalysisConfig, "max_new_tokens"),
    (DatasetConfig, "batch_size"),
    (DatasetConfig, "limit"),
    (DatasetConfig, "resamples"),
    (ScoringConfig, "top_n"),
    (LoadConfig, "max_view_pixels"),
    (FinetuneConfig, "k"),
    (FinetuneConfig, "steps"),
    (FinetuneConfig, "batch_size"),
    (FinetuneConfig, "rank"),
    (DataConfig, "eval_limit"),
    (DataConfig, "eval_batch_size"),
    (AblationConfig, "k"),
    (AblationConfig, "seeds"),
    (CompareConfig, "seeds"),
    (ValidationConfig, "orders"),
    (ValidationConfig, "batch_size"),
    (TrainConfig, "steps"),
    (TrainConfig, "batch_size"),
    (TrainConfig, "vision_layers"),
]


def build(config_class, **fields):
    if config_class is LoadConfig:
        fields.setdefault("model", "demo")
    return config_class(**fields)


@pytest.mark.parametrize(("config_class", "field"), COUNTS, ids=[f"{c.__name__}.{f}" for c, f in COUNTS])
@pytest.mark.parametrize("bad", [True, 1.5, math.nan, math.inf, 0, -3, "2"], ids=repr)
def test_counts_refuse_what_is_not_a_whole_number_of_at_least_one(config_class, field, bad):
    with pytest.raises(InputError, match=field):
        build(config_class, **{field: bad})


@pytest.mark.parametrize(("config_class", "field"), COUNTS, ids=[f"{c.__name__}.{f}" for c, f in COUNTS])
def test_counts_accept_a_whole_number(config_class, field):
    assert getattr(build(config_class, **{field: 3}), field) == 3


@pytest.mark.parametrize(("config_class", "field", "bad"), [
    (DatasetConfig, "confidence", 1.0),
    (DatasetConfig, "confidence", math.nan),
    (DatasetConfig, "seed", -1),
    (TrainConfig, "vqa_share", 1.5),
    (TrainConfig, "vqa_share", True),
    (TrainConfig, "lr", math.nan),
    (TrainConfig, "vision_hidden", 6),
    (TrainConfig, "text_head_dim", 3),
    (TrainConfig, "patch_shape_weight", math.inf),
    (TrainConfig, "warmup", -1),
])
def test_ranges_refuse_values_outside_them(config_class, field, bad):
    with pytest.raises(InputError, match=field):
        build(config_class, **{field: bad})


@pytest.mark.parametrize("bad", [True, 2.5, 0])
@pytest.mark.parametrize("write", [write_synthetic, write_synthetic_vqa], ids=["scenes", "questions"])
def test_synthetic_writers_refuse_a_count_that_is_not_a_whole_number_and_write_nothing(write, bad, tmp_path):
    with pytest.raises(InputError, match="n must be a whole number of at least 1"):
        write(tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()
