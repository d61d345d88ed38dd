"""One image end to end: rescoring without a forward pass, CSV export, the model cache."""

from __future__ import annotations

import numpy as np

from hi_core.analysis import AnalysisConfig, analyze_image
from hi_core.loading import LoadConfig, ModelCache
from hi_core.scoring import ScoringConfig


def test_rescored_equals_a_fresh_analysis_with_those_options(llava, scene):
    image, mask = scene
    base = analyze_image(llava, image, mask, "a red square at the center")
    options = ScoringConfig(binarize="quantile", quantile=0.8, layer_score="mean")
    fresh = analyze_image(llava, image, mask, "a red square at the center", AnalysisConfig(scoring=options))
    rescored = base.rescored(options)
    np.testing.assert_allclose(rescored.hi, fresh.hi)
    np.testing.assert_allclose(rescored.layer_scores, fresh.layer_scores)
    assert not np.allclose(rescored.hi, base.hi)
    assert rescored.maps is base.maps  # no new forward pass


def test_csv_lists_every_head_by_hi(llava, scene):
    image, mask = scene
    analysis = analyze_image(llava, image, mask, "a red square at the center")
    lines = analysis.to_csv().strip().split("\n")
    assert lines[0] == "layer,head,hi,mass" and len(lines) == 1 + analysis.hi.size
    values = [float(line.split(",")[2]) for line in lines[1:]]
    assert values == sorted(values, reverse=True)


def test_model_cache_reuses_and_evicts(llava_dir):
    cache = ModelCache(capacity=1)
    cpu = LoadConfig(model=str(llava_dir), device="cpu")
    first = cache.get(cpu)
    assert cache.get(LoadConfig(model=str(llava_dir), device="cpu")) is first
    other = LoadConfig(model=str(llava_dir), device="cpu", dtype="bfloat16")
    assert cache.get(other) is not first
    assert cpu not in cache and other in cache
