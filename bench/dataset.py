"""Dataset scoring against a plain batched forward pass: images/s, where the time goes, peak memory.

On one synthetic dataset (`hi_core.data.datasets.write_synthetic`, written to a temporary folder),
three ways through the same first `--images` records in the same batches of `--batch-size`:
  (a) forward   the floor: `read_dataset`, `build_inputs` per record, `collate`, `run_forward` per
                batch (SDPA, no logits beyond the last position), nothing kept;
  (b) score     `score_dataset(loaded, folder, DatasetConfig(batch_size=B, limit=N))`, no cache:
                the same reading and inputs, plus the mask through the processor, the capture of
                the response rows, HI / mass / chance per image and the bootstrap intervals;
  (c) + cache   (b) with a fresh cache folder each round: every batch's results appended to a
                JSON-lines part file (flushed and fsynced), the result read back from the cache.
Target (issue 7): (b) within 1.5x of (a).

Time: one warm-up round, then `--reps` rounds interleaved (a, b, c, a, b, c, ...) so machine noise
hits all variants alike; medians and ratios of medians. The functions each variant calls are
wrapped with timers (a few microseconds per call), and the round with the median total of each
variant is broken down by stage: reading records, `build_inputs`, the mask, `collate`, the forward
(with the capture in (b), (c)), the rest of the capture, scoring, the summary, the cache writes.

Memory: `score_dataset` with a cache, on `--memory-images` (default 100 and 1,000) of one dataset
(`limit`), each in a fresh subprocess with glibc's mmap threshold at 64 KiB (freed tensors go back
to the OS, so RSS follows live memory): the model is loaded, one batch is scored as a warm-up, then
the peak RSS of the measured run (VmHWM, reset through /proc/self/clear_refs) above the RSS before
it, split into the scoring loop and the summary (cache read, bootstrap). Target: flat (~1x).

Models: `demo` (the embedded demo model, 144 image tokens), or `random`: bench/capture.py's LLaVA
with a tiny CLIP tower and a random Qwen2 text model of Qwen2-VL-2B's dimensions, `--layers` of its
28 layers and a `--side` x `--side` image grid, so the language model's forward dominates as it
does for real models.

    python bench/dataset.py --threads 1        # demo model, ~1.5 min on 2 shared CPU cores
    python bench/dataset.py --model random --images 32 --reps 3 --memory-images --threads 1  # ~6 min
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hi_core from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/capture.py (the random model)

import torch  # noqa: E402

import hi_core.data.dataset_scoring as dataset_scoring  # noqa: E402
import hi_core.data.score_cache as score_cache  # noqa: E402
import hi_core.method.image_scoring as image_scoring  # noqa: E402
import hi_core.method.maps as maps  # noqa: E402
from hi_core.method.maps import run_forward  # noqa: E402
from hi_core.model.batching import collate, pad_token_id  # noqa: E402
from hi_core.data.dataset_analysis import DatasetConfig  # noqa: E402
from hi_core.data.dataset_scoring import score_dataset  # noqa: E402
from hi_core.data.datasets import read_dataset, write_synthetic  # noqa: E402
from hi_core.model.inputs import build_inputs  # noqa: E402
from hi_core.model.loading import LoadConfig, LoadedModel, load_model  # noqa: E402

TARGET = 1.5  # (b) / (a), issue 7
LABELS = {"forward": "(a) plain batched forward", "score": "(b) score_dataset", "cached": "(c) score_dataset + cache"}


# --- the model and the variants ------------------------------------------------------------------


def load(args: argparse.Namespace) -> LoadedModel:
    if args.model == "demo":
        return load_model(LoadConfig("demo", device=args.device))
    from capture import build_case  # a LLaVA-layout model with Qwen2-VL-2B's text dimensions

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return build_case(args.side, args.layers, dtype, device).loaded


def plain_forward(loaded: LoadedModel, folder: Path, config: DatasetConfig, cache: Path | None = None) -> None:
    """(a): the same records, inputs and batches as `score_dataset`, through a plain forward only."""
    pad_id = pad_token_id(loaded.processor.tokenizer)
    batch: list[Any] = []
    records = read_dataset(folder, limit=config.limit)
    for record in records:
        batch.append(build_inputs(loaded.adapter, loaded.model, loaded.processor, record.image, config.analysis.prompt, record.text))
        if len(batch) == config.batch_size:
            forward_batch(loaded, batch, pad_id)
            batch = []
    if batch:
        forward_batch(loaded, batch, pad_id)


def forward_batch(loaded: LoadedModel, items: list[Any], pad_id: int) -> None:
    with torch.inference_mode():
        run_forward(loaded, collate(items, pad_id))


def score(loaded: LoadedModel, folder: Path, config: DatasetConfig, cache: Path | None = None) -> None:
    """(b) without `cache`, (c) with it."""
    score_dataset(loaded, folder, config, cache=cache)


VARIANTS: dict[str, Callable[..., None]] = {"forward": plain_forward, "score": score, "cached": score}


# --- stage timers --------------------------------------------------------------------------------


class Stages:
    """Seconds spent in named stages, collected by wrapping the functions the variants call."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.synchronize = synchronize

    def function(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                self.synchronize()
                return result
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed_call

    def iterator(self, name: str, fn: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
        """A generator function whose every `next` (not the consumer's work in between) is timed."""

        def timed_iteration(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = iter(fn(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.seconds[name] += time.perf_counter() - start
                yield item

        return timed_iteration


# (module, attribute, stage, is an iterator): everything (a), (b) and (c) call, by stage. The
# forward inside batch_head_maps runs with the capture; "capture: rest" is batch_head_maps minus
# its collate and forward (positions, stacking the rows, the per-image maps).
BENCH = sys.modules[__name__]
STAGES = (
    (BENCH, "read_dataset", "read records (PNG decode, mask checks)", True),
    (dataset_scoring, "load_record", "read records (PNG decode, mask checks)", False),
    (BENCH, "build_inputs", "build_inputs (processor, tokenizer)", False),
    (image_scoring, "build_inputs", "build_inputs (processor, tokenizer)", False),
    (image_scoring, "mask_grid", "mask through the processor (mask_grid)", False),
    (image_scoring, "key_phrase_tokens", "key phrase tokens", False),
    (BENCH, "collate", "collate", False),
    (maps, "collate", "collate", False),
    (BENCH, "run_forward", "forward (with the capture in b, c)", False),
    (maps, "run_forward", "forward (with the capture in b, c)", False),
    (dataset_scoring, "batch_head_maps", "batch_head_maps", False),
    (image_scoring, "score_maps", "score_maps (HI, mass, chance)", False),
    (score_cache.PartWriter, "append", "cache writes (append, fsync)", False),
    (dataset_scoring, "_summarize", "summary (read cache, bootstrap)", False),
)
STAGE_ORDER = [
    "read records (PNG decode, mask checks)", "build_inputs (processor, tokenizer)",
    "mask through the processor (mask_grid)", "key phrase tokens", "collate", "forward (with the capture in b, c)",
    "capture: rest of batch_head_maps", "score_maps (HI, mass, chance)", "cache writes (append, fsync)",
    "summary (read cache, bootstrap)", "other (ImageScore, to_json, ids, tqdm, ...)",
]


@contextlib.contextmanager
def timing_stages(stages: Stages) -> Iterator[None]:
    """Every function of STAGES wrapped with a timer inside the block, the originals after it."""
    originals = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _, _ in STAGES]
    try:
        for owner, attribute, name, is_iterator in STAGES:
            wrap = stages.iterator if is_iterator else stages.function
            setattr(owner, attribute, wrap(name, getattr(owner, attribute)))
        yield
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def breakdown(seconds: dict[str, float], total: float) -> dict[str, float]:
    """Stage -> seconds, with the capture's rest and the unaccounted time as stages of their own."""
    stages = dict(seconds)
    maps = stages.pop("batch_head_maps", 0.0)
    if maps:
        inside = stages.get("collate", 0.0) + stages.get("forward (with the capture in b, c)", 0.0)
        stages["capture: rest of batch_head_maps"] = maps - inside
    stages["other (ImageScore, to_json, ids, tqdm, ...)"] = total - sum(stages.values())
    return stages


# --- time ----------------------------------------------------------------------------------------


def time_variants(loaded: LoadedModel, folder: Path, work: Path, config: DatasetConfig, reps: int):
    """Per variant: (total seconds, stage seconds) of each timed round, after one warm-up round."""
    cuda = loaded.device.type == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {name: [] for name in VARIANTS}
    for round_index in range(reps + 1):
        for name, fn in VARIANTS.items():
            cache = work / f"cache-{round_index}" if name == "cached" else None
            stages = Stages(synchronize)
            gc.collect()
            with timing_stages(stages):
                synchronize()
                start = time.perf_counter()
                fn(loaded, folder, config, cache)
                synchronize()
                seconds = time.perf_counter() - start
            if cache is not None:
                shutil.rmtree(cache)
            if round_index:
                runs[name].append((seconds, breakdown(stages.seconds, seconds)))
    return runs


# --- memory --------------------------------------------------------------------------------------


def proc_kib(field: str, path: str = "/proc/self/status") -> int:
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def measure_memory(loaded: LoadedModel, folder: Path, images: int, batch_size: int) -> dict[str, Any]:
    """In this (fresh) process: peak RSS of `score_dataset` with a cache on `images` records."""
    score_dataset(loaded, folder, DatasetConfig(batch_size=batch_size, limit=batch_size))  # warm-up
    peaks: dict[str, int] = {}
    summarize = dataset_scoring._summarize

    def measured_summary(*args: Any, **kwargs: Any) -> Any:
        peaks["loop"] = proc_kib("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # the summary's own peak from here
        return summarize(*args, **kwargs)

    with tempfile.TemporaryDirectory(prefix="hi-bench-cache-") as cache:
        gc.collect()
        before = proc_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        dataset_scoring._summarize = measured_summary
        try:
            result = score_dataset(loaded, folder, DatasetConfig(batch_size=batch_size, limit=images), cache=cache)
        finally:
            dataset_scoring._summarize = summarize
        summary_peak = proc_kib("VmHWM")
        cache_bytes = sum(path.stat().st_size for path in Path(cache).iterdir())
    return {
        "images": len(result.images), "baseline_bytes": before * 1024,
        "loop_bytes": (peaks["loop"] - before) * 1024, "summary_bytes": (summary_peak - before) * 1024,
        "cache_bytes": cache_bytes,
    }


def memory_in_subprocess(images: int, folder: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--layers", str(args.layers),
               "--side", str(args.side), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--memory-of", str(images), "--dataset", str(folder)]
    done = subprocess.run(command, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory run on {images} images failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report --------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def report_time(runs: dict[str, list[tuple[float, dict[str, float]]]], images: int) -> None:
    medians = {name: statistics.median(seconds for seconds, _ in values) for name, values in runs.items()}
    base = medians["forward"]
    print("\n| variant | median s | images/s | x (a) | all timings s |")
    print("|---|---|---|---|---|")
    for name, values in runs.items():
        print(f"| {LABELS[name]} | {medians[name]:.2f} | {images / medians[name]:.1f} | {medians[name] / base:.2f} | "
              + " ".join(f"{seconds:.2f}" for seconds, _ in values) + " |")
    verdict = "met" if medians["score"] / base <= TARGET else "NOT met"
    print(f"\ntarget (issue 7): (b) / (a) <= {TARGET}x: {medians['score'] / base:.2f}x, {verdict}; "
          f"(c) / (a) = {medians['cached'] / base:.2f}x, (c) / (b) = {medians['cached'] / medians['score']:.2f}x")

    print("\nWhere the time goes, ms per image (the round with the median total of each variant):\n")
    print("| stage | " + " | ".join(LABELS[name][:3] for name in runs) + " |")
    print("|---|" + "---|" * len(runs))
    chosen = {}
    for name, values in runs.items():
        ordered = sorted(values, key=lambda run: run[0])
        chosen[name] = ordered[(len(ordered) - 1) // 2]
    for stage in STAGE_ORDER:
        cells = [chosen[name][1].get(stage) for name in runs]
        if all(cell is None or abs(cell) < 5e-5 * images for cell in cells):
            continue
        print(f"| {stage} | " + " | ".join("-" if cell is None else f"{1000 * cell / images:.2f}" for cell in cells) + " |")
    print("| **total** | " + " | ".join(f"**{1000 * chosen[name][0] / images:.2f}**" for name in runs) + " |")


def report_memory(results: dict[int, dict[str, Any] | None]) -> None:
    print("\nPeak RSS of score_dataset with a cache, fresh subprocess each, above the RSS after load + warm-up:\n")
    print("| images | peak MiB | scoring loop MiB | summary MiB | baseline RSS MiB | cache KiB/image |")
    print("|---|---|---|---|---|---|")
    for images, result in results.items():
        if result is None:
            print(f"| {images} | failed | | | | |")
            continue
        peak = max(result["loop_bytes"], result["summary_bytes"])
        print(f"| {result['images']} | {mib(peak)} | {mib(result['loop_bytes'])} | {mib(result['summary_bytes'])} | "
              f"{mib(result['baseline_bytes'])} | {result['cache_bytes'] / 1024 / result['images']:.2f} |")
    done = [(images, result) for images, result in results.items() if result is not None]
    if len(done) >= 2:
        (small, first), (large, last) = done[0], done[-1]
        ratio = max(last["loop_bytes"], last["summary_bytes"]) / max(first["loop_bytes"], first["summary_bytes"], 1)
        loop_ratio = last["loop_bytes"] / max(first["loop_bytes"], 1)
        print(f"\npeak at {large} / peak at {small} images: {ratio:.2f}x (scoring loop alone: {loop_ratio:.2f}x); target: flat, ~1x")


def machine(loaded: LoadedModel) -> str:
    if loaded.device.type == "cuda":
        return torch.cuda.get_device_name(loaded.device)
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    return f"{names[0] if names else 'CPU'}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("demo", "random"), default="demo",
                        help="demo: the embedded demo model; random: LLaVA layout with Qwen2-VL-2B's text dimensions")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--layers", type=int, default=2, help="language-model layers of --model random (default: 2 of 28)")
    parser.add_argument("--side", type=int, default=12, help="image grid side of --model random (default: 12, 144 tokens)")
    parser.add_argument("--images", type=int, default=128, help="images per timed run (default: 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds after the warm-up round (default: 5)")
    parser.add_argument("--memory-images", type=int, nargs="*", default=[100, 1000],
                        help="dataset sizes of the memory runs (default: 100 1000; none to skip)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--memory-of", type=int, help=argparse.SUPPRESS)  # the memory subprocess
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)

    if args.memory_of:
        loaded = load(args)
        print(json.dumps(measure_memory(loaded, args.dataset, args.memory_of, args.batch_size)))
        return

    loaded = load(args)
    size = int(loaded.model.config.vision_config.image_size)  # the processor's own size: no resize cost
    with tempfile.TemporaryDirectory(prefix="hi-bench-dataset-") as work:
        work = Path(work)
        folder = write_synthetic(work / "data", n=max([args.images, *args.memory_images]), size=size)
        config = DatasetConfig(batch_size=args.batch_size, limit=args.images)
        first = next(read_dataset(folder, limit=1))
        inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, first.image, config.analysis.prompt, first.text)
        gh, gw = inputs.layout.grid
        text = loaded.model.config.text_config
        print(f"model: {loaded.name} ({text.num_hidden_layers} layers x {text.num_attention_heads} heads, "
              f"hidden {text.hidden_size}), {size}x{size} images, {gh}x{gw} image tokens, "
              f"~{inputs.tensors['input_ids'].shape[1]} tokens per sequence; {args.images} images in batches of "
              f"{args.batch_size}; medians of {args.reps} reps after 1 warm-up")
        print(f"machine: {machine(loaded)}; {loaded.model.dtype}; torch {torch.__version__}; torch threads: {args.threads}")
        runs = time_variants(loaded, folder, work, config, args.reps)
        report_time(runs, args.images)
        if args.memory_images:
            results = {images: memory_in_subprocess(images, folder, args) for images in args.memory_images}
            report_memory(results)


if __name__ == "__main__":
    main()
