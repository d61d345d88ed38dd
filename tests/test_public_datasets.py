"""A dataset from a stranger holds to the deployment's budget (issue 24): records decoded within the editor's
limits (refused over the pixel cap, reduced to its side while decoding), data.jsonl bounded before it is
scanned, run storage reserved before a zip is unpacked and counted while it is written, Cancel between
batches, skipped records without the server's paths, and one message for every odd zip.

Each budget is set small through `Settings(...)` so each case runs in seconds.

Peak memory is measured as tests/test_memory.py does: in a child process, by the high-water mark of its
resident memory (`VmHWM`), which starts anew at exec. The child is also the measuring script for docs/hosting.md:
`python tests/test_public_datasets.py RECORDS BATCH [SIDE]` prints the rise (no SIDE: decoded at full size).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from hi_core.data import archives
from hi_core.data.datasets import STOP_EVERY, Cancelled, Problems, check_index, read_dataset, scan_dataset
from hi_core.base.errors import InputError
from hi_core.model.images import ImageLimits
from ui.settings import Settings
from ui.sources import UPLOADED_ZIP, dataset_folder
from ui.storage import MIB, RunStorage, folder_bytes

from .app_api import UNCHANGED, outputs

REPO = Path(__file__).resolve().parents[1]
MAX_RISE_REDUCED_MB = 400  # 16 records of 49 Mpx each, reduced to 256 px while decoding (full size: ~3 GB)

CHILD = r"""
import json, re, sys
from pathlib import Path
from PIL import Image
from hi_core.data.dataset_analysis import DatasetConfig
from hi_core.data.dataset_scoring import score_dataset
from hi_core.model.images import ImageLimits
from hi_core.model.loading import LoadConfig, load_model

