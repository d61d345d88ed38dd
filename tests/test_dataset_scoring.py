"""Dataset HI: batched == one image at a time, resume == uninterrupted, bad records skipped and
counted, bootstrap intervals, the `score --dataset` CLI, and 2 processes under `accelerate launch`
== 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hi_core.data.dataset_scoring as dataset_scoring
import hi_core.data.score_cache as score_cache
from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.cli.main import main
from hi_core.data.dataset_analysis import DatasetAnalysis, DatasetConfig, ImageScore
from hi_core.data.dataset_scoring import bootstrap_interval, score_dataset
from hi_core.data.score_cache import read_cache
from hi_core.data.datasets import read_dataset, write_synthetic
from hi_core.base.distributed import ProcessState
from hi_core.base.errors import InputError
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.inputs import DEFAULT_PROMPT
from hi_core.model.images import load_image, load_mask

from .vqa_data import QUESTIONS, write_vqa_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return load_model(LoadConfig("demo", device="cpu"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "set", n=7, seed=3, size=64)


def _json(result) -> dict:
    out = result.to_json()
    out.pop("dataset")
    return out


def test_batched_equals_one_image_at_a_time(demo, dataset):
    result = score_dataset(demo, dataset, DatasetConfig(batch_size=3))
    records = list(read_dataset(dataset))
    assert [image.id for image in result.images] == [r.id for r in records] and not result.skipped
    for record, image in zip(records, result.images):
        alone = analyze_image(demo, record.image, record.mask, record.text, AnalysisConfig(key_phrase=record.key_phrase))
        np.testing.assert_allclose(image.hi, alone.hi, atol=1e-5)
        np.testing.assert_allclose(image.mass, alone.mass, atol=1e-5)
        assert image.chance == pytest.approx(alone.chance) and image.response_tokens == alone.response_tokens
    stacked = np.stack([image.hi for image in result.images])
    np.testing.assert_allclose(result.hi, stacked.mean(axis=0))
    assert (result.hi_low <= result.hi + 1e-12).all() and (result.hi <= result.hi_high + 1e-12).all()
    assert (result.hi_high - result.hi_low).max() > 0
    heads = result.to_json()["heads"]
    assert [h["hi"] for h in heads] == sorted((h["hi"] for h in heads), reverse=True)
    assert len(heads) == demo.model.config.text_config.num_hidden_layers * demo.model.config.text_config.num_attention_heads
    best_layer = result.to_json()["layers"][0]
    assert best_layer["score"] == pytest.approx(result.hi.max(axis=1).max())


def test_resume_after_an_interruption_equals_one_run(demo, dataset, tmp_path, monkeypatch):
    config = DatasetConfig(batch_size=2)
    whole = score_dataset(demo, dataset, config, cache=tmp_path / "whole")

    def interrupt(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_dataset(demo, dataset, config, cache=tmp_path / "cut", progress=interrupt)
    part = tmp_path / "cut" / "part-0.jsonl"
    assert len(part.read_text().splitlines()) == 4
    with open(part, "a") as handle:  # a line cut short, as a kill mid-write leaves it
        handle.write('{"id": "synth-3-00004", "hi": [[0.1')
    scored = []
    original = dataset_scoring.score_batch
    monkeypatch.setattr(dataset_scoring, "score_batch", lambda loaded, records, cfg: scored.extend(r.id for r in records) or original(loaded, records, cfg))
    resumed = score_dataset(demo, dataset, config, cache=tmp_path / "cut")
    assert scored == [f"synth-3-{i:05d}" for i in range(4, 7)]  # only the missing images
    assert _json(resumed) == _json(whole)
    assert resumed.to_csv() == whole.to_csv()


def test_cache_of_other_settings_is_refused(demo, dataset, tmp_path):
    score_dataset(demo, dataset, DatasetConfig(limit=2), cache=tmp_path / "c")
    with pytest.raises(InputError, match="other settings.*queries"):
        score_dataset(demo, dataset, DatasetConfig(limit=2, analysis=AnalysisConfig(queries="reading")), cache=tmp_path / "c")


def test_corrupt_records_are_skipped_and_counted(demo, dataset, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(dataset, folder)
    lines = (folder / "data.jsonl").read_text().splitlines()
    gone = json.loads(lines[1]) | {"id": "gone", "image": "images/nothing.png"}
    small = json.loads(lines[2]) | {"id": "small", "mask": "small.png"}
    Image.fromarray(np.full((5, 5), 255, dtype=np.uint8)).save(folder / "small.png")
    (folder / "data.jsonl").write_text("\n".join([lines[0], json.dumps(gone), json.dumps(small), lines[3]]) + "\n")
    result = score_dataset(demo, folder, DatasetConfig(batch_size=4))
    assert [image.id for image in result.images] == [json.loads(lines[i])["id"] for i in (0, 3)]
    reasons = {rid: reason for _, rid, reason in result.skipped}
    assert set(reasons) == {"gone", "small"} and "does not exist" in reasons["gone"] and "5x5" in reasons["small"]
    assert result.to_json()["images"] == 2 and len(result.to_json()["skipped"]) == 2


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    values = rng.random((400, 2, 3))
    values[:, 1, 2] = 0.25  # a head with the same HI everywhere: a zero-width interval
    low, high = bootstrap_interval(values, 0.95, 2000, seed=1)
    mean, half = values.mean(axis=0), 1.96 * values.std(axis=0, ddof=1) / np.sqrt(len(values))
    varying = np.ones((2, 3), dtype=bool)
    varying[1, 2] = False
    np.testing.assert_allclose((high - low)[varying], 2 * half[varying], rtol=0.15)
    np.testing.assert_allclose(((high + low) / 2)[varying], mean[varying], atol=0.3 * half.max())
    assert low[1, 2] == high[1, 2] == 0.25
    single_low, single_high = bootstrap_interval(values[:1], 0.95, 100, seed=1)
    np.testing.assert_array_equal(single_low, values[0])
    np.testing.assert_array_equal(single_high, values[0])


def test_cli_score_dataset_writes_json_csv_and_resumes(dataset, tmp_path, capsys):
    out = tmp_path / "ranking.json"
    assert main(["score", "--model", "demo", "--dataset", str(dataset), "--limit", "5", "--batch-size", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 5 and result["skipped"] == []
    assert {"hi", "hi_low", "hi_high", "mass", "layer", "head"} == set(result["heads"][0])
    rows = (tmp_path / "ranking.images.csv").read_text().splitlines()
    assert rows[0] == "id,layer,head,hi,mass,object_patches,chance"
    assert len(rows) == 1 + 5 * result["num_layers"] * result["num_heads"]
    assert not (tmp_path / "ranking.cache").exists()  # the default cache (OUT.cache) goes once the run is done
    assert main(["score", "--model", "demo", "--dataset", str(dataset), "--limit", "5", "--batch-size", "2",
                 "--out", str(tmp_path / "again.json"), "--cache", str(tmp_path / "kept.cache")]) == 0
    assert (tmp_path / "kept.cache" / "config.json").is_file()  # a cache the user named stays, and is reused
    assert main(["score", "--model", "demo", "--dataset", str(dataset), "--limit", "5", "--out", str(tmp_path / "third.json"),
                 "--cache", str(tmp_path / "kept.cache")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == result == json.loads((tmp_path / "third.json").read_text())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nowhere"], "is not a dataset folder"),
        (["--dataset", "DATA", "--text", "a cat"], "drop --text"),
        (["--dataset", "DATA", "--batch-size", "0"], "batch_size must be a whole number of at least 1"),
        (["--dataset", "DATA", "--cache", "FILE"], "is a file"),
        (["--dataset", "DATA", "--cache", "FILE/cache"], "is a file"),
        ([], "score needs --image, --mask, --text or --generate"),
    ],
)
def test_cli_score_dataset_bad_input(dataset, tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("not a folder")
    extra = [arg.replace("DATA", str(dataset)).replace("FILE", str(tmp_path / "file")) for arg in extra]
    assert main(["score", "--model", "demo", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_two_processes_under_accelerate_equal_one(dataset, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each scores a shard, the main one merges."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = ["score", "--model", "demo", "--dataset", str(dataset), "--batch-size", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    two = subprocess.run([*launch, "-m", "hi_core", *command, "--out", str(tmp_path / "two.json"), "--cache", str(tmp_path / "two.cache")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two.cache").glob("part-*.jsonl")) == ["part-0.jsonl", "part-1.jsonl"]
    parts = [len(p.read_text().splitlines()) for p in sorted((tmp_path / "two.cache").glob("part-*.jsonl"))]
    assert parts == [4, 3]  # records 0, 2, 4, 6 and 1, 3, 5
    assert main([*command, "--out", str(tmp_path / "one.json")]) == 0
    one, two_result = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert [(h["layer"], h["head"]) for h in one["heads"]] == [(h["layer"], h["head"]) for h in two_result["heads"]]
    for a, b in zip(one["heads"], two_result["heads"]):
        assert a == pytest.approx(b, abs=1e-6)
    assert one["layers"] == two_result["layers"] and one["images"] == two_result["images"] == 7


def _messy(dataset, folder):
    """A copy of `dataset` whose data.jsonl has blank lines, a duplicate id whose record differs from
    the first (another image, mask and text), a non-string key phrase and a line that is not UTF-8."""
    shutil.copytree(dataset, folder)
    entries = [json.loads(line) for line in (dataset / "data.jsonl").read_text().splitlines()]
    lines = [json.dumps(entries[0]), "", json.dumps(entries[1]), json.dumps(entries[2]), "   ", json.dumps(entries[3] | {"key_phrase": 7}),
             json.dumps(entries[5] | {"id": entries[1]["id"]}),  # line 7: the duplicate of line 3, in the other shard
             json.dumps(entries[4]), "\udcff", json.dumps(entries[6])]
    raw = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"  # line 9: the single byte 0xff
    (folder / "data.jsonl").write_bytes(raw)
    return entries


def test_duplicate_ids_and_bad_lines_give_one_result_whatever_the_history(demo, dataset, tmp_path, monkeypatch):
    """Full run == resumed run == two data-parallel shards: the first record of a duplicate id is
    scored, the later one is skipped, every skipped record is listed under its own line."""
    entries = _messy(dataset, tmp_path / "messy")
    folder = tmp_path / "messy"
    config = DatasetConfig(batch_size=2)
    whole = score_dataset(demo, folder, config)  # no cache
    ids = [entries[i]["id"] for i in (0, 1, 2, 4, 6)]
    assert [image.id for image in whole.images] == ids
    duplicate = whole.images[1]
    first = entries[1]
    alone = analyze_image(demo, load_image(folder / first["image"]), load_mask(folder / first["mask"]), first["text"],
                          AnalysisConfig(key_phrase=first["key_phrase"]))
    np.testing.assert_allclose(duplicate.hi, alone.hi, atol=1e-5)
    assert duplicate.text == first["text"]
    assert [(line, rid) for line, rid, _ in whole.skipped] == [(6, entries[3]["id"]), (7, first["id"]), (9, None)]
    reasons = [reason for _, _, reason in whole.skipped]
    assert "key_phrase must be a string" in reasons[0] and reasons[1] == "duplicate id, first at line 3" and reasons[2] == "not UTF-8"
    assert whole.to_json()["skipped"][1] == {"line": 7, "id": first["id"], "reason": "duplicate id, first at line 3"}

    def interrupt(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the first record of the duplicate id is in the cache, the later not yet read
        score_dataset(demo, folder, config, cache=tmp_path / "cut", progress=interrupt)
    assert {rid for rid, _ in read_cache(tmp_path / "cut")} == {entries[0]["id"], entries[1]["id"]}
    resumed = score_dataset(demo, folder, config, cache=tmp_path / "cut")
    assert _json(resumed) == _json(whole) and resumed.skipped == whole.skipped
    assert resumed.to_csv() == whole.to_csv()

    barriers = []
    # two data-parallel processes, one after the other, sharing the cache; the main one creates it before the first barrier
    score_cache.open_cache(tmp_path / "shards", score_cache.cache_settings(demo, folder, config), main_process=True)
    for process in (1, 0):
        monkeypatch.setattr(dataset_scoring, "process_state", lambda cpu, p=process: ProcessState(p, 2, lambda: barriers.append(p)))
        sharded = score_dataset(demo, folder, config, cache=tmp_path / "shards")
    assert barriers == [1, 1, 0, 0]
    # the shards batch other records together (other padding): float32 sums differ in the last digits
    rounded = lambda result: json.loads(json.dumps(_json(result)), parse_float=lambda v: round(float(v), 5))  # noqa: E731
    assert rounded(sharded) == rounded(whole) and sharded.skipped == whole.skipped
    parts = {p.name: [json.loads(line)["id"] for line in p.read_text().splitlines()] for p in (tmp_path / "shards").glob("part-*")}
    assert parts == {"part-0.jsonl": [entries[i]["id"] for i in (0, 2)], "part-1.jsonl": [entries[i]["id"] for i in (1, 4, 6)]}


def test_a_record_prompt_is_used_for_that_record(demo, dataset, tmp_path):
    folder = tmp_path / "vqa"
    shutil.copytree(dataset, folder)
    entries = [json.loads(line) for line in (dataset / "data.jsonl").read_text().splitlines()][:2]
    entries[0]["prompt"] = "Which shape is it?"
    (folder / "data.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    result = score_dataset(demo, folder, DatasetConfig())
    for entry, image in zip(entries, result.images):
        config = AnalysisConfig(prompt=entry.get("prompt", AnalysisConfig().prompt), key_phrase=entry["key_phrase"])
        alone = analyze_image(demo, load_image(folder / entry["image"]), load_mask(folder / entry["mask"]), entry["text"], config)
        np.testing.assert_allclose(image.hi, alone.hi, atol=1e-5)
        np.testing.assert_allclose(image.mass, alone.mass, atol=1e-5)
    default = analyze_image(demo, load_image(folder / entries[0]["image"]), load_mask(folder / entries[0]["mask"]),
                            entries[0]["text"], AnalysisConfig(key_phrase=entries[0]["key_phrase"]))
    assert not np.allclose(result.images[0].mass, default.mass, atol=1e-5)  # the prompt made a difference


@pytest.mark.parametrize("make, message", [
    (lambda cache: cache.write_text("a file"), "is a file: give a folder"),
    (lambda cache: None, "which is a file"),
    (lambda cache: (cache.mkdir(), (cache / "part-0.jsonl").write_text("{}\n")), "without a readable config.json"),
    (lambda cache: (cache.mkdir(), (cache / "config.json").write_text("{oops")), "unreadable config.json"),
    (lambda cache: (cache.mkdir(), (cache / "config.json").write_bytes(b"\xff")), "unreadable config.json"),
    (lambda cache: (cache.mkdir(), (cache / "config.json").write_text("[1]")), "unreadable config.json"),
    (lambda cache: ((cache / "part-0.jsonl").mkdir(parents=True), (cache / "config.json").write_text("{}")),
     "holds part-0.jsonl, which should be files"),
])
def test_a_cache_that_cannot_be_one_is_refused_before_scoring(demo, dataset, tmp_path, monkeypatch, make, message):
    cache = tmp_path / "cache"
    if message == "which is a file":
        (tmp_path / "file").write_text("a file")
        cache = tmp_path / "file" / "cache"
    make(cache)
    monkeypatch.setattr(dataset_scoring, "score_batch", lambda *args: pytest.fail("a record was scored"))
    with pytest.raises(InputError, match=message):
        score_dataset(demo, dataset, DatasetConfig(limit=2), cache=cache)


def test_unreadable_cache_lines_are_scored_again(demo, dataset, tmp_path, monkeypatch):
    config = DatasetConfig(limit=3)
    whole = score_dataset(demo, dataset, config, cache=tmp_path / "c")
    part = tmp_path / "c" / "part-0.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    broken = json.loads(lines[1]) | {"hi": "nonsense"}
    part.write_bytes(lines[0] + json.dumps(broken).encode() + b"\n" + lines[2]
                     + b'{}\n[1]\n\xff\xfe\n{"id": "x", "skipped": 5}\n{"id": 3, "hi": []}\n')
    scored = []
    original = dataset_scoring.score_batch
    monkeypatch.setattr(dataset_scoring, "score_batch", lambda loaded, records, cfg: scored.extend(r.id for r in records) or original(loaded, records, cfg))
    again = score_dataset(demo, dataset, config, cache=tmp_path / "c")
    assert scored == [whole.images[1].id]
    assert [image.id for image in again.images] == [image.id for image in whole.images] and not again.skipped
    np.testing.assert_allclose(again.image_hi, whole.image_hi, atol=1e-5)  # rescored alone, not in a batch of 3


def test_a_record_edited_or_whose_image_was_replaced_since_it_was_cached_is_scored_again(demo, dataset, tmp_path, monkeypatch):
    """The cache holds a result under the record's id and fingerprint: after one record gains a
    prompt and another's image file is replaced, only those two are scored again, and the result
    equals a run without the cache."""
    folder = tmp_path / "set"
    shutil.copytree(dataset, folder)
    config = DatasetConfig(limit=4)
    score_dataset(demo, folder, config, cache=tmp_path / "c")
    entries = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    entries[1]["prompt"] = "Which shape is it?"
    (folder / "data.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    shutil.copyfile(folder / entries[3]["image"], folder / entries[2]["image"])  # same size, other pixels
    scored = []
    original = dataset_scoring.score_batch
    monkeypatch.setattr(dataset_scoring, "score_batch", lambda loaded, records, cfg: scored.extend(r.id for r in records) or original(loaded, records, cfg))
    again = score_dataset(demo, folder, config, cache=tmp_path / "c")
    assert scored == [entries[1]["id"], entries[2]["id"]]
    fresh = score_dataset(demo, folder, config)
    assert [image.id for image in again.images] == [image.id for image in fresh.images] and not again.skipped
    np.testing.assert_allclose(again.image_hi, fresh.image_hi, atol=1e-5)
    np.testing.assert_allclose([image.mass for image in again.images], [image.mass for image in fresh.images], atol=1e-5)


def _analysis_of(per_image_hi: list[list[float]], chances: list[float]) -> DatasetAnalysis:
    """A DatasetAnalysis of 1 layer x len(row) heads from per-image HI, without a model."""
    images = [
        ImageScore(id=f"r{i}", text="t", key_phrase=None, object_patches=1, cells=4, chance=chance,
                   response_tokens=1, hi=np.array([row]), mass=np.array([row]))
        for i, (row, chance) in enumerate(zip(per_image_hi, chances))
    ]
    hi = np.mean([image.hi for image in images], axis=0)
    return DatasetAnalysis(
        model="m", family="f", dataset="d", queries="producing", images=images, hi=hi, hi_low=hi, hi_high=hi, mass=hi,
        layer_scores=hi.max(axis=1), skipped=[], config=DatasetConfig())


def test_extremes_are_a_heads_best_and_worst_images_with_stable_ties():
    # head 1's HI over five images: 0.5, 0.9, 0.5, 0.1, 0.9 (ties keep dataset order)
    analysis = _analysis_of([[0.0, 0.5], [0.3, 0.9], [0.2, 0.5], [0.9, 0.1], [0.1, 0.9]], [0.1] * 5)
    highest, lowest = analysis.extremes(0, 1, 3)
    assert highest.tolist() == [1, 4, 0] and lowest.tolist() == [3, 0, 2]
    highest, lowest = analysis.extremes(0, 0, 10)  # more than there are: every image, once
    assert highest.tolist() == [3, 1, 2, 4, 0] and lowest.tolist() == [0, 4, 2, 1, 3]
    assert [len(side) for side in analysis.extremes(0, 0, 0)] == [0, 0]
    for layer, head, count in [(1, 0, 2), (0, 2, 2), (-1, 0, 2), (0, 0, -1)]:
        with pytest.raises(InputError):
            analysis.extremes(layer, head, count)


def test_mean_chance_is_the_mean_over_images_and_goes_into_the_json():
    analysis = _analysis_of([[0.5], [0.7], [0.2]], [0.1, 0.25, 0.4])
    assert analysis.mean_chance == pytest.approx(0.25)
    assert analysis.to_json()["chance"] == pytest.approx(0.25)


def test_score_batch_scores_each_record_with_record_analysis(demo, dataset, monkeypatch):
    """The one function that says how a record is scored: what it returns is what score_batch uses."""
    records = list(read_dataset(dataset, limit=2))
    config = DatasetConfig()
    seen = []
    original = DatasetConfig.record_analysis

    def spy(self, record):
        options = original(self, record)
        seen.append(record.id)
        if record.id == records[1].id:  # another prompt and binarization for this record only
            from dataclasses import replace

            from hi_core.method.scoring import ScoringConfig
            options = replace(options, prompt="Which shape is it?", scoring=ScoringConfig(binarize="otsu"))
        return options

    monkeypatch.setattr(DatasetConfig, "record_analysis", spy)
    results, failed = dataset_scoring.score_batch(demo, records, config)
    assert not failed and seen == [r.id for r in records]
    for record, result in zip(records, results):
        alone = analyze_image(demo, record.image, record.mask, record.text, spy(config, record))
        np.testing.assert_allclose(result.hi, alone.hi, atol=1e-5)
        np.testing.assert_allclose(result.mass, alone.mass, atol=1e-5)
    plain = analyze_image(demo, records[1].image, records[1].mask, records[1].text, original(config, records[1]))
    assert not np.allclose(results[1].hi, plain.hi)  # the record's own options made a difference


def test_vqa_records_are_scored_on_the_answer_with_their_own_question_against_their_mask(llava, tmp_path, monkeypatch):
    """Each record's sequence is its own question's prefix + its answer's tokens (a record without a
    prompt: the run's prompt), and its HI is a one-image analysis with that prompt, answer and mask."""
    folder = write_vqa_dataset(tmp_path / "vqa", n=3, prompts="some")  # top (question), bottom (no prompt), left (question)
    records = list(read_dataset(folder))
    seen = {}
    original = dataset_scoring.prepare_image

    def spy(loaded, image, mask, text, options):
        prepared = original(loaded, image, mask, text, options)
        seen[text, options.prompt] = (prepared.inputs, prepared.tokens, prepared.grid.object_patches)
        return prepared

    monkeypatch.setattr(dataset_scoring, "prepare_image", spy)
    result = score_dataset(llava, folder, DatasetConfig(batch_size=2))
    assert [image.id for image in result.images] == [r.id for r in records] and not result.skipped
    tokenizer, prefixes = llava.processor.tokenizer, []
    for record, image in zip(records, result.images):
        prompt = record.prompt or DEFAULT_PROMPT
        inputs, tokens, object_patches = seen[record.text, prompt]
        ids = inputs.tensors["input_ids"][0].tolist()
        expected_prefix = llava.adapter.prefix_inputs(llava.processor, record.image, prompt)
        assert ids[: inputs.prefix_length] == expected_prefix["input_ids"][0].tolist()  # the record's question
        answer = tokenizer(record.text, add_special_tokens=False)["input_ids"]
        assert ids[inputs.prefix_length :] == answer and tokens.tolist() == list(range(len(answer)))  # the answer's tokens
        assert image.response_tokens == len(answer) and image.text == record.text
        prefixes.append(ids[: inputs.prefix_length])
        alone = analyze_image(llava, record.image, record.mask, record.text, AnalysisConfig(prompt=prompt))  # the oracle
        np.testing.assert_allclose(image.hi, alone.hi, atol=1e-5)
        np.testing.assert_allclose(image.mass, alone.mass, atol=1e-5)
        # against the record's own mask: 14 px squares on 8 px cells cover (at least half of) 2 x 2 cells
        assert np.array_equal(object_patches, alone.mask.object_patches) and image.object_patches == int(object_patches.sum()) == 4
    questions = [tokenizer.decode(prefix) for prefix in prefixes]
    assert QUESTIONS["top"] in questions[0] and QUESTIONS["left"] in questions[2] and "describe the image" in questions[1]
    assert prefixes[0] != prefixes[2] and len({tuple(p) for p in prefixes}) == 3  # two questions, and the default prompt


def test_a_dataset_without_records_says_so(demo, tmp_path):
    (tmp_path / "data.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match=r"could be scored \(its data.jsonl holds no records\)"):
        score_dataset(demo, tmp_path)
