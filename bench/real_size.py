"""The released models at their true size on CPU: load time, one analysis of a 1024 x 768 photo (cold,
then warm) and peak memory, per model, dtype and thread count.

Models: `smolvlm-256m` (SmolVLM-256M-Instruct: 30 layers x 9 heads, 256M parameters) and `qwen2-vl-2b`
(Qwen2-VL-2B-Instruct: 28 x 12, 2.2B), built by `tests/real_models.py` from the published configs with
seeded random weights (bfloat16 safetensors, as published) and a stand-in tokenizer that keeps the real
special-token ids, so the processors make the released models' token layouts (SmolVLM: 12 tiles + the
global view, 832 image tokens; Qwen2-VL: a 27 x 37 grid, 999 image tokens). Each folder is built once into
~/.cache/hi-explorer/real-size (in a subprocess; not timed).

Each configuration (model x dtype x threads x view budget) runs in a fresh subprocess, so its peak memory is
its own: `torch.set_num_threads(threads)`, then, timed with `time.perf_counter()` (wall clock):
  load         hi_core.model.loading.load_model (folder on local disk, page cache warm after the first run), with
               `LoadConfig.max_view_pixels` = the view budget (`none`: the processor's own sizes)
  analyze 1st  hi_core.method.analysis.analyze_image on a seeded synthetic photo (1024 x 768, a red ball on a
               textured ground under a sky) with the ball's mask and a fixed text (`--text`)
  analyze warm the same call again, broken down by forward hooks into the vision tower (Idefics3/SmolVLM:
               `model.model.vision_model`; Qwen2-VL: `model.model.visual`), the language model (the module
               holding `adapter.decoder_layers`: `text_model`, `language_model`) and the rest (processor,
               mask grid, connector, capture's own work, scoring), each the sum over its calls
  app handler  one Analyze through the app's handler, `ui.explorer.ExplorerTab.analyze` (a tab built in a
               Blocks that is never served, as bench/analysis.py does; editor = the photo with the mask as a
               brush layer), the loaded model already in the app's model cache: the same analysis with the
               per-token maps, then the five figures, the JSON and CSV; one call, so it includes the first
               drawing's warm-up (fonts, colour maps); `handler / warm` is its ratio to `analyze warm`
  dataset of 8 hi_core.data.dataset_scoring.score_dataset over a folder of 8 photos of the same kind (seeds 0-7,
               written with hi_core.data.datasets.write_generated, not timed), DatasetConfig() (batches of 8)
and the child's peak resident memory, `resource.getrusage(RUSAGE_SELF).ru_maxrss` (whole process: imports,
load, ...), read after the two analyses, after the handler and after the dataset (`peak RSS MiB`: the three,
rising). The parent imports neither torch nor the models, so the child's ru_maxrss, which Linux carries over
from the parent at fork, is its own; the child's VmHWM is printed beside it as a check. One markdown table row
per configuration, printed as it finishes.

    python bench/real_size.py --models smolvlm-256m --dtype float32 --threads 2 --max-view-pixels 1048576  # ~3 min
    python bench/real_size.py       # every model x float32, bfloat16 x 1, 2 threads x no budget, 1,048,576 px

Options: --models, --dtype, --threads, --max-view-pixels (each a list: the configurations are their
product), --text, --timeout (seconds per configuration), --cache-dir (the built folders' root), --no-extras
(skip the handler and the dataset: EXTRA_MEASUREMENTS).
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
    max_view_pixels: int | None = None


def photo(seed: int = 0):
    """The seeded 1024 x 768 photo-like image (`tests.real_models.photo`) as a PIL image, and the ball's mask."""
    from PIL import Image

    from tests.real_models import photo as real_photo

    pixels, mask = real_photo(WIDTH, HEIGHT, seed)
    return Image.fromarray(pixels), mask


