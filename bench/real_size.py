"""The released models at their true size on CPU: load time, one analysis of a 1024 x 768 photo (cold,
then warm) and peak memory, per model, dtype and thread count.

Models: `smolvlm-256m` (SmolVLM-256M-Instruct: 30 layers x 9 heads, 256M parameters) and `qwen2-vl-2b`
(Qwen2-VL-2B-Instruct: 28 x 12, 2.2B), built by `tests/real_models.py` from the published configs with
seeded random weights (bfloat16 safetensors, as published) and a stand-in tokenizer that keeps the real
special-token ids, so the processors make the released models' token layouts (SmolVLM: 12 tiles + the
global view, 832 image tokens; Qwen2-VL: a 27 x 37 grid, 999 image tokens). Each folder is built once into
~/.cache/hi-explorer/real-size (in a subprocess; not timed).

Each configuration (model x dtype x threads) runs in a fresh subprocess, so its peak memory is its own:
`torch.set_num_threads(threads)`, then, timed with `time.perf_counter()` (wall clock):
  load         hi_core.loading.load_model (folder on local disk, page cache warm after the first run)
  analyze 1st  hi_core.analysis.analyze_image on a seeded synthetic photo (1024 x 768, a red ball on a
               textured ground under a sky) with the ball's mask and a fixed text (`--text`)
  analyze warm the same call again
and the child's peak resident memory, `resource.getrusage(RUSAGE_SELF).ru_maxrss` (whole process: imports,
load, both analyses). The parent imports neither torch nor the models, so the child's ru_maxrss, which
Linux carries over from the parent at fork, is its own; the child's VmHWM is printed beside it as a check.
One markdown table row per configuration, printed as it finishes.

    python bench/real_size.py --models smolvlm-256m --dtype float32 --threads 2   # ~1.5 min on 2 cores
    python bench/real_size.py                       # every model x float32, bfloat16 x 1, 2 threads

Options: --models, --dtype, --threads (each a list: the configurations are their product), --text,
--timeout (seconds per configuration), --cache-dir (the built folders' root). Columns still to come
(`EXTRA_MEASUREMENTS`): one Analyze through the app's handler, and a dataset of 8 images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = ("smolvlm-256m", "qwen2-vl-2b")
DTYPES = ("float32", "bfloat16")
TEXT = "A red ball on the grass."
WIDTH, HEIGHT = 1024, 768
RESULT = "RESULT "  # the child's last line: RESULT + JSON


# --- in the child ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """What a measurement of one configuration gets: the loaded model, the photo, its mask, the text."""

    loaded: Any
    image: Any
    mask: Any
    text: str
    threads: int


def photo(seed: int = 0):
    """A seeded photo-like 1024 x 768 RGB image, a red ball on textured grass under a sky, and the ball's mask."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    texture = sum(np.asarray(Image.fromarray(rng.normal(0, 1, (HEIGHT // s, WIDTH // s)).astype(np.float32))
                             .resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)) * (s / 32) for s in (4, 16, 64))
    horizon = HEIGHT * 0.4 + 20 * np.sin(x / 90)
    sky = np.stack([110 + 60 * y / HEIGHT, 160 + 40 * y / HEIGHT, 235 - 10 * y / HEIGHT], axis=-1)
    grass = np.stack([60 + 0 * y, 120 + 40 * (y - horizon) / HEIGHT, 40 + 0 * y], axis=-1)
    pixels = np.where((y < horizon)[..., None], sky, grass) + 25 * texture[..., None]
    cy, cx, ry, rx = 0.62 * HEIGHT, 0.45 * WIDTH, 130, 150
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    mask = inside <= 1.0
    shade = np.clip(1.1 - 0.6 * np.sqrt(np.clip(((y - cy + 50) / ry) ** 2 + ((x - cx + 50) / rx) ** 2, 0, None)), 0.3, 1.1)
    ball = np.stack([220 * shade, 30 * shade, 35 * shade], axis=-1) + 8 * texture[..., None]
    pixels = np.where(mask[..., None], ball, pixels)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), mask


def app_handler_seconds(run: Run) -> float:
    """Planned column "app handler s": one Analyze through the app's handler (`ui.explorer.ExplorerTab.analyze`,
    called as Gradio calls it, as bench/analysis.py does) with `run.loaded` in the app's model cache and an
    editor value made of `run.image` and `run.mask`. Not implemented: register it in EXTRA_MEASUREMENTS when it is."""
    raise NotImplementedError("the app-handler column is not implemented yet")


def dataset_seconds(run: Run) -> float:
    """Planned column "dataset of 8 s": a dataset run over 8 images of this size (`hi_core.dataset_scoring`),
    model loaded. Not implemented: register it in EXTRA_MEASUREMENTS when it is."""
    raise NotImplementedError("the dataset column is not implemented yet")