def peak_mb():
    with open("/proc/self/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M).group(1)) / 1024

folder, records, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
limits = ImageLimits(max_pixels=50_000_000, max_side=int(sys.argv[4])) if len(sys.argv) > 4 else None
(folder / "images").mkdir(parents=True, exist_ok=True)
big = Image.new("1", (7000, 7000))  # 49 Mpx in 6 KB; the white block is the key object (image and mask alike)
big.paste(1, (2000, 2000, 4000, 4500))
big.save(folder / "images" / "big.png")
del big
with open(folder / "data.jsonl", "w") as index:
    for number in range(records):
        index.write(json.dumps({"id": f"r{number}", "image": "images/big.png", "mask": "images/big.png", "text": "a white block"}) + "\n")
demo = load_model(LoadConfig("demo", device="cpu"))
baseline = peak_mb()
result = score_dataset(demo, folder, DatasetConfig(batch_size=batch, resamples=10, image_limits=limits))
print(json.dumps({"baseline": baseline, "rise": peak_mb() - baseline, "scored": len(result.images),
                  "skipped": [reason for _, _, reason in result.skipped]}))
"""


def _scored_in_child(folder: Path, records: int, batch: int, side: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    arguments = [str(folder), str(records), str(batch), *([str(side)] if side else [])]
    child = subprocess.run([sys.executable, "-c", CHILD, *arguments], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


# --- records decoded within the deployment's limits ------------------------------------------------------


def _big_record_set(folder: Path, records: int, size: tuple[int, int] = (7000, 7000)) -> Path:
    """`records` records pointing at one 1-bit PNG of `size` (a few KB on disk), plus one small good record."""
    (folder / "images").mkdir(parents=True)
    big = Image.new("1", size)
    big.paste(1, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    big.save(folder / "images" / "big.png")
    small = Image.new("L", (64, 48))
    small.paste(255, (10, 10, 30, 30))
    small.save(folder / "images" / "small.png")
    lines = [{"id": "small", "image": "images/small.png", "mask": "images/small.png", "text": "a white block"}]
    lines += [{"id": f"r{n}", "image": "images/big.png", "mask": "images/big.png", "text": "a white block"} for n in range(records)]
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_records_over_the_pixel_cap_are_skipped_naming_the_cap_and_the_file_not_its_path(tmp_path):
    folder = _big_record_set(tmp_path / "set", records=64)
    problems = Problems()
    started = time.perf_counter()
    records = list(read_dataset(folder, problems, limits=ImageLimits(max_pixels=24_000_000, max_side=1536)))
    assert time.perf_counter() - started < 5  # refused from the header: nothing decoded
    assert [record.id for record in records] == ["small"]
    assert len(problems) == 64
    for _, _, reason in problems.skipped:
        assert reason == "image 'images/big.png' is 7000x7000 = 49,000,000 pixels, more than the limit of 24,000,000: downscale it first"
        assert str(tmp_path) not in reason and tempfile.gettempdir() not in reason


def test_records_are_reduced_to_the_side_while_decoding_and_keep_their_mask_aligned(tmp_path):
    folder = _big_record_set(tmp_path / "set", records=1, size=(3000, 2000))
    small, record = read_dataset(folder, limits=ImageLimits(max_side=300))
    assert small.image.size == (64, 48)  # within the side: as it is
    assert record.image.size == (300, 200) and record.mask.shape == (200, 300)
    _, full = read_dataset(folder)  # the library: the file's own pixels
    assert full.image.size == (3000, 2000)
    # the reduced mask is the full one averaged over 10 x 10 cells: the object's rectangle, scaled
    assert record.mask.sum() == full.mask.sum() // 100
    assert record.mask[50:100, 75:150].all() and not record.mask[:50].any()


def test_fine_tune_records_are_read_within_the_same_limits(tmp_path):
    from hi_core.tuning.finetune import DataConfig, split_dataset

    folder = _big_record_set(tmp_path / "set", records=1, size=(3000, 2000))
    split = split_dataset(folder, DataConfig(eval_fraction=0.0), image_limits=ImageLimits(max_side=300))
    assert [record.image.size for record in split.train] == [(64, 48), (300, 200)]
    assert split.train[1:][0].image.size == (300, 200)  # a slice keeps the limits
    assert split_dataset(folder, DataConfig(eval_fraction=0.0)).train[1].image.size == (3000, 2000)  # the library: full size


def test_a_mask_of_another_size_is_refused_from_the_headers_before_reducing(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("RGB", (1000, 800)).save(folder / "image.png")
    Image.new("L", (1000, 801), 255).save(folder / "mask.png")
    (folder / "data.jsonl").write_text(json.dumps({"id": "a", "image": "image.png", "mask": "mask.png", "text": "x"}) + "\n")
    problems = Problems()
    assert not list(read_dataset(folder, problems, limits=ImageLimits(max_side=100)))
    assert problems.skipped[0][2] == "mask is 1000x801 but the image is 1000x800: they must be the same size"


def test_a_batch_of_huge_records_is_scored_in_bounded_memory(tmp_path):
    """16 records of one 7000 x 7000 1-bit PNG in one batch: reduced while decoding, each held at 256 px."""
    result = _scored_in_child(tmp_path / "set", records=16, batch=16, side=256)
    assert result["scored"] == 16 and not result["skipped"]
    assert result["rise"] < MAX_RISE_REDUCED_MB, result


# --- a stop flag while data.jsonl is read and between batches ----------------------------------------------


def test_a_stop_flag_stops_reading_while_the_index_is_scanned(tmp_path):
    (tmp_path / "data.jsonl").write_bytes(b"{}\n" * 5_000)
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2  # the second look: after 2 x STOP_EVERY lines

    with pytest.raises(Cancelled, match=f"at line {2 * STOP_EVERY:,}"):
        list(scan_dataset(tmp_path, stop=stop))
    with pytest.raises(Cancelled, match="stopped before line 1"):  # a reader also looks before each record's files
        list(read_dataset(tmp_path, stop=lambda: True))


def test_a_stop_flag_stops_scoring_between_batches(llava, tmp_path):
    from hi_core.data.dataset_analysis import DatasetConfig
    from hi_core.data.dataset_scoring import score_dataset
    from hi_core.data.datasets import write_synthetic

    folder = write_synthetic(tmp_path / "set", n=6, seed=3, size=64)
    batches = []
    with pytest.raises(Cancelled, match="stopped after 2 of 6 records"):
        score_dataset(llava, folder, DatasetConfig(batch_size=2, resamples=10),
                      progress=lambda done, total: batches.append(done), stop=lambda: len(batches) >= 1)
    assert batches == [2]  # one batch scored, the next one never started


# --- data.jsonl bounded before it is scanned -----------------------------------------------------------


@pytest.fixture(scope="module")
def huge_index(tmp_path_factory) -> Path:
    """A data.jsonl of 5,000,000 short lines (15 MB), written in one go."""
    folder = tmp_path_factory.mktemp("huge-index")
    (folder / "data.jsonl").write_bytes(b"{}\n" * 5_000_000)
    return folder


@pytest.mark.parametrize("limits, message", [
    ({"max_lines": 10_000}, "data.jsonl has 5,000,000 lines; this deployment reads at most 10,000"),
    ({"max_mb": 4}, "data.jsonl is 15.0 MB; this deployment reads at most 4 MB"),
])
def test_a_huge_index_is_refused_before_any_line_is_parsed(huge_index, monkeypatch, limits, message):
    from hi_core.data import datasets

    monkeypatch.setattr(datasets, "_scan_line", lambda *args: pytest.fail("a line was parsed"))
    started = time.perf_counter()
    with pytest.raises(InputError, match=re.escape(message)):
        check_index(huge_index, **limits)
    assert time.perf_counter() - started < 0.5


def test_an_index_within_the_limits_passes(tmp_path):
    (tmp_path / "data.jsonl").write_bytes(b"{}\n" * 10 + b"{}")  # the last line without its newline counts too
    check_index(tmp_path, max_mb=1, max_lines=11)
    with pytest.raises(InputError, match="has 11 lines; this deployment reads at most 10"):
        check_index(tmp_path, max_lines=10)


def test_an_uploaded_zip_with_a_huge_index_is_refused_after_unpacking_before_scanning(tmp_path, monkeypatch):
    from hi_core.data import datasets

    archive = tmp_path / "lines.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("data.jsonl", b"{}\n" * 5_000_000)
    monkeypatch.setattr(datasets, "_scan_line", lambda *args: pytest.fail("a line was parsed"))
    run = tmp_path / "run"
    run.mkdir()
    started = time.perf_counter()
    with pytest.raises(InputError, match="5,000,000 lines; this deployment reads at most 10,000"):
        dataset_folder(UPLOADED_ZIP, str(archive), run, settings=Settings(max_index_lines=10_000))
    assert time.perf_counter() - started < 1


# --- run storage reserved before unpacking, counted while writing ---------------------------------------


def _bomb(archive: Path, megabytes: int = 200) -> Path:
    """A ~0.2 MB zip of zeros that unpacks to `megabytes` MB."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
        bundle.writestr("data.jsonl", b"")
        with bundle.open("images/zeros.bin", "w", force_zip64=True) as member:
            block = bytes(MIB)
            for _ in range(megabytes):
                member.write(block)
    return archive


def _lying_bomb(archive: Path, megabytes: int = 40, claimed: int = 1000) -> Path:
    """A zip whose headers claim its member unpacks to `claimed` bytes; it unpacks to `megabytes` MB."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("data.jsonl", b"")
        bundle.writestr("images/zeros.bin", bytes(megabytes * MIB))
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # central directory and local header: sizes
        start = data.rfind(signature)
        data[start + offset:start + offset + 4] = claimed.to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as check:
        assert check.getinfo("images/zeros.bin").file_size == claimed
    return archive


class DiskWatch:
    """The most bytes ever seen under `root`, polled every few milliseconds while the block runs."""

    def __init__(self, root: Path) -> None:
        self.root, self.peak, self._done = root, 0, threading.Event()

    def _poll(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, folder_bytes(self.root))
            time.sleep(0.002)

    def __enter__(self) -> DiskWatch:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.root))


def test_zip_bombs_never_take_the_run_storage_over_its_cap(tmp_path):
    cap_mb = 4
    storage = RunStorage(tmp_path / "runs", max_mb=cap_mb)
    bomb = _bomb(tmp_path / "bomb.zip")
    bombs = [bomb, bomb, bomb, _lying_bomb(tmp_path / "liar.zip")]  # three uploads of it, one after another
    assert all(bomb.stat().st_size < MIB for bomb in bombs)
    messages = []
    with DiskWatch(storage.root) as watch:
        for bomb in bombs:
            with storage.run() as run_folder:
                with pytest.raises(InputError) as refused:
                    dataset_folder(UPLOADED_ZIP, str(bomb), run_folder, storage=storage)
                messages.append(str(refused.value))
                assert folder_bytes(storage.root) <= cap_mb * MIB  # after each upload, too
    assert watch.peak <= cap_mb * MIB, watch.peak
    assert all("the upload unpacks to 200.0 MiB, more than the 4.0 MiB of this server's run storage (4 MiB) free now" in message
               for message in messages[:3])
    assert "not a readable zip file (Bad CRC-32" in messages[3]  # written no further than the headers claim
    assert not any(storage.root.glob("run-*/dataset"))  # a refused archive leaves nothing


def test_a_run_in_progress_counts_and_finished_runs_make_way(tmp_path):
    storage = RunStorage(tmp_path / "runs", max_mb=2)
    with storage.run() as old:
        (old / "adapter.bin").write_bytes(bytes(MIB))  # a finished run of 1 MiB
    with storage.run() as busy:
        storage.reserve(busy, 3 * MIB // 2)  # another session unpacking 1.5 MiB: the finished run makes way
        assert not old.exists()
        with storage.run() as mine:
            with pytest.raises(InputError, match=r"unpacks to 1\.0 MiB, more than the 0\.5 MiB"):
                storage.reserve(mine, MIB)  # what the run in progress reserved is not free, though not yet written
            storage.reserve(mine, MIB // 2)


# --- odd zips: one message each -------------------------------------------------------------------------


def _zip_with(archive: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as it is
    return archive


@pytest.mark.parametrize("members, message", [
    ({"x": b"a", "x/y": b"b"}, "the zip holds 'x' both as a file and as a folder"),
    ({"x/y": b"b", "x": b"a"}, "the zip holds 'x' both as a file and as a folder"),
    ({"data.jsonl": b"", "a" * 300 + ".png": b"b"}, "the zip holds a name of 304 characters"),
    ({"data.jsonl": b"", ".": b"a"}, "the zip holds a member named '.', which names no file or folder"),
    ({"data.jsonl": b"", "./": b""}, "the zip holds a member named './', which names no file or folder"),
    ({}, "the zip is empty"),
    ({"__MACOSX/": b""}, "the zip is empty"),
])
def test_an_odd_zip_is_one_message_and_leaves_nothing(tmp_path, members, message):
    into = tmp_path / "into"
    with pytest.raises(InputError, match=re.escape(message)):
        archives.extract_dataset_zip(_zip_with(tmp_path / "odd.zip", members), into)
    assert not into.exists() or not any(into.rglob("*"))


def test_a_damaged_member_is_one_message(tmp_path):
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("data.jsonl", b"{}\n" * 1000)
    data = bytearray(archive.read_bytes())
    start = data.find(b"PK\x03\x04") + 30 + len("data.jsonl")
    data[start:start + 8] = b"\xff" * 8  # the deflate stream itself
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a readable zip file"):
        archives.extract_dataset_zip(archive, tmp_path / "into")
    assert not (tmp_path / "into").exists()


# --- the same through the app: every message in the page, Cancel, no server path -----------------------------


@pytest.fixture(scope="module")
def server():
    from ui.app import build_demo, launch_options
    from hi_core.model.model_cache import ModelCache

    settings = Settings(max_image_pixels=24_000_000, max_image_side=256, max_index_lines=2_000, max_run_storage_mb=8)
    demo = build_demo("demo", ModelCache(), settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def _submit(client, archive: Path | None, batch_size: int = 4):
    return client.submit(model_name="demo", device="cpu", source="zip" if archive else "demo",
                         archive=handle_file(str(archive)) if archive else None, batch_size=batch_size, limit=0,
                         api_name="/score_dataset")


def _scored(client, archive: Path | None, batch_size: int = 4) -> dict:
    return outputs(client, "/score_dataset", _submit(client, archive, batch_size).result(timeout=120))


def _run_folders() -> set[Path]:
    from ui.context import UNPACKED

    return set(UNPACKED.glob("run-*"))


def _demo_zip(archive: Path, extra_records: list[dict] = (), extra_files: dict[str, bytes] | None = None, copies: int = 1) -> Path:
    """The demo set as an uploaded zip: its records `copies` times (with new ids), then `extra_records`."""
    from ui.context import EXAMPLES_DIR

    lines = [json.loads(line) for line in (EXAMPLES_DIR / "data.jsonl").read_text().splitlines() if line.strip()]
    lines = [line | {"id": f"{line['id']}-{copy}"} for copy in range(copies) for line in lines] + list(extra_records)
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
        for name in sorted({line[key] for line in lines for key in ("image", "mask")}):
            if (EXAMPLES_DIR / name).is_file():
                bundle.write(EXAMPLES_DIR / name, name)
        for name, data in (extra_files or {}).items():
            bundle.writestr(name, data)
    return archive


def _big_png() -> bytes:
    big = Image.new("1", (7000, 7000))
    big.paste(1, (100, 100, 3000, 3000))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return buffer.getvalue()


def test_skipped_records_name_their_files_never_a_server_path_in_the_page_or_the_json(server, tmp_path):
    client = Client(server, verbose=False)
    archive = _demo_zip(tmp_path / "scenes.zip", extra_records=[
        {"id": "lost", "image": "images/synth-2026-00000.png", "mask": "masks/lost.png", "text": "a thing"},
        {"id": "huge", "image": "images/big.png", "mask": "images/big.png", "text": "a thing"},
    ], extra_files={"images/big.png": _big_png()})
    shown = _scored(client, archive)
    skipped = shown["ds-skipped"]
    assert "line 9 (lost): mask file 'masks/lost.png' does not exist" in skipped
    assert "line 10 (huge): image 'images/big.png' is 7000x7000 = 49,000,000 pixels, more than the limit of 24,000,000" in skipped
    scores_file = next(path for path in shown["ds-downloads"] if path.endswith(".json"))
    scores = json.loads(Path(scores_file).read_text())
    assert [entry["reason"] for entry in scores["skipped"]] == [reason.split(": ", 1)[1] for reason in skipped.splitlines()[1:]]
    server_root = tempfile.gettempdir()  # the app's run folders and Gradio's cache lie below it
    for text in (shown["ds-summary"], shown["ds-skipped"], shown["ds-message"], json.dumps(scores)):
        assert server_root not in text and "/run-" not in text


def test_cancel_stops_scoring_keeps_nothing_and_the_page_keeps_serving(server, tmp_path):
    client = Client(server, verbose=False)
    archive = _demo_zip(tmp_path / "many.zip", copies=200)  # 1,600 records, one per batch: minutes if not stopped
    before = _run_folders()
    job = _submit(client, archive, batch_size=1)
    started = time.monotonic()
    while not job.done():  # until the handler has started (a cancel before it is only a warning)
        client.predict(api_name="/cancel_dataset")
        time.sleep(0.3)
        assert time.monotonic() - started < 60
    shown = outputs(client, "/score_dataset", job.result(timeout=10))
    assert "Scoring cancelled" in shown["ds-message"] and shown["ds-summary"] == UNCHANGED
    assert _run_folders() <= before  # nothing of the cancelled run is kept
    assert _scored(client, None)["ds-summary"].startswith("**8 images scored**")  # and it keeps serving


@pytest.mark.parametrize("members, message", [
    ({"x": b"a", "x/y": b"b"}, "the zip holds 'x' both as a file and as a folder"),
    ({"data.jsonl": b"", "a" * 300: b"b"}, "the zip holds a name of 300 characters"),
    ({"data.jsonl": b"", ".": b"a"}, "names no file or folder"),
    ({}, "the zip is empty"),
    ({"data.jsonl": b"{}\n" * 3_000}, "data.jsonl has 3,000 lines; this deployment reads at most 2,000"),
])
def test_an_odd_upload_is_one_message_in_the_page_and_leaves_no_files(server, tmp_path, members, message):
    client = Client(server, verbose=False)
    before = _run_folders()
    shown = _scored(client, _zip_with(tmp_path / "odd.zip", members))
    assert message in shown["ds-message"] and shown["ds-summary"] == UNCHANGED
    assert _run_folders() <= before


def test_zip_bombs_uploaded_through_the_page_are_refused_before_writing(server, tmp_path):
    from ui.context import UNPACKED

    client = Client(server, verbose=False)
    bomb = _bomb(tmp_path / "bomb.zip")
    with DiskWatch(UNPACKED) as watch:
        for _ in range(3):
            shown = _scored(client, bomb)
            assert "the upload unpacks to 200.0 MiB" in shown["ds-message"]
            assert folder_bytes(UNPACKED) <= 8 * MIB
    assert watch.peak <= 8 * MIB


if __name__ == "__main__":  # docs/hosting.md's measurement: RECORDS BATCH [SIDE]
    with tempfile.TemporaryDirectory() as scratch:
        side = int(sys.argv[3]) if len(sys.argv) > 3 else None
        print(_scored_in_child(Path(scratch) / "set", int(sys.argv[1]), int(sys.argv[2]), side))
