"""The explorer's memory against the size of the upload: one server process, analyses through its API.

Serves `python app.py` (the demo model, public settings unless --local) in a subprocess and sends, in
turn, a 96-px example, a 4000 x 4000 photo, an 8000 x 6000 photo and a 17.6 KB 1-bit PNG of
12000 x 12000 px to /analyze with a mask of each image's size. After each it reads the server's peak
(VmHWM) and current (VmRSS) resident memory from /proc, and prints them next to the first analysis's:
with the bounds in place the peak should not grow with the upload's pixel count.

    python bench/app_memory.py [--local]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "hi_core" / "assets" / "examples"


def _memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def _photo(path: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)


def _mask(path: Path, width: int, height: int) -> None:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 255
    Image.fromarray(mask).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="the local settings (no public limits)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-app-memory-"))
    record = json.loads((EXAMPLES / "data.jsonl").read_text().splitlines()[0])
    cases = [("example 96x96", EXAMPLES / record["image"], EXAMPLES / record["mask"])]
    for name, (width, height) in (("photo 4000x4000", (4000, 4000)), ("photo 8000x6000", (8000, 6000))):
        image, mask = folder / f"{width}.jpg", folder / f"{width}-mask.png"
        _photo(image, width, height)
        _mask(mask, width, height)
        cases.append((name, image, mask))
    Image.new("1", (12000, 12000)).save(folder / "huge.png")
    _mask(folder / "huge-mask.png", 96, 96)
    cases.append(("1-bit PNG 12000x12000", folder / "huge.png", folder / "huge-mask.png"))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "app.py"] + ([] if args.local else ["--public"])
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = None
        for _ in range(240):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        if client is None:
            raise SystemExit("the app did not start")
        print(f"settings: {'local' if args.local else 'public'}; server at start: peak {_memory_mb(server.pid)[0]:.0f} MB")
        print(f"{'upload':<24} {'file KB':>8} {'peak MB':>8} {'now MB':>8} {'peak / first':>13}  result")
        first = None
        for name, image, mask in cases:
            editor = {"background": handle_file(str(image)), "layers": [], "composite": handle_file(str(image))}
            try:
                outputs = client.predict("demo", "cpu", editor, handle_file(str(mask)), "a shape", False, "",
                                         "Describe the image.", "producing", "area", 0.9, "max", 8, 0, 4, "", api_name="/analyze")
                result = outputs[1].split("**Best head:**")[-1].strip()[:40]
            except Exception as error:  # a refusal is a result too
                result = f"refused: {str(error)[:70]}"
            peak, now = _memory_mb(server.pid)
            first = first or peak
            print(f"{name:<24} {image.stat().st_size / 1024:>8.0f} {peak:>8.0f} {now:>8.0f} {peak / first:>12.2f}x  {result}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
