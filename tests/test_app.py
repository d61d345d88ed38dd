"""The app through its API (gradio_client): analysis, head selection, per-session state, errors; the
Dataset tab: scoring the demo set or an uploaded zip, best/worst galleries, unsafe and bad zips."""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from hi_core import archives
from hi_core.datasets import read_dataset
from hi_core.errors import InputError
from hi_core.plots import map_overlay

EXAMPLE_DIR = app.EXAMPLES_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(llava_dir):
    demo = app.build_demo(str(llava_dir))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", str(llava_dir)
    demo.close()


def _example():
    record = json.loads((EXAMPLE_DIR / "data.jsonl").read_text().splitlines()[1])
    return str(EXAMPLE_DIR / record["image"]), str(EXAMPLE_DIR / record["mask"]), record


def _analyze(client, model, mask_file, text="a small orange cross at the left", key_phrase=""):
    image, _, _ = _example()
    editor = {"background": handle_file(image), "layers": [], "composite": handle_file(image)}
    return client.predict(model, "cpu", editor, handle_file(mask_file) if mask_file else None, text, False, key_phrase,
                          "Describe the image.", "producing", "area", 0.9, "max", 8, 0, 4, api_name="/analyze")


def test_analysis_returns_every_view_and_downloads(server):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, record = _example()
    outputs = _analyze(client, model, mask, key_phrase=record["key_phrase"])
    summary, heatmap, head_view, top_view, layer_view, ranking, bars, layer, head, downloads = outputs[1:]
    assert "grid** 6×6" in summary and "chance IoU" in summary
    assert len(ranking["data"]) == 2 * 4
    his = [row[2] for row in ranking["data"]]
    assert his == sorted(his, reverse=True)
    assert (layer, head) == tuple(ranking["data"][0][:2])
    names = sorted(path.rsplit("/", 1)[-1] for path in downloads)
    assert names == ["head.png", "heads.csv", "layer_scores.png", "scores.json", "top_heads.png"]
    scores = json.loads(open(next(p for p in downloads if p.endswith("scores.json"))).read())
    assert scores["num_layers"] * scores["num_heads"] == len(scores["heads"]) == 8


def test_sessions_do_not_share_results(server):
    url, model = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    _, mask, _ = _example()
    _analyze(first, model, mask)
    selected = first.predict(1, 2, 8, 0, 4, api_name="/select_head")
    assert list(selected[-2:]) == [1, 2]
    with pytest.raises(Exception, match="run an analysis first"):
        second.predict(1, 2, 8, 0, 4, api_name="/select_head")


def test_bad_input_is_shown_and_the_app_keeps_serving(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="mask is empty"):
        _analyze(client, model, None)  # nothing painted, nothing uploaded
    with pytest.raises(Exception, match="does not exist"):
        client.predict(str(tmp_path / "missing"), "cpu", api_name="/load_model")
    _, mask, _ = _example()
    assert "grid" in _analyze(client, model, mask)[1]


def test_examples_are_a_valid_dataset():
    records = list(read_dataset(EXAMPLE_DIR))
    assert len(records) >= 4 and all(r.key_phrase for r in records)


# --- the Dataset tab -------------------------------------------------------------------------------


def _score(client, model, source="demo", archive=None, limit=0):
    return client.predict(model, "cpu", source, handle_file(str(archive)) if archive else None, 4, limit, "Describe the image.",
                          "producing", "area", 0.9, "max", True, 4, True, api_name="/score_dataset")


def _per_image_hi(csv_path: str, layer: int, head: int) -> list[tuple[str, float]]:
    """(id, HI) of every image for one head, in dataset order, from the per-image CSV download."""
    with open(csv_path, newline="") as rows:
        return [(row["id"], float(row["hi"])) for row in csv.DictReader(rows) if (int(row["layer"]), int(row["head"])) == (layer, head)]


