"""The dataset format: writing a synthetic set, reading it back, reporting bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hi_core.cli.main import main
from hi_core.data.archives import check_record_paths
from hi_core.data.datasets import Problems, count_records, read_dataset, scan_dataset, write_synthetic
from hi_core.base.errors import InputError

from .vqa_data import QUESTIONS, write_vqa_dataset


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
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(folder / "masks" / "small.png")
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


@pytest.mark.parametrize("under", [False, True])
def test_synthetic_set_into_a_file_is_an_input_error(tmp_path, under):
    (tmp_path / "taken").write_text("my notes")
    with pytest.raises(InputError, match="is a file, or under a file"):
        write_synthetic(tmp_path / "taken" / "set" if under else tmp_path / "taken", n=1)
    assert (tmp_path / "taken").read_text() == "my notes"


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


def _write_lines(folder, lines):
    """data.jsonl from a list of lines: dicts are written as JSON, bytes as they are, str as UTF-8."""
    raw = [line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode() for line in lines]
    (folder / "data.jsonl").write_bytes(b"\n".join(raw) + b"\n")


@pytest.fixture
def scenes(tmp_path):
    """A 3-record synthetic set and its records as dicts."""
    folder = write_synthetic(tmp_path / "d", n=3, seed=5)
    return folder, [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("change, reason", [
    ({"key_phrase": 5}, "key_phrase must be a string, got a number"),
    ({"key_phrase": ["a"]}, "key_phrase must be a string, got a list"),
    ({"key_phrase": ""}, "key_phrase are empty"),
    ({"key_phrase": "   "}, "key_phrase are empty"),
    ({"prompt": 3}, "prompt must be a string, got a number"),
    ({"prompt": ""}, "prompt are empty"),
    ({"text": 5}, "text must be a string, got a number"),
    ({"text": {"a": 1}}, "text must be a string, got an object"),
    ({"image": ["images/a.png"]}, "image must be a string, got a list"),
    ({"mask": True}, "mask must be a string, got a boolean"),
    ({"id": 1.5}, "id must be a non-empty string or an integer, got a number 1.5"),
    ({"id": True}, "id must be a non-empty string or an integer, got a boolean"),
    ({"id": ["x"]}, "id must be a non-empty string or an integer, got a list"),
    ({"id": " "}, "id must be a non-empty string or an integer"),
    ({"id": ""}, "missing field(s) id"),
    ({"id": None}, "missing field(s) id"),
    ({"text": None, "mask": ""}, "missing field(s) mask, text"),
])
def test_each_malformed_field_is_one_skipped_record(scenes, change, reason):
    folder, entries = scenes
    _write_lines(folder, [entries[0], entries[1] | change, entries[2]])
    problems = Problems()
    assert [r.id for r in read_dataset(folder, problems)] == [entries[0]["id"], entries[2]["id"]]
    assert len(problems) == 1
    line, _, message = problems.skipped[0]
    assert line == 2 and reason in message


@pytest.mark.parametrize("line, reason", [
    (b'{"id": "caf\xe9", "image": "images/x.png"}', "not UTF-8"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "a record must be a JSON object, got a list"),
    (b'"a string"', "a record must be a JSON object, got a string"),
    (b"null", "a record must be a JSON object, got null"),
    (b"{oops", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_a_line_that_is_not_a_record_is_one_skipped_record(scenes, line, reason):
    folder, entries = scenes
    _write_lines(folder, [entries[0], line, entries[2]])
    problems = Problems()
    assert [r.id for r in read_dataset(folder, problems)] == [entries[0]["id"], entries[2]["id"]]
    assert [(number, rid) for number, rid, _ in problems.skipped] == [(2, None)]
    assert reason in problems.skipped[0][2]
    assert count_records(folder) == 3


def test_optional_and_unknown_fields(scenes):
    folder, entries = scenes
    _write_lines(folder, [entries[0] | {"id": 7, "prompt": "What is shown?", "extra": [1, {"x": None}]},
                          entries[1] | {"key_phrase": None, "prompt": None}, entries[2] | {"id": "7"}])
    problems = Problems()
    records = list(read_dataset(folder, problems))
    assert [(r.id, r.prompt, r.key_phrase, r.line) for r in records] == [
        ("7", "What is shown?", entries[0]["key_phrase"], 1), (entries[1]["id"], None, None, 2)]
    assert problems.skipped == [(3, "7", "duplicate id, first at line 1")]  # an integer id is its decimal string


def test_line_numbers_are_the_files_own(scenes):
    """Blank and whitespace-only lines are not records but count as lines; CRLF endings and a BOM are read."""
    folder, entries = scenes
    raw = [json.dumps(entries[0]).encode(), b"", b"   \t", json.dumps(entries[1] | {"text": 1}).encode(), b"",
           json.dumps(entries[2]).encode(), b"{oops"]
    (folder / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(raw) + b"\r\n\r\n")
    problems = Problems()
    assert [(r.id, r.line) for r in read_dataset(folder, problems)] == [(entries[0]["id"], 1), (entries[2]["id"], 6)]
    assert [(line, rid) for line, rid, _ in problems.skipped] == [(4, entries[1]["id"]), (7, None)]
    assert [(line.number, line.id) for line in scan_dataset(folder)] == [
        (1, entries[0]["id"]), (4, entries[1]["id"]), (6, entries[2]["id"]), (7, None)]
    assert count_records(folder) == 4 and count_records(folder, limit=2) == 2


class _AllBut:
    """Every id except `wanted` (how the app's gallery reads only some records)."""

    def __init__(self, wanted):
        self.wanted = wanted

    def __contains__(self, record_id):
        return record_id not in self.wanted


def test_the_first_record_of_an_id_counts_in_every_reader(scenes):
    """x, y, z, then x again with another image and text: every way of reading gets the first x."""
    folder, (x, y, z) = scenes
    later_x = z | {"id": x["id"]}
    _write_lines(folder, [x, "", y, z, later_x])
    duplicate = (5, x["id"], "duplicate id, first at line 1")

    def read(**options):
        problems = Problems()
        records = list(read_dataset(folder, problems, **options))
        return [(r.id, r.text) for r in records], problems.skipped

    first = (x["id"], x["text"])
    assert read() == ([first, (y["id"], y["text"]), (z["id"], z["text"])], [duplicate])
    assert read(shard=(0, 2)) == ([first, (z["id"], z["text"])], [])
    assert read(shard=(1, 2)) == ([(y["id"], y["text"])], [duplicate])  # knows x from the other shard
    assert read(limit=4) == ([first, (y["id"], y["text"]), (z["id"], z["text"])], [duplicate])
    assert read(skip_ids=_AllBut({x["id"]})) == ([first], [duplicate])
    assert read(skip_ids={x["id"]}) == ([(y["id"], y["text"]), (z["id"], z["text"])], [])
    (record,) = read_dataset(folder, skip_ids=_AllBut({x["id"]}))
    expected = np.asarray(Image.open(folder / x["image"]).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(record.image), expected)


def test_a_bad_first_record_still_claims_its_id(scenes):
    folder, (x, y, _) = scenes
    _write_lines(folder, [x | {"image": "images/missing.png"}, y, x])
    problems = Problems()
    assert [r.id for r in read_dataset(folder, problems)] == [y["id"]]
    assert [(line, rid) for line, rid, _ in problems.skipped] == [(1, x["id"]), (3, x["id"])]
    assert "does not exist" in problems.skipped[0][2] and problems.skipped[1][2] == "duplicate id, first at line 1"


def test_upload_path_check_reads_lines_like_the_reader(scenes):
    """check_record_paths: a non-UTF-8 or malformed line is left to the reader (a skipped record);
    an escaping path is refused under the file's own line number."""
    folder, (x, y, z) = scenes
    _write_lines(folder, [x, b"\xff", "", y | {"image": 5}, z])
    check_record_paths(folder)
    _write_lines(folder, [x, b"\xff", "", y, z | {"mask": "../../etc/passwd"}])
    with pytest.raises(InputError, match="line 5: mask '../../etc/passwd' is not a path inside the dataset"):
        check_record_paths(folder)
    _write_lines(folder, [x, z | {"id": x["id"], "mask": "/etc/passwd"}])  # a duplicate is never opened
    check_record_paths(folder)


def test_vqa_records_with_and_without_a_prompt_are_read_and_validated(tmp_path):
    folder = write_vqa_dataset(tmp_path / "vqa", n=4, prompts="some")
    entries = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    # a record whose key phrase is not in its answer, and one whose question is empty, are skipped like any other
    _write_lines(folder, entries + [entries[0] | {"id": "bad-phrase", "key_phrase": "circle"}, entries[0] | {"id": "bad-prompt", "prompt": " "}])
    problems = Problems()
    records = list(read_dataset(folder, problems))
    assert [(r.id, r.prompt, r.text) for r in records] == [
        ("vqa-00", QUESTIONS["top"], "red"), ("vqa-01", None, "green"), ("vqa-02", QUESTIONS["left"], "blue"), ("vqa-03", None, "red")]
    assert all(r.mask.sum() == 14 * 14 and r.mask.shape == (48, 48) for r in records)
    assert [(rid, reason) for _, rid, reason in problems.skipped] == [
        ("bad-phrase", "key phrase 'circle' does not occur in the text"),
        ("bad-prompt", "field(s) prompt are empty (leave them out, or write null, for none)")]
