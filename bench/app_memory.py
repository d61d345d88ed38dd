"""What a visitor can make the explorer's server hold: memory, disk and time, one hostile case at a time.

Serves `python app.py` (the demo model, public settings unless --local) in a subprocess whose temporary
folder is the bench's own (so the run storage and Gradio's upload cache are measured alone), and sends,
through its API, in turn:

- images to /analyze: a 96-px example, a 4000 x 4000 photo, an 8000 x 6000 photo, a 17.6 KB 1-bit PNG of
  12000 x 12000 px (the peak should not grow with the upload's pixel count);
- the editor's value with 300 brush layers (one 3 KB PNG each);
- a 20 MB description, a 20 MB key phrase, a 5 MB prompt;
- to /score_dataset: a zip of 64 records that all point at one 7000 x 7000 1-bit PNG (batch 16), a zip whose
  data.jsonl has 5 million lines, and three 1 MB zip bombs that unpack to ~1000 MB each;
- 60 API sessions, each one analysis with its per-token maps;
- 20 uploads of 49 MB each to Gradio's upload route.

After each it reads the server's peak (VmHWM) and current (VmRSS) resident memory from /proc, the bytes on
disk under the run storage and the upload cache, and the case's wall time, and prints them with what the
server answered (its first words).

    python bench/app_memory.py [--local] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "hi_core" / "assets" / "examples"
MB = 1024 * 1024


def _memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def _reset_peak(pid: int) -> None:
    """Start the process's peak resident memory (VmHWM) again from its current value (Linux's clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class DiskPeak:
    """The most bytes seen under a folder while a case runs, sampled every 0.2 s in a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _disk_mb(self.folder))

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _disk_mb(self.folder))


def _disk_mb(folder: Path) -> float:
    if not folder.exists():
        return 0.0
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total / MB


def _photo(path: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)


def _mask(path: Path, width: int, height: int) -> None:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 255
    Image.fromarray(mask).save(path)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Bench:
    """The served app, its client and the files the cases send."""

    def __init__(self, local: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-app-memory-"))
        self.server_tmp = self.folder / "server-tmp"
        self.server_tmp.mkdir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = os.environ | {"GRADIO_SERVER_PORT": str(self.port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                            "TMPDIR": str(self.server_tmp), "GRADIO_TEMP_DIR": str(self.server_tmp / "gradio")}
        command = [sys.executable, "app.py"] + ([] if local else ["--public"])
        self.server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.client = self.connect()
        self.example = EXAMPLES / json.loads((EXAMPLES / "data.jsonl").read_text().splitlines()[0])["image"]
        self.small_mask = self.folder / "mask96.png"
        _mask(self.small_mask, 96, 96)

    def connect(self) -> Client:
        for _ in range(240):
            try:
                return Client(self.url, verbose=False)
            except Exception:
                time.sleep(0.5)
        raise SystemExit("the app did not start")

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def analyze(self, image: Path, mask: Path, client: Client | None = None, layers: list | None = None, **text) -> str:
        editor = {"background": handle_file(str(image)), "layers": layers or [], "composite": handle_file(str(image))}
        inputs = {"text": "a shape", "key_phrase": "", "prompt": "Describe the image.", **text}
        outputs = (client or self.client).predict(model_name="demo", device="cpu", editor=editor,
                                                  uploaded_mask=handle_file(str(mask)), api_name="/analyze", **inputs)
        return _said(outputs)

    def score_dataset(self, archive: Path, batch_size: int = 16) -> str:
        outputs = self.client.predict(model_name="demo", device="cpu", source="zip", archive=handle_file(str(archive)),
                                      batch_size=batch_size, api_name="/score_dataset")
        return _said(outputs)

    # --- the cases ------------------------------------------------------------------------------------------

    def images(self) -> list[tuple[str, Callable[[], str]]]:
        cases = [("example 96x96", lambda: self.analyze(self.example, self.small_mask))]
        for name, (width, height) in (("photo 4000x4000", (4000, 4000)), ("photo 8000x6000", (8000, 6000))):
            image, mask = self.folder / f"{width}.jpg", self.folder / f"{width}-mask.png"
            _photo(image, width, height)
            _mask(mask, width, height)
            cases.append((name, lambda image=image, mask=mask: self.analyze(image, mask)))
        Image.new("1", (12000, 12000)).save(self.folder / "huge.png")
        cases.append(("1-bit PNG 12000x12000", lambda: self.analyze(self.folder / "huge.png", self.small_mask)))
        return cases

    def editor_layers(self) -> list[tuple[str, Callable[[], str]]]:
        layer = self.folder / "layer.png"
        Image.new("RGBA", (96, 96)).save(layer)
        layers = [handle_file(str(layer)) for _ in range(300)]
        return [("300 editor layers", lambda: self.analyze(self.example, self.small_mask, layers=layers))]

    def texts(self) -> list[tuple[str, Callable[[], str]]]:
        long = "a red square " * (20 * MB // 13)
        return [
            ("20 MB description", lambda: self.analyze(self.example, self.small_mask, text=long)),
            ("20 MB key phrase", lambda: self.analyze(self.example, self.small_mask, key_phrase=long)),
            ("5 MB prompt", lambda: self.analyze(self.example, self.small_mask, prompt=long[: 5 * MB])),
        ]

    def datasets(self) -> list[tuple[str, Callable[[], str]]]:
        big = _png(Image.new("1", (7000, 7000)))
        square = Image.new("1", (7000, 7000))
        square.paste(1, (2000, 2000, 5000, 5000))
        mask = _png(square)
        lines = "".join(json.dumps({"id": f"r{i}", "image": "big.png", "mask": "mask.png", "text": "a shape"}) + "\n"
                        for i in range(64))
        big_records = _zip(self.folder / "big-records.zip", {"data.jsonl": lines.encode(), "big.png": big, "mask.png": mask})
        many_lines = _zip(self.folder / "many-lines.zip", {"data.jsonl": b"\n" * 5_000_000})
        bomb = self.folder / "bomb.zip"
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
            bundle.writestr("data.jsonl", b"")
            for i in range(10):
                bundle.writestr(f"zeros-{i}.bin", bytes(100 * MB))
        return [
            ("dataset: 64 x 7000^2 PNG", lambda: self.score_dataset(big_records)),
            ("dataset: 5 M-line jsonl", lambda: self.score_dataset(many_lines)),
            *((f"zip bomb {i + 1} of 3", lambda: self.score_dataset(bomb)) for i in range(3)),
        ]

    def sessions(self) -> list[tuple[str, Callable[[], str]]]:
        def sixty() -> str:
            said = ""
            for _ in range(60):
                said = self.analyze(self.example, self.small_mask, client=Client(self.url, verbose=False))
            return said
        return [("60 API sessions", sixty)]

    def uploads(self) -> list[tuple[str, Callable[[], str]]]:
        data = os.urandom(49 * MB)

        def twenty() -> str:
            for i in range(20):
                response = httpx.post(self.client.upload_url, files=[("files", (f"u{i}.bin", data))], timeout=120)
            return f"HTTP {response.status_code}"
        return [("20 uploads of 49 MB", twenty)]


def _said(outputs: object) -> str:
    """The first words of what the page would show (the summary, or the message beside the button)."""
    texts = [re.sub(r"<[^>]+>", " ", value) for value in (outputs if isinstance(outputs, (list, tuple)) else [outputs])
             if isinstance(value, str)]
    words = [text for text in texts if text.strip() and not text.startswith(("/", "{"))]
    return " ".join((words[0] if words else "").split())[:70]


GROUPS = ("images", "editor_layers", "texts", "datasets", "sessions", "uploads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="the local settings (no public limits)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="the groups of cases to run")
    args = parser.parse_args()
    bench = Bench(args.local)
    try:
        print(f"settings: {'local' if args.local else 'public'}; server at start: peak {_memory_mb(bench.server.pid)[0]:.0f} MB")
        print("peak: the server's resident memory at its highest during the case (reset before each); runs / cache: the "
              "most MB seen on disk during the case under the run storage / Gradio's upload cache")
        print(f"{'case':<26} {'s':>6} {'peak MB':>8} {'now MB':>8} {'runs MB':>8} {'cache MB':>9}  answer")
        for group in args.only:
            for name, case in getattr(bench, group)():
                _reset_peak(bench.server.pid)
                start = time.perf_counter()
                with DiskPeak(bench.server_tmp / "hi-explorer-datasets") as runs, DiskPeak(bench.server_tmp / "gradio") as cache:
                    try:
                        said = case()
                    except Exception as error:  # a refusal is a result too
                        said = f"error: {' '.join(str(error).split())[:64]}"
                seconds = time.perf_counter() - start
                peak, now = _memory_mb(bench.server.pid)
                print(f"{name:<26} {seconds:>6.1f} {peak:>8.0f} {now:>8.0f} {runs.peak:>8.0f} {cache.peak:>9.0f}  {said}", flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