def app_handler_seconds(run: Run) -> float:
    """Column "app handler s": one Analyze through the app's handler (`ui.explorer.ExplorerTab.analyze`, called as
    Gradio calls it, as bench/analysis.py does) with `run.loaded` in the app's model cache and an editor value
    made of `run.image` and `run.mask` (the mask as a brush layer)."""
    import gradio as gr
    import numpy as np

    from hi_core.model.model_cache import ModelCache
    from ui.context import AppContext
    from ui.explorer import ExplorerTab
    from ui.options import DEFAULTS
    from ui.settings import Settings

    class Cached(ModelCache):
        """The app's model cache holding `run.loaded` (in its dtype) for whatever config the handler asks."""

        def get(self, config, on_wait=None):
            assert config.max_view_pixels == run.max_view_pixels, "the app asked for another view budget"
            return run.loaded

        def __contains__(self, config) -> bool:
            return True

    settings = Settings(max_view_pixels=run.max_view_pixels)
    with gr.Blocks():  # never served: the tab's components exist, its handlers are called directly
        tab = ExplorerTab(AppContext(settings=settings, cache=Cached()), gr.State(None), run.loaded.name)
    image = np.asarray(run.image.convert("RGB"))
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)
    strokes[run.mask] = (255, 0, 0, 255)
    editor = {"background": image, "layers": [strokes], "composite": image}
    scoring = DEFAULTS.scoring
    started = time.perf_counter()
    shown = tab.analyze(run.loaded.name, "cpu", editor, None, run.text, False, "", DEFAULTS.prompt, DEFAULTS.queries,
                        DEFAULTS.view, scoring.binarize, scoring.quantile, scoring.layer_score, 8, 0, 3,
                        progress=lambda *_, **__: None)
    seconds = time.perf_counter() - started
    session = shown.get(tab.state)
    if session is None:  # the handler reports input errors in the page instead of raising
        raise RuntimeError(f"the handler did not analyze: {shown.get(tab.message)!r}")
    session.remove_files()
    return seconds


def dataset_seconds(run: Run) -> float:
    """Column "dataset of 8 s": `hi_core.data.dataset_scoring.score_dataset` over 8 photos like `run.image` (seeds 0-7,
    each with its ball's mask and `run.text`), model loaded, `DatasetConfig()`; writing the folder is not timed."""
    import tempfile

    import numpy as np

    from hi_core.data.dataset_analysis import DatasetConfig
    from hi_core.data.dataset_scoring import score_dataset
    from hi_core.data.datasets import write_generated

    with tempfile.TemporaryDirectory(prefix="real-size-dataset-") as folder:
        records = ((f"photo-{seed}", np.asarray(image), mask, {"text": run.text})
                   for seed in range(8) for image, mask in [photo(seed)])
        write_generated(folder, records)
        started = time.perf_counter()
        scores = score_dataset(run.loaded, folder, DatasetConfig())
        seconds = time.perf_counter() - started
    if scores is None or len(scores.images) != 8:
        raise RuntimeError(f"the dataset run scored {0 if scores is None else len(scores.images)} of 8 images")
    return seconds


#: Further columns: name -> function of the loaded Run returning seconds, called after the warm analysis,
#: in this order.
EXTRA_MEASUREMENTS: dict[str, Callable[[Run], float]] = {"app handler s": app_handler_seconds, "dataset of 8 s": dataset_seconds}


def stage_modules(loaded: Any) -> dict[str, Any]:
    """{"vision": the vision tower, "LM": the language model (the module holding the decoder layers)}."""
    inner = loaded.model.model
    vision = next((getattr(inner, name) for name in ("vision_model", "visual", "vision_tower") if hasattr(inner, name)), None)
    layers = loaded.adapter.decoder_layers(loaded.model)
    language = next((module for module in loaded.model.modules()
                     if any(child is layers for child in module.children())), None)
    if vision is None or language is None:
        raise RuntimeError(f"no vision tower or language model found in {type(loaded.model).__name__}")
    return {"vision": vision, "LM": language}