def _zip_of(folder: Path, archive: Path, top: str = "", records: int | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A dataset zip of `folder` (its first `records` records), under the top folder `top`, plus `extra` members."""
    lines = (folder / "data.jsonl").read_text().splitlines()[:records]
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"{top}data.jsonl", "\n".join(lines) + "\n")
        files = {json.loads(line)[key] for line in lines for key in ("image", "mask")}
        for name in sorted(files):
            if (folder / name).is_file():  # a record may name a missing file on purpose
                bundle.write(folder / name, f"{top}{name}")
        for name, data in (extra or {}).items():
            bundle.writestr(name, data)
    return archive


def test_scoring_the_demo_set_ranks_heads_with_intervals(server):
    url, model = server
    client = Client(url, verbose=False)
    summary, ranking, bars, skipped, heatmap, head_summary, layer, head, best, worst, downloads = _score(client, model)
    layers, heads = 2, 4
    assert summary.startswith(f"**{len(list(read_dataset(EXAMPLE_DIR)))} images scored** from the demo set") and not skipped
    rows = ranking["data"]
    assert ranking["headers"] == ["layer", "head", "mean HI", "HI low", "HI high", "mass"]
    assert sorted((row[0], row[1]) for row in rows) == [(l, h) for l in range(layers) for h in range(heads)]
    assert [row[2] for row in rows] == sorted((row[2] for row in rows), reverse=True)
    assert all(low <= hi <= high for _, _, hi, low, high, _ in rows)
    assert (layer, head) == tuple(rows[0][:2])  # the best head is selected first
    scores = json.loads(open(next(p for p in downloads if p.endswith(".json"))).read())
    top = scores["heads"][0]
    assert rows[0] == [top["layer"], top["head"], *(round(top[key], 4) for key in ("hi", "hi_low", "hi_high", "mass"))]
    # the mean HI of a head is the mean of its per-image HI in the CSV download
    per_image = _per_image_hi(next(p for p in downloads if p.endswith(".csv")), layer, head)
    assert rows[0][2] == pytest.approx(np.mean([hi for _, hi in per_image]), abs=1e-4)
    cell = app.heatmap_cell_px(layers, heads)
    assert Image.open(heatmap).size == (heads * cell, layers * cell)
    assert f"Layer {layer}, head {head}:** mean HI {rows[0][2]:.3f}" in head_summary


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 2)])
def test_a_chosen_heads_best_and_worst_images_are_ordered_by_its_hi(server, layer, head):
    url, model = server
    client = Client(url, verbose=False)
    downloads = _score(client, model)[-1]
    per_image = _per_image_hi(next(p for p in downloads if p.endswith(".csv")), layer, head)
    heatmap, head_summary, shown_layer, shown_head, best, worst = client.predict(layer, head, True, api_name="/select_dataset_head")
    assert (shown_layer, shown_head) == (layer, head)
    by_hi = sorted(per_image, key=lambda item: -item[1])  # stable: ties keep dataset order
    assert [item["caption"] for item in best] == [f"HI {hi:.2f} · {rid}" for rid, hi in by_hi[: app.GALLERY_SIZE]]
    by_low = sorted(per_image, key=lambda item: item[1])
    assert [item["caption"] for item in worst] == [f"HI {hi:.2f} · {rid}" for rid, hi in by_low[: app.GALLERY_SIZE]]
    picture = np.asarray(Image.open(best[0]["image"]).convert("RGB"))
    assert min(picture.shape[:2]) >= 192  # small images are enlarged for the gallery


def _run_folders() -> set[Path]:
    return set(app.UNPACKED.glob("run-*"))


def test_a_dataset_zip_is_scored_and_its_bad_records_listed(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    folder = tmp_path / "set"
    shutil.copytree(EXAMPLE_DIR, folder)
    with open(folder / "data.jsonl", "a") as index:  # a record whose mask file is missing
        index.write(json.dumps({"id": "lost", "image": "images/synth-2026-00000.png", "mask": "masks/lost.png", "text": "a thing"}) + "\n")
    archive = _zip_of(folder, tmp_path / "scenes.zip", top="scenes/", extra={"__MACOSX/scenes/._data.jsonl": b"\0"})
    before = _run_folders()
    summary, _, _, skipped, *_, downloads = _score(client, model, "zip", archive)
    assert "from `scenes.zip` (1 skipped)" in summary
    assert "line 9 (lost)" in skipped and "lost.png" in skipped
    assert json.loads(open(next(p for p in downloads if p.endswith(".json"))).read())["images"] == 8
    (first_run,) = _run_folders() - before
    limited = _score(client, model, "zip", archive, limit=3)
    assert limited[0].startswith("**3 images scored** from `scenes.zip`")
    assert not first_run.exists()  # the session's next run replaced it


def _evil_member(archive: Path) -> Path:
    _zip_of(EXAMPLE_DIR, archive, records=2, extra={"../evil.txt": b"outside"})
    return archive


def _no_index(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(EXAMPLE_DIR / "images" / "synth-2026-00000.png", "images/synth-2026-00000.png")
    return archive


def _outside_path(archive: Path) -> Path:
    record = {"id": "a", "image": "../../../etc/hostname", "mask": "masks/a.png", "text": "a cat"}
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.jsonl", json.dumps(record) + "\n")
    return archive


def _all_bad(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.jsonl", json.dumps({"id": "a", "image": "missing.png", "mask": "missing.png", "text": "a cat"}) + "\n")
    return archive


def _not_a_zip(archive: Path) -> Path:
    archive.write_text("just text")
    return archive


@pytest.mark.parametrize("make, message", [
    (_evil_member, "unsafe path '../evil.txt'"),
    (_no_index, "no data.jsonl at its root or in one top folder"),
    (_outside_path, "is not a path inside the dataset"),
    (_all_bad, "could be scored"),
    (_not_a_zip, "not a readable zip"),
])
def test_a_bad_zip_is_shown_and_the_app_keeps_serving(server, tmp_path, make, message):
    url, model = server
    client = Client(url, verbose=False)
    before = _run_folders()
    with pytest.raises(Exception, match=re.escape(message)):
        _score(client, model, "zip", make(tmp_path / "upload.zip"))
    assert _run_folders() <= before  # a failed run leaves no files behind
    assert not (app.UNPACKED / "evil.txt").exists()
    assert _score(client, model)[0].startswith("**8 images scored**")


def test_scoring_a_zip_needs_an_upload_and_selecting_needs_a_score(server):
    url, model = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="upload a dataset .zip first"):
        _score(client, model, "zip")
    with pytest.raises(Exception, match="score a dataset first"):
        client.predict(0, 0, True, api_name="/select_dataset_head")


def _link(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        link = zipfile.ZipInfo("data.jsonl")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    return archive


def _absolute(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo("/tmp/evil.txt"), "x")  # ZipInfo keeps the leading slash; writestr(str) strips it
    return archive


@pytest.mark.parametrize("make, limits, message", [
    (_evil_member, {}, "unsafe path"),
    (_absolute, {}, "unsafe path '/tmp/evil.txt'"),
    (_link, {}, "symbolic link"),
    (lambda archive: _zip_of(EXAMPLE_DIR, archive), {"MAX_ZIP_MEMBERS": 10}, "holds 17 files; at most 10"),
    (lambda archive: _zip_of(EXAMPLE_DIR, archive), {"MAX_ZIP_BYTES": 2**20 // 100}, "at most 0.0 MiB are accepted"),
])
def test_extracting_refuses_unsafe_or_oversized_zips_before_writing(tmp_path, monkeypatch, make, limits, message):
    for name, value in limits.items():
        monkeypatch.setattr(archives, name, value)
    into = tmp_path / "into"
    with pytest.raises(InputError, match=re.escape(message)):
        archives.extract_dataset_zip(make(tmp_path / "upload.zip"), into)
    assert not into.exists() or not any(into.rglob("*"))
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("top", ["", "my-scenes/"])
def test_extracting_finds_the_dataset_at_the_root_or_in_one_top_folder(tmp_path, top):
    folder = archives.extract_dataset_zip(_zip_of(EXAMPLE_DIR, tmp_path / "set.zip", top=top, records=2), tmp_path / "into")
    assert folder == tmp_path / "into" / top
    assert [r.id for r in read_dataset(folder)] == [r.id for r in read_dataset(EXAMPLE_DIR, limit=2)]


def test_gallery_overlay_puts_the_map_on_its_cells_and_outlines_the_mask():
    image = np.full((8, 8, 3), 128, np.uint8)
    head_map = np.array([[1.0, 0.0], [0.0, 0.0]])  # the top-left quarter
    mask = np.zeros((8, 8), bool)
    mask[4:, 4:] = True
    shown = map_overlay(image, head_map, mask, min_side=16).astype(int)
    assert shown.shape == (16, 16, 3)
    assert (shown[:8, :8].sum(-1) > shown[:8, 8:].sum(-1)).all()  # the hot cell is brighter (inferno)
    assert (shown[8:10, 8:] == (0, 255, 255)).all() and (shown[12, 12] != (0, 255, 255)).any()  # outline only