#: Further columns: name -> function of the loaded Run returning seconds, called after the warm analysis,
#: in this order. E.g. {"app handler s": app_handler_seconds, "dataset of 8 s": dataset_seconds}.
EXTRA_MEASUREMENTS: dict[str, Callable[[Run], float]] = {}


def _vm_hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def child(settings: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this fresh process: load, analyze twice, extra measurements, peak memory."""
    import resource

    import torch
    import transformers

    torch.set_num_threads(settings["threads"])
    from hi_core.analysis import analyze_image
    from hi_core.loading import LoadConfig, load_model

    image, mask = photo()
    started = time.perf_counter()
    loaded = load_model(LoadConfig(model=settings["folder"], device="cpu", dtype=settings["dtype"]))
    load_s = time.perf_counter() - started
    seen: dict[str, int] = {}  # the sequence the model's forward gets (a hook: microseconds)

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            seen.update(tokens=int(input_ids.shape[-1]), image_tokens=int((input_ids == image_token).sum()))

    image_token = int(loaded.model.config.image_token_id)
    hook = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        analysis = analyze_image(loaded, image, mask, settings["text"])
        times.append(time.perf_counter() - started)
    hook.remove()
    run = Run(loaded=loaded, image=image, mask=mask, text=settings["text"], threads=settings["threads"])
    extras = {name: measure(run) for name, measure in EXTRA_MEASUREMENTS.items()}
    peak_mib, vm_hwm_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _vm_hwm_mib()
    return {
        "load_s": load_s, "analyze_s": times[0], "warm_s": times[1], "extras": extras,
        "peak_mib": peak_mib, "vm_hwm_mib": vm_hwm_mib,
        "tokens": seen.get("tokens", -1), "image_tokens": seen.get("image_tokens", -1),
        "grid": list(analysis.grid), "heads": list(analysis.hi.shape), "best_hi": float(analysis.hi.max()),
        "chance": float(analysis.chance), "threads": torch.get_num_threads(),
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
    }


# --- in the parent -----------------------------------------------------------------------------------------

def build(name: str, cache_dir: str | None) -> Path:
    """The model's cached folder, built (once) in a subprocess so this process stays small."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from tests.real_models import build_real_model; "
            "print(build_real_model(sys.argv[2], Path(sys.argv[3]) if sys.argv[3] else None))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), name, cache_dir or ""], capture_output=True,
                          text=True, env=_child_env())
    if done.returncode:
        raise SystemExit(f"building {name} failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _child_env() -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


def measure(settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one configuration in a fresh subprocess; its result, or {"error": ...}."""
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings)], capture_output=True,
                              text=True, env=_child_env(), timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last[:200]}"}
    return json.loads(lines[-1][len(RESULT):])


def machine() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    memory = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) / 1024**2
    return f"{names[0] if names else 'CPU'}, {len(os.sched_getaffinity(0))} cores, {memory:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--text", default=TEXT, help="the description analyzed")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration before it is marked failed")
    parser.add_argument("--cache-dir", default=None, help="root of the built folders (default: ~/.cache/hi-explorer/real-size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))  # hi_core from this checkout
        print(RESULT + json.dumps(child(json.loads(args.child))), flush=True)
        return

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}; text {args.text!r}; image {WIDTH} x {HEIGHT}")
    folders = {name: build(name, args.cache_dir) for name in args.models}
    columns = ["model", "dtype", "threads", "load s", "analyze 1st s", "analyze warm s", *EXTRA_MEASUREMENTS,
               "peak RSS MiB", "tokens (image)", "grid", "layers x heads"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    versions = None
    for name in args.models:
        for dtype in args.dtype:
            for threads in args.threads:
                settings = {"folder": str(folders[name]), "dtype": dtype, "threads": threads, "text": args.text}
                result = measure(settings, args.timeout)
                head = [name, dtype, str(threads)]
                if "error" in result:
                    print("| " + " | ".join(head + [f"failed: {result['error']}"] + [""] * (len(columns) - 4)) + " |", flush=True)
                    continue
                versions = result["versions"]
                extras = [f"{result['extras'][key]:.2f}" for key in EXTRA_MEASUREMENTS]
                cells = head + [f"{result['load_s']:.2f}", f"{result['analyze_s']:.2f}", f"{result['warm_s']:.2f}", *extras,
                                f"{result['peak_mib']:.0f}", f"{result['tokens']} ({result['image_tokens']})",
                                "x".join(map(str, result["grid"])), "x".join(map(str, result["heads"]))]
                print("| " + " | ".join(cells) + " |", flush=True)
                if abs(result["peak_mib"] - result["vm_hwm_mib"]) > 64:
                    print(f"  (ru_maxrss {result['peak_mib']:.0f} MiB differs from the child's VmHWM "
                          f"{result['vm_hwm_mib']:.0f} MiB)", flush=True)
    print(f"\n{versions or ''}; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
