"""Cost of a LoRA training step on k layers against LoRA on all layers, on the same model.

Variants, each hi_core's own training loop (`hi_core.tuning.training.train_lora`: batches built with
`build_inputs` + `collate`, AdamW, schedule) with LoRA (rank 8, alpha 16) on the q/k/v/o projections of:
  top-k     the k best layers of the model's HI ranking (the demo model: its shipped `eval.json`);
            for random-weight models there is no meaningful ranking, so two bounds instead:
  first-k   layers 0..k-1: the gradient must flow back through the whole stack (slowest k choice);
  last-k    the last k layers: backward stops above the lowest adapted layer (fastest k choice);
  all       every layer of the language model.
Models: `demo` (the shipped 0.6M-parameter LLaVA, 3 layers) and `wide` (random weights: the demo's
vision tower and tokenizer, a Llama text model of hidden 768, 12 heads, intermediate 2048, vocab
32000 and `--wide-layers` layers, ~80M parameters at 8 layers: the width of a small real LM).

Time: `--reps` rounds, each running every variant for `--steps` steps (interleaved, so machine noise
hits all variants alike); a step's time is the gap between consecutive `on_step` callbacks, the
first step of each block dropped (warm-up). Reported: the median step, and its ratio to `all`.
Memory: on CPU, each variant runs in a fresh subprocess (glibc's mmap threshold at 64 KiB so freed
tensors return to the OS): the peak RSS (VmHWM, reset through /proc/self/clear_refs) during a
3-step training run above the RSS just before it, i.e. activations, gradients, optimizer state and
temporaries. On CUDA: torch.cuda.max_memory_allocated above the memory allocated before the run.

Dataset scale (`--records`): the peak memory of a whole run (`hi_core.tuning.runs.run_finetune` on the
demo model: the held-out split (5% of the records), `--scale-steps` training steps, greedy
2-token captions of every held-out record, the run folder) on the first N records of one generated
dataset (`write_synthetic`, `--scale-size` px scenes), each N in a fresh subprocess as above,
after a warm-up run on 16 records: the peak RSS above the RSS before the run, in all and per stage
(split, training, held-out captions). Records are read lazily, so only the index (one scanned
line per record, ~0.7 KiB) grows with N.

    python bench/finetune.py --threads 1                 # CPU: demo and wide (8 layers), ~5 min
    python bench/finetune.py --model wide --wide-layers 24 --batch-size 8   # GPU
    python bench/finetune.py --threads 1 --records 1000 20000   # dataset scale only, ~3 min
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hi_core from this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hi_core.tuning.runs as runs  # noqa: E402
from hi_core.data.datasets import INDEX, read_dataset, write_synthetic  # noqa: E402
from hi_core.families.llava import LlavaAdapter  # noqa: E402
from hi_core.tuning.finetune import DataConfig, FinetuneConfig  # noqa: E402
from hi_core.tuning.training import TrainCallbacks, lora_attached, lora_config, train_lora, trainable_parameters  # noqa: E402
from hi_core.method.layer_selection import Ranking  # noqa: E402
from hi_core.model.loading import DEMO_MODEL_DIR, LoadConfig, LoadedModel, load_model  # noqa: E402

# stage -> the function of hi_core.tuning.runs that run_finetune calls for it (wrapped to measure its peak memory)
STAGES = {"split": "split_dataset", "training": "train_lora", "captions": "evaluate_held_out"}
WIDE_TEXT = dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_attention_heads=12,
                 num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024, tie_word_embeddings=False)


def build(name: str, args: argparse.Namespace, device: torch.device) -> LoadedModel:
    if name == "demo":
        return load_model(LoadConfig("demo", device=device.type))
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from hi_core.demo.build import build_config, build_processor

    processor = build_processor()
    demo = build_config(processor.tokenizer)
    tokenizer = processor.tokenizer
    text = dict(WIDE_TEXT, num_hidden_layers=args.wide_layers, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=demo.vision_config.to_dict(), text_config=text, image_token_id=demo.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(device).eval()
    return LoadedModel("wide", model, processor, LlavaAdapter(), device)


def variants(name: str, num_layers: int, k: int) -> dict[str, tuple[int, ...]]:
    if name == "demo":
        report = json.loads((DEMO_MODEL_DIR / "eval.json").read_text())
        ranking = Ranking.from_scores(np.max(report["hi_trained"]["mean_hi"], axis=1), "demo eval.json")
        return {f"top-{k}": tuple(sorted(ranking.layers[:k])), "all": tuple(range(num_layers))}
    return {f"first-{k}": tuple(range(k)), f"last-{k}": tuple(range(num_layers - k, num_layers)), "all": tuple(range(num_layers))}


def run_block(loaded: LoadedModel, records: list, layers: tuple[int, ...], steps: int, batch_size: int) -> tuple[list[float], int]:
    """Step times (s) of a `steps`-step training run with LoRA on `layers`; and the trainable count."""
    config = FinetuneConfig(layers=layers, steps=steps, batch_size=batch_size, lr=1e-4, data=DataConfig(meteor=False))
    stamps: list[float] = []
    synchronize = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)

    def on_step(step: int, loss: float) -> None:
        synchronize()
        stamps.append(time.perf_counter())

    with lora_attached(loaded, lora_config(loaded, layers, config)) as peft_model:
        trainable = trainable_parameters(peft_model)
        stamps.append(time.perf_counter())
        train_lora(loaded, records, config, TrainCallbacks(on_step=on_step))
    return list(np.diff(stamps)[1:]), trainable  # the first step is a warm-up


def proc_kib(field: str, path: str = "/proc/self/status") -> int:
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_in_process(loaded: LoadedModel, records: list, layers: tuple[int, ...], batch_size: int) -> int:
    """Bytes above the memory in use before a 3-step training run (after a 1-step warm-up run)."""
    run_block(loaded, records, layers, 1, batch_size)
    gc.collect()
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_block(loaded, records, layers, 3, batch_size)
        return torch.cuda.max_memory_allocated() - before
    before = proc_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    run_block(loaded, records, layers, 3, batch_size)
    return (proc_kib("VmHWM") - before) * 1024


def peak_in_subprocess(model: str, variant: str, args: argparse.Namespace) -> int | None:
    command = [sys.executable, __file__, "--device", "cpu", "--model", model, "--k", str(args.k), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--wide-layers", str(args.wide_layers), "--memory-of", variant]
    done = subprocess.run(command, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  memory run of {variant} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def scenes(folder: Path) -> list:
    return list(read_dataset(write_synthetic(folder, n=32, seed=0, size=96, order="reading")))


def bench_model(name: str, args: argparse.Namespace, device: torch.device, records: list) -> None:
    loaded = build(name, args, device)
    num_layers = len(loaded.adapter.decoder_layers(loaded.model))
    total = sum(p.numel() for p in loaded.model.parameters())
    chosen = variants(name, num_layers, min(args.k, num_layers))
    times: dict[str, list[float]] = {variant: [] for variant in chosen}
    trainable: dict[str, int] = {}
    for _ in range(args.reps):
        for variant, layers in chosen.items():
            steps, trainable[variant] = run_block(loaded, records, layers, args.steps + 1, args.batch_size)
            times[variant] += steps
    peaks = {variant: (peak_in_process(loaded, records, layers, args.batch_size) if device.type == "cuda"
                       else peak_in_subprocess(name, variant, args)) for variant, layers in chosen.items()}
    print(f"\nmodel {name}: {total / 1e6:.1f}M parameters, {num_layers} language-model layers; batch {args.batch_size}; "
          f"{args.reps} rounds x {args.steps} timed steps per variant")
    print(f"  {'variant':10} {'layers':>14} {'trainable':>10} {'share':>8} {'step s':>8} {'x all':>6} {'peak MiB':>9} {'x all':>6}")
    for variant, layers in chosen.items():
        median = statistics.median(times[variant])
        peak = peaks[variant]
        ratio_peak = f"{peak / peaks['all']:.2f}" if peak and peaks["all"] else "n/a"
        print(f"  {variant:10} {','.join(map(str, layers)):>14} {trainable[variant]:>10,} {trainable[variant] / total:>8.3%} "
              f"{median:8.3f} {median / statistics.median(times['all']):6.2f} "
              f"{'n/a' if peak is None else f'{peak / 2**20:.1f}':>9} {ratio_peak:>6}")
    print("  all step times s: " + "; ".join(f"{v}: " + " ".join(f"{t:.3f}" for t in times[v]) for v in chosen))


# --- dataset scale: a whole run's peak memory against the number of records -----------------------


def scale_config(args: argparse.Namespace) -> FinetuneConfig:
    """A cheap run: the top layer of the demo, a few steps, 5% held out, two-token captions (memory is the point)."""
    return FinetuneConfig(layers=(2,), steps=args.scale_steps, batch_size=args.batch_size, lr=1e-4,
                          data=DataConfig(eval_fraction=0.05, max_new_tokens=2, meteor=False))


def first_records(source: Path, folder: Path, count: int) -> Path:
    """A dataset of the first `count` records of `source`, sharing its image and mask folders."""
    folder.mkdir()
    for sub in ("images", "masks"):
        (folder / sub).symlink_to(source / sub)
    with open(source / INDEX, encoding="utf-8") as lines:
        (folder / INDEX).write_text("".join(itertools.islice(lines, count)), encoding="utf-8")
    return folder


def measure_scale(args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: the peak RSS of `run_finetune` on `args.dataset`, in all and per stage."""
    loaded = load_model(LoadConfig("demo", device="cpu"))
    config = scale_config(args)
    with tempfile.TemporaryDirectory(prefix="hi-bench-runs-") as out:
        runs.run_finetune(loaded, args.warm_up, Path(out) / "warm-up", config)
        peaks: dict[str, int] = {}

        def measured(stage: str, function):  # the stage's own peak; the peak before it is kept too
            def call(*call_args, **kwargs):
                peaks[f"before {stage}"] = proc_kib("VmHWM")
                Path("/proc/self/clear_refs").write_text("5")
                try:
                    return function(*call_args, **kwargs)
                finally:
                    peaks[stage] = proc_kib("VmHWM")
                    Path("/proc/self/clear_refs").write_text("5")
            return call

        stages = STAGES
        originals = {name: getattr(runs, name) for name in stages.values()}
        for stage, name in stages.items():
            setattr(runs, name, measured(stage, originals[name]))
        gc.collect()
        before = proc_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        clock = time.perf_counter()
        try:
            record = runs.run_finetune(loaded, args.dataset, Path(out) / "run", config)
        finally:
            for name, function in originals.items():
                setattr(runs, name, function)
        seconds = time.perf_counter() - clock
        whole = max([proc_kib("VmHWM"), *peaks.values()])
    return {"train": record.split["train"], "held_out": record.split["held_out"], "baseline_bytes": before * 1024,
            "peak_bytes": (whole - before) * 1024, "seconds": seconds,
            **{f"{stage}_bytes": (peaks[stage] - before) * 1024 for stage in stages}}