class StageTimer:
    """Wall-clock seconds spent inside each module's forward (summed over calls), by forward hooks."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        self._started: dict[str, float] = {}
        self._hooks = []
        for name, module in modules.items():
            self._hooks.append(module.register_forward_pre_hook(lambda *_, name=name: self._start(name)))
            self._hooks.append(module.register_forward_hook(lambda *_, name=name: self._stop(name)))

    def _start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._started.pop(name)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _vm_hwm_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def child(settings: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this fresh process: load, analyze twice (the second by stage), extra measurements,
    peak memory after each."""
    import resource

    import torch
    import transformers

    torch.set_num_threads(settings["threads"])
    from hi_core.method.analysis import analyze_image
    from hi_core.model.loading import LoadConfig, load_model

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    image, mask = photo()
    budget = settings.get("max_view_pixels")
    started = time.perf_counter()
    loaded = load_model(LoadConfig(model=settings["folder"], device="cpu", dtype=settings["dtype"], max_view_pixels=budget))
    load_s = time.perf_counter() - started
    seen: dict[str, int] = {}  # the sequence the model's forward gets (a hook: microseconds)

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            seen.update(tokens=int(input_ids.shape[-1]), image_tokens=int((input_ids == image_token).sum()))

    image_token = int(loaded.model.config.image_token_id)
    hook = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    times, stages = [], None
    for warm in (False, True):
        timer = StageTimer(stage_modules(loaded)) if warm else None  # hooks on the warm run only
        started = time.perf_counter()
        analysis = analyze_image(loaded, image, mask, settings["text"])
        times.append(time.perf_counter() - started)
        if timer is not None:
            timer.remove()
            stages = {**timer.seconds, "rest": times[-1] - sum(timer.seconds.values())}
    hook.remove()
    peaks = [peak_mib()]
    run = Run(loaded=loaded, image=image, mask=mask, text=settings["text"], threads=settings["threads"],
              max_view_pixels=budget)
    extras = {}
    for name, measure in (EXTRA_MEASUREMENTS.items() if settings.get("extras", True) else ()):
        extras[name] = measure(run)
        peaks.append(peak_mib())
    return {
        "load_s": load_s, "analyze_s": times[0], "warm_s": times[1], "stages": stages, "extras": extras,
        "peak_mib": peaks[0], "peaks_mib": peaks, "vm_hwm_mib": _vm_hwm_mib(),
        "tokens": seen.get("tokens", -1), "image_tokens": seen.get("image_tokens", -1),
        "grid": list(analysis.grid), "heads": list(analysis.hi.shape), "best_hi": float(analysis.hi.max()),
        "chance": float(analysis.chance), "threads": torch.get_num_threads(), "view_budget": loaded.view_budget,
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


def view_budget(value: str) -> int | None:
    """`--max-view-pixels` values: a number of pixels, or `none` (no budget)."""
    if value.lower() == "none":
        return None
    pixels = int(float(value))
    if pixels < 1:
        raise argparse.ArgumentTypeError(f"a view budget is a positive number of pixels or none, got {value!r}")
    return pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--max-view-pixels", nargs="+", type=view_budget, default=[None, 1_048_576],
                        help="view budgets, pixels per image (LoadConfig.max_view_pixels); none: no budget (default: none 1048576)")
    parser.add_argument("--text", default=TEXT, help="the description analyzed")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration before it is marked failed")
    parser.add_argument("--cache-dir", default=None, help="root of the built folders (default: ~/.cache/hi-explorer/real-size)")
    parser.add_argument("--no-extras", action="store_true", help="skip the app handler and the dataset (EXTRA_MEASUREMENTS)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))  # hi_core and ui from this checkout
        print(RESULT + json.dumps(child(json.loads(args.child))), flush=True)
        return

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}; text {args.text!r}; image {WIDTH} x {HEIGHT}")
    folders = {name: build(name, args.cache_dir) for name in args.models}
    extra_columns = [] if args.no_extras else list(EXTRA_MEASUREMENTS)
    ratio = ["handler / warm"] if "app handler s" in extra_columns else []
    columns = ["model", "dtype", "threads", "view budget", "load s", "analyze 1st s", "analyze warm s", "vision s", "LM s",
               "rest s", *extra_columns, *ratio, "peak RSS MiB", "tokens (image)", "grid", "layers x heads"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    versions = None
    for name in args.models:
        for dtype in args.dtype:
            for threads in args.threads:
                for budget in args.max_view_pixels:
                    settings = {"folder": str(folders[name]), "dtype": dtype, "threads": threads, "text": args.text,
                                "max_view_pixels": budget, "extras": not args.no_extras}
                    result = measure(settings, args.timeout)
                    head = [name, dtype, str(threads), "none" if budget is None else f"{budget:,}"]
                    if "error" in result:
                        print("| " + " | ".join(head + [f"failed: {result['error']}"] + [""] * (len(columns) - len(head) - 1)) + " |",
                              flush=True)
                        continue
                    versions = result["versions"]
                    stages = result["stages"]
                    extras = [f"{result['extras'][key]:.2f}" for key in extra_columns]
                    if ratio:
                        extras.append(f"{result['extras']['app handler s'] / result['warm_s']:.2f}")
                    cells = head + [f"{result['load_s']:.2f}", f"{result['analyze_s']:.2f}", f"{result['warm_s']:.2f}",
                                    f"{stages['vision']:.2f}", f"{stages['LM']:.2f}", f"{stages['rest']:.2f}", *extras,
                                    " / ".join(f"{peak:.0f}" for peak in result["peaks_mib"]),
                                    f"{result['tokens']} ({result['image_tokens']})",
                                    "x".join(map(str, result["grid"])), "x".join(map(str, result["heads"]))]
                    print("| " + " | ".join(cells) + " |", flush=True)
                    if abs(result["peaks_mib"][-1] - result["vm_hwm_mib"]) > 64:
                        print(f"  (ru_maxrss {result['peaks_mib'][-1]:.0f} MiB differs from the child's VmHWM "
                              f"{result['vm_hwm_mib']:.0f} MiB)", flush=True)
                    if budget is not None:
                        print(f"  (view budget: {result['view_budget']})", flush=True)
    print(f"\n{versions or ''}; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
