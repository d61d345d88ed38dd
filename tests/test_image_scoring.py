"""The per-image steps: a one-image run and a dataset run take the same steps, in the same order,
through the same functions, and give the same maps and HI."""

from __future__ import annotations

import numpy as np
import pytest

import hi_core.method.analysis as analysis
import hi_core.data.dataset_scoring as dataset_scoring
import hi_core.method.image_scoring as image_scoring
import hi_core.method.maps as maps
from hi_core.data.dataset_analysis import DatasetConfig
from hi_core.data.dataset_scoring import score_batch
from hi_core.data.datasets import read_dataset, write_synthetic
from hi_core.base.errors import InputError
from hi_core.method.image_scoring import AnalysisConfig, prepare_image
from hi_core.method.scoring import ScoringConfig, score_maps


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return list(read_dataset(write_synthetic(tmp_path_factory.mktemp("data"), n=3, seed=2, size=48)))


@pytest.fixture
def steps(monkeypatch):
    """Every call of a step, in order, by whichever run makes it; the steps still do their work."""
    calls: list[str] = []

    def spy(module, name, label):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(analysis, "prepare_image", "prepare")
    spy(dataset_scoring, "prepare_image", "prepare")
    spy(maps, "batch_head_maps", "maps")  # head_maps (one image) is a batch of one
    spy(dataset_scoring, "batch_head_maps", "maps")
    spy(image_scoring, "score_maps", "score")
    return calls


def test_one_image_and_a_dataset_batch_take_the_same_steps_and_agree(llava, records, steps):
    config = DatasetConfig(analysis=AnalysisConfig(scoring=ScoringConfig(binarize="quantile")))
    results, failed = score_batch(llava, records, config)
    assert not failed and steps == ["prepare"] * 3 + ["maps"] + ["score"] * 3
    for record, result in zip(records, results):
        steps.clear()
        alone = analysis.analyze_image(llava, record.image, record.mask, record.text, config.record_analysis(record))
        assert steps == ["prepare", "maps", "score"]
        np.testing.assert_allclose(result.hi, alone.hi, atol=1e-6)
        np.testing.assert_allclose(result.mass, alone.mass, atol=1e-6)
        assert result.chance == alone.chance and result.response_tokens == alone.response_tokens
        assert result.object_patches == int(alone.mask.object_patches.sum()) and result.cells == int(alone.valid.sum())


def test_prepared_image_scores_its_maps_on_its_valid_cells(llava, records):
    record = records[0]
    prepared = prepare_image(llava, record.image, record.mask, record.text, AnalysisConfig(key_phrase=record.key_phrase))
    assert 0 < prepared.tokens.size < prepared.inputs.num_response_tokens  # the key phrase selects some tokens
    head_maps = maps.head_maps(llava, prepared.inputs, prepared.tokens, "producing")
    assert head_maps.shape[2:] == prepared.valid.shape == prepared.grid.object_patches.shape
    hi, mass, chance = prepared.score(head_maps, ScoringConfig())
    expected = score_maps(head_maps, prepared.grid.object_patches, prepared.valid, ScoringConfig())
    np.testing.assert_array_equal(hi, expected[0])
    np.testing.assert_array_equal(mass, expected[1])
    assert chance == expected[2] and 0 < chance < 1


def test_score_maps_counts_only_valid_cells():
    """A padding cell with all the attention changes nothing: it is not a cell of the image."""
    objects = np.array([[True, False], [False, False]])
    valid = np.array([[True, True], [True, False]])
    head = np.array([[[[0.6, 0.2], [0.2, 0.0]]]])  # (1 layer, 1 head, 2, 2)
    padded = head.copy()
    padded[..., 1, 1] = 100.0
    for values in (head, padded):
        hi, mass, chance = score_maps(values, objects, valid, ScoringConfig())
        assert hi.tolist() == [[1.0]] and mass[0, 0] == pytest.approx(0.6) and chance == pytest.approx(1 / 3)


def test_prepare_image_refuses_an_empty_description(llava, records):
    with pytest.raises(InputError, match="description text is empty"):
        prepare_image(llava, records[0].image, records[0].mask, "  ", AnalysisConfig())