def scale_in_subprocess(dataset: Path, warm_up: Path, args: argparse.Namespace) -> dict[str, float] | None:
    command = [sys.executable, __file__, "--device", "cpu", "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--scale-steps", str(args.scale_steps), "--scale-of", str(dataset), "--warm-up", str(warm_up)]
    done = subprocess.run(command, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  scale run on {dataset.name} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scale(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hi-bench-scale-") as work:
        clock = time.perf_counter()
        source = write_synthetic(Path(work) / "all", n=max(args.records), seed=0, size=args.scale_size, order="reading")
        print(f"generated {max(args.records):,} records ({args.scale_size} px) in {time.perf_counter() - clock:.0f} s")
        warm_up = first_records(source, Path(work) / "warm-up", 16)
        results = {count: scale_in_subprocess(first_records(source, Path(work) / f"first-{count}", count), warm_up, args)
                   for count in args.records}
    print(f"\nPeak RSS of run_finetune (demo model, layer 2, {args.scale_steps} steps of batch {args.batch_size}, "
          "5% held out, captioned with 2 new tokens each), fresh subprocess each, above the RSS before the run:\n")
    print("| records | train / held out | peak MiB | split MiB | training MiB | held-out captions MiB | baseline RSS MiB | run s |")
    print("|---|---|---|---|---|---|---|---|")
    for count, result in results.items():
        if result is None:
            print(f"| {count:,} | failed | | | | | | |")
            continue
        print(f"| {count:,} | {result['train']:,} / {result['held_out']:,} | {result['peak_bytes'] / 2**20:.1f} | "
              f"{result['split_bytes'] / 2**20:.1f} | {result['training_bytes'] / 2**20:.1f} | {result['captions_bytes'] / 2**20:.1f} | "
              f"{result['baseline_bytes'] / 2**20:.0f} | {result['seconds']:.1f} |")
    done = [result for result in results.values() if result is not None]
    if len(done) >= 2:
        print(f"\npeak at {max(args.records):,} / peak at {min(args.records):,} records: "
              f"{done[-1]['peak_bytes'] / max(done[0]['peak_bytes'], 1):.2f}x; target: flat, ~1x")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    return f"{names[0] if names else 'CPU'}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", choices=("demo", "wide", "both"), default="both")
    parser.add_argument("--k", type=int, default=1, help="layers of the k-layer variants (default: 1; the demo model has 3)")
    parser.add_argument("--wide-layers", type=int, default=8, help="language-model layers of the wide model (default: 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="records per step (default: 4)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round (default: 4)")
    parser.add_argument("--reps", type=int, default=2, help="rounds (default: 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--records", type=int, nargs="+", help="dataset scale only: the peak memory of a run on N records, each N")
    parser.add_argument("--scale-size", type=int, default=32, help="image side of the dataset-scale records (default: 32)")
    parser.add_argument("--scale-steps", type=int, default=2, help="training steps of a dataset-scale run (default: 2)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the CPU memory subprocess
    parser.add_argument("--scale-of", type=Path, help=argparse.SUPPRESS)  # the dataset-scale subprocess: its dataset
    parser.add_argument("--warm-up", type=Path, help=argparse.SUPPRESS)  # ... and the dataset of its warm-up run
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.scale_of:
        args.dataset = args.scale_of
        print(json.dumps(measure_scale(args)))
        return
    if args.records:
        print(f"machine: {machine(device)}, load average {os.getloadavg()[0]:.1f}; float32; torch {torch.__version__}; "
              f"torch threads: {args.threads}")
        bench_scale(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        records = scenes(Path(folder))
        if args.memory_of:
            loaded = build(args.model, args, device)
            num_layers = len(loaded.adapter.decoder_layers(loaded.model))
            layers = variants(args.model, num_layers, min(args.k, num_layers))[args.memory_of]
            print(json.dumps({"peak_bytes": peak_in_process(loaded, records, layers, args.batch_size)}))
            return
        print(f"machine: {machine(device)}; float32; torch {torch.__version__}; torch threads: {args.threads}")
        for name in (("demo", "wide") if args.model == "both" else (args.model,)):
            bench_model(name, args, device, records)


if __name__ == "__main__":
    main()
