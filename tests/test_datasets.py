"""The dataset format: writing a synthetic set, reading it back, reporting bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hi_core.cli import main
from hi_core.datasets import Problems, read_dataset, write_synthetic
from hi_core.errors import InputError


def test_synthetic_set_round_trips_and_is_reproducible(tmp_path):
    write_synthetic(tmp_path / "a", n=6, seed=1)
    write_synthetic(tmp_path / "b", n=6, seed=1)
    assert (tmp_path / "a" / "data.jsonl").read_text() == (tmp_path / "b" / "data.jsonl").read_text()
    records = list(read_dataset(tmp_path / "a"))
    assert len(records) == 6
    for record in records:
        assert record.mask.shape == (record.image.size[1], record.image.size[0]) and record.mask.any()
        assert record.key_phrase in record.text
    again = list(read_dataset(tmp_path / "b"))
    np.testing.assert_array_equal(np.asarray(records[2].image), np.asarray(again[2].image))


def test_bad_records_are_reported_and_skipped(tmp_path):
    folder = write_synthetic(tmp_path / "d", n=3, seed=2)
    lines = (folder / "data.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "masks" / "small.png")
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(folder / "masks" / "empty.png")
    bad = [
        dict(first, id="gone", image="images/missing.png"),
        dict(first, id="small", mask="masks/small.png"),
        dict(first, id="empty", mask="masks/empty.png"),
        dict(first, id="nophrase", key_phrase="purple elephant"),
        {"id": "notext", "image": first["image"], "mask": first["mask"]},
    ]
    (folder / "data.jsonl").write_text("\n".join(lines + [json.dumps(b) for b in bad] + ["{oops"]) + "\n")
    problems = Problems()
    records = list(read_dataset(folder, problems))
    assert [r.id for r in records] == [json.loads(l)["id"] for l in lines]
    reasons = {rid: reason for _, rid, reason in problems.skipped}
    assert len(problems) == 6
    assert "does not exist" in reasons["gone"]
    assert "mask is 10x10 but the image is 96x96" in reasons["small"]
    assert "mask is empty" in reasons["empty"]
    assert "does not occur" in reasons["nophrase"]
    assert "missing field(s) text" in reasons["notext"]
    assert "not valid JSON" in reasons[None]


def test_limit_and_missing_index(tmp_path):
    folder = write_synthetic(tmp_path / "d", n=4, seed=0)
    assert len(list(read_dataset(folder, limit=2))) == 2
    with pytest.raises(InputError, match="has no data.jsonl"):
        list(read_dataset(tmp_path))


def test_cli_dataset_synth(tmp_path):
    assert main(["dataset", "synth", "--out", str(tmp_path / "s"), "--n", "3", "--seed", "4"]) == 0
    assert len(list(read_dataset(tmp_path / "s"))) == 3
    assert main(["dataset", "synth", "--out", str(tmp_path / "z"), "--n", "0"]) == 2


def test_non_string_paths_and_huge_images_are_bad_records(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    folder = write_synthetic(tmp_path / "d", n=2, seed=0)
    lines = (folder / "data.jsonl").read_text().splitlines()
    numeric = json.loads(lines[0]) | {"id": "numeric", "image": 7}
    (folder / "data.jsonl").write_text("\n".join([json.dumps(numeric), lines[1]]) + "\n")
    problems = Problems()
    assert [r.id for r in read_dataset(folder, problems)] == [json.loads(lines[1])["id"]]
    assert "image must be a string, got a number" in problems.skipped[0][2]
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # every 96x96 scene is now a "bomb"
    problems = Problems()
    assert list(read_dataset(folder, problems)) == []
    assert "too large to decode" in problems.skipped[-1][2]
