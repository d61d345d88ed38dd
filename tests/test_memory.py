"""Peak memory is bounded by the pixel cap: huge images are refused from their header, the rest analyzed.

Each case runs in a child process that loads the demo model, notes its peak resident memory
(`VmHWM` of /proc/self/status, the high-water mark of this program's memory, which starts anew at
exec; `ru_maxrss` does not: it keeps the forking pytest process's size, so it read 1.5 GB before
the child had loaded anything), then reads and analyzes the images and reports how far the peak rose.
The processor gets the model's own pixels (no reduction before it, DESIGN 1.2), so an image under the
cap costs what the processor makes of it at full size. Measured on this machine (torch 2.13 CPU, the
96-px demo model, 2026-12-07): 427 MB after loading; the refused 12000 x 12000 1-bit PNG +0 MB; an
8000 x 6000 photo-like JPEG read, analyzed and given to GrabCut +873 MB (decoding it ~180 MB; the
processor's image and mask pipelines ~275 MB each at their peak, by tracemalloc); then a 7000 x 7000
1-bit PNG (just under the 50 Mpx cap) read and analyzed: high-water +915 MB. (With images reduced to
twice the model's view before the processor, as before, the photo cost +387 MB: that reduction changed
the maps by up to 1.4e-2.) Before the cap, the 12000 x 12000 PNG took the server to 22 GB. A public
server's cap is 24 Mpx, half of these. The limits below leave a margin over the measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MAX_RISE_REFUSED_MB = 100  # refusing reads only the header
MAX_RISE_MB = 1100  # any image under the cap: decoded once, then the processor's pipeline at full size
MAX_PEAK_MB = 1700  # the whole process, model included

CHILD = r"""
import json, re, sys
import numpy as np
from hi_core.method.analysis import analyze_image
from hi_core.base.errors import InputError
from hi_core.model.loading import LoadConfig, load_model
from hi_core.method.masks import check_mask, grabcut_mask
from hi_core.model.images import load_image, load_mask

def peak_mb():
    with open("/proc/self/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M).group(1)) / 1024

folder = sys.argv[1]
demo = load_model(LoadConfig("demo", device="cpu"))
result = {"baseline": peak_mb(), "refused": []}
for read in (load_image, load_mask):
    try:
        read(f"{folder}/huge.png")
    except InputError as error:
        result["refused"].append(str(error))
result["after_refused"] = peak_mb()
image = load_image(f"{folder}/photo.jpg")
mask = check_mask(load_mask(f"{folder}/photo_mask.png"), image)
result["photo_hi"] = float(analyze_image(demo, image, mask, "a red circle").hi.max())
result["grabcut_share"] = float(grabcut_mask(image, mask).mean())
del image, mask
result["after_photo"] = peak_mb()
image, mask = load_image(f"{folder}/binary.png"), load_mask(f"{folder}/binary.png")
result["binary_hi"] = float(analyze_image(demo, image, mask, "a red circle").hi.max())
result["after_binary"] = peak_mb()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def huge_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("huge")
    Image.new("1", (12000, 12000)).save(folder / "huge.png")  # 17.6 KB, 144 Mpx
    width, height = 8000, 6000  # 48 Mpx: a gradient with noise, a photo's worth of JPEG entropy
    rng = np.random.default_rng(0)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.float32).astype(np.uint8)[:, None]
    pixels[..., 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.jpg", quality=90)
    del pixels
    mask = Image.new("L", (width, height))
    mask.paste(255, (3000, 2000, 5500, 4000))
    mask.save(folder / "photo_mask.png")
    binary = Image.new("1", (7000, 7000))  # 49 Mpx, just under the cap; the object is the white block
    binary.paste(1, (2000, 2000, 4000, 4500))
    binary.save(folder / "binary.png")
    return folder


def test_huge_images_are_refused_or_analyzed_in_bounded_memory(huge_images):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(huge_images)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(result["refused"]) == 2
    assert all("12000x12000 = 144,000,000 pixels, more than the limit of 50,000,000" in line for line in result["refused"])
    assert result["after_refused"] - result["baseline"] < MAX_RISE_REFUSED_MB, result
    assert result["after_photo"] - result["baseline"] < MAX_RISE_MB, result
    assert result["after_binary"] - result["baseline"] < MAX_RISE_MB, result
    assert result["after_binary"] < MAX_PEAK_MB, result
    assert 0.0 <= result["photo_hi"] <= 1.0 and 0.0 <= result["binary_hi"] <= 1.0
    assert 0.0 < result["grabcut_share"] < 1.0
