"""Cost of capturing attention rows for HI, next to a plain forward and to eager attention.

Three ways through one teacher-forced forward of a LLaVA-layout model, measured side by side:
  (a) sdpa     plain SDPA forward, `use_cache=False, logits_to_keep=1` (hi_core.method.maps.run_forward);
  (b) capture  hi_core's path: `head_maps` (SDPA + response rows x image keys captured per layer),
               then `score_maps` (HI, mass, chance);
  (c) eager    eager attention with `output_attentions=True` (one (B, H, T, T) tensor per layer),
               then the same row selection, mean over rows and `score_maps`.
Random weights: a tiny CLIP vision tower (1 layer, hidden 32, patch 8: its cost is negligible) and a
Qwen2 text model with Qwen2-VL-2B's dimensions (hidden 1536, 12 heads, 2 KV heads, intermediate 8960,
vocab 151936, tied embeddings; `--layers` of its 28). The sequence: a short prompt, side x side image
tokens (side chosen to reach each `--lengths` target) and 64 response tokens (the query rows).

Time: one warm-up round, then `--reps` rounds interleaved (a, b, c, a, b, c, ...) so that machine
noise hits all variants alike; medians, and ratios of medians. Memory: on CUDA,
`torch.cuda.max_memory_allocated` above the memory allocated before the call. On CPU every variant
runs in a fresh subprocess (build, one warm-up call, the measured call): the peak RSS of the measured
call (VmHWM, reset through /proc/self/clear_refs) above the RSS before it. glibc's mmap threshold is
fixed at 64 KiB there, so freed tensors go back to the OS and RSS follows live tensors, not caches.

    python bench/capture.py --layers 2              # CPU: float32, ~1k and ~4k tokens (~7 min, 2 cores)
    python bench/capture.py                         # GPU: bf16, all 28 layers, ~1k / 4k / 16k tokens
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision / output_attentions notices
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hi_core and tests/ from this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, LlavaConfig, LlavaProcessor  # noqa: E402
from transformers.initialization import no_init_weights  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

from hi_core.method.maps import head_maps, run_forward  # noqa: E402
from hi_core.families.llava import LlavaAdapter  # noqa: E402
from hi_core.model.inputs import ModelInputs, build_inputs  # noqa: E402
from hi_core.model.loading import LoadedModel  # noqa: E402
from hi_core.method.masks import MaskGrid, object_patches  # noqa: E402
from hi_core.method.scoring import ScoringConfig, score_maps  # noqa: E402
from tests.tiny_models import CHAT_TEMPLATE, word_tokenizer  # noqa: E402

QWEN2_VL_2B_TEXT = dict(
    model_type="qwen2", hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
    intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)
HEADS, REAL_LAYERS, PATCH = 12, 28, 8
PROMPT = "describe the image ."
RESPONSE = " ".join(("a big red circle at the top left and a small blue square on the right . " * 5).split()[:64])


@dataclass
class Case:
    """One model and one sequence: everything the three variants need."""

    loaded: LoadedModel
    inputs: ModelInputs  # tensors already on the device, floating ones in the model's dtype
    tokens: np.ndarray  # (64,) indices of the scored response tokens: all of them
    grid: MaskGrid  # a rectangular key object on the side x side grid


def build_case(side: int, layers: int, dtype: torch.dtype, device: torch.device) -> Case:
    """A random-weight LLaVA with a side x side image grid, and the benchmark sequence for it."""
    image_size = side * PATCH
    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    crop = {"height": image_size, "width": image_size}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop)
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH, chat_template=CHAT_TEMPLATE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=PATCH),
        text_config=dict(QWEN2_VL_2B_TEXT, num_hidden_layers=layers),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=True,
    )
    with torch.device(device), no_init_weights():  # one random fill below instead of two inits
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.tie_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, config.text_config.initializer_range)
            else:
                parameter.fill_(0.0 if name.endswith("bias") else 1.0)  # biases 0, norm scales 1
    loaded = LoadedModel("random Qwen2-VL-2B-sized LLaVA", model.eval(), processor, LlavaAdapter(), device)
    pixels = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    inputs = build_inputs(loaded.adapter, model, processor, Image.fromarray(pixels), PROMPT, RESPONSE)
    inputs.tensors = {key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
                      for key, value in inputs.tensors.items()}
    fractions = np.zeros((side, side))
    fractions[side // 4 : side // 2, side // 3 : 2 * side // 3] = 1.0
    return Case(loaded, inputs, np.arange(inputs.num_response_tokens), object_patches(fractions, inputs.layout.valid))


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """The language model on eager attention inside the block, on SDPA again after it."""
    model.set_attn_implementation({"text_config": "eager"})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})


def run_sdpa(case: Case) -> None:
    with torch.inference_mode():
        run_forward(case.loaded, case.inputs.tensors)


def run_capture(case: Case) -> np.ndarray:
    maps = head_maps(case.loaded, case.inputs, case.tokens, "producing")  # (layers, heads, gh, gw)
    score_maps(maps, case.grid.object_patches, case.inputs.layout.valid, ScoringConfig())
    return maps


@torch.inference_mode()
def run_eager(case: Case) -> np.ndarray:
    layout, device = case.inputs.layout, case.loaded.device
    rows = torch.as_tensor(case.inputs.query_positions(case.tokens, "producing"), device=device)
    cols = torch.as_tensor(layout.positions.reshape(-1), device=device)
    with eager_attention(case.loaded.model):
        output = case.loaded.model(**case.inputs.tensors, use_cache=False, logits_to_keep=1, output_attentions=True)
    picked = torch.stack([layer[0][:, rows][:, :, cols].float() for layer in output.attentions])  # (L, H, R, V)
    maps = picked.mean(dim=2).reshape(*picked.shape[:2], *layout.grid).cpu().numpy()
    score_maps(maps, case.grid.object_patches, layout.valid, ScoringConfig())
    return maps


VARIANTS: dict[str, Callable[[Case], object]] = {"sdpa": run_sdpa, "capture": run_capture, "eager": run_eager}
LABELS = {"sdpa": "(a) sdpa forward", "capture": "(b) capture + score", "eager": "(c) eager + score"}


def timed(fn: Callable[[Case], object], case: Case) -> float:
    synchronize = torch.cuda.synchronize if case.loaded.device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    fn(case)
    synchronize()
    return time.perf_counter() - start


def proc_kib(field: str, path: str = "/proc/self/status") -> int:
    line = next(line for line in Path(path).read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_in_process(fn: Callable[[Case], object], case: Case) -> int:
    """Bytes above the memory in use before one call of `fn` (the caller ran a warm-up call)."""
    gc.collect()
    if case.loaded.device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(case)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = proc_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    fn(case)
    return (proc_kib("VmHWM") - before) * 1024


def peak_in_subprocess(variant: str, side: int, args: argparse.Namespace) -> int | None:
    command = [sys.executable, __file__, "--device", "cpu", "--dtype", args.dtype, "--layers", str(args.layers),
               "--threads", str(args.threads), "--memory-of", variant, "--side", str(side)]
    done = subprocess.run(command, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  memory run of {variant} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return proc_kib("MemAvailable", "/proc/meminfo") * 1024


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def time_variants(case: Case, reps: int, failed: dict[str, str]) -> dict[str, list[float]]:
    """Seconds of each call: one warm-up round, then `reps` rounds a, b, c, a, b, c, ..."""
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(reps + 1):
        for name, fn in VARIANTS.items():
            if name in failed:
                continue
            try:
                seconds = timed(fn, case)
            except torch.OutOfMemoryError:
                failed[name] = "out of memory"
                gc.collect()
                torch.cuda.empty_cache()
            else:
                if round_index:
                    times[name].append(seconds)
    return times


def bench_length(length: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    side = max(2, round((length - 76) ** 0.5))  # ~12 prompt tokens + side^2 image tokens + 64 response
    case = build_case(side, args.layers, dtype, device)
    tokens = case.inputs.tensors["input_ids"].shape[1]
    attention_bytes = args.layers * HEADS * tokens**2 * dtype.itemsize  # what (c) returns
    failed: dict[str, str] = {}
    if 1.5 * attention_bytes > free_bytes(device):
        failed["eager"] = f"skipped: its attentions alone need {attention_bytes / 2**30:.1f} GiB"
    times = time_variants(case, args.reps, failed)
    peaks: dict[str, int | None] = {}
    for name, fn in VARIANTS.items():
        if name in failed:
            peaks[name] = None
        elif device.type == "cuda":
            peaks[name] = peak_in_process(fn, case)
        else:
            peaks[name] = peak_in_subprocess(name, side, args)

    print(f"\nT = {tokens} tokens: {side}x{side} = {side * side} image tokens, 64 response rows; "
          f"medians of {args.reps} reps after 1 warm-up")
    print(f"  {'variant':20} {'time s':>8} {'x (a)':>7} {'peak MiB':>9}   all times s")
    base = statistics.median(times["sdpa"]) if times["sdpa"] else None
    for name in VARIANTS:
        if name in failed:
            print(f"  {LABELS[name]:20} {failed[name]}")
            continue
        median = statistics.median(times[name])
        ratio = f"{median / base:.2f}x" if base else "n/a"
        print(f"  {LABELS[name]:20} {median:8.2f} {ratio:>7} {mib(peaks[name]):>9}   "
              + " ".join(f"{t:.2f}" for t in times[name]))
    rows_bytes = args.layers * HEADS * 64 * side * side * 4
    if peaks["capture"] is not None and peaks["sdpa"] is not None:
        print(f"  (b) - (a) peak: {mib(peaks['capture'] - peaks['sdpa'])} MiB; captured rows "
              f"L*H*R*V*4 = {args.layers}*{HEADS}*64*{side * side}*4 B = {mib(rows_bytes)} MiB")
    print(f"  (c) returns L*H*T^2*{dtype.itemsize} B of attentions = {mib(attention_bytes)} MiB")
    if not failed:
        difference = np.abs(run_capture(case) - run_eager(case)).max()
        print(f"  check: max |maps of (b) - maps of (c)| = {difference:.1e}")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    return f"{names[0] if names else 'CPU'}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--layers", type=int, help=f"language-model layers (default: {REAL_LAYERS} on CUDA, 2 on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", help="target tokens (default: 1000 4000, and 16000 on CUDA)")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up round (default: 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--memory-of", choices=tuple(VARIANTS), help=argparse.SUPPRESS)  # the CPU memory subprocess
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.layers = args.layers or (REAL_LAYERS if cuda else 2)
    args.lengths = args.lengths or ([1000, 4000, 16000] if cuda else [1000, 4000])
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.memory_of:
        case = build_case(args.side, args.layers, dtype, device)
        VARIANTS[args.memory_of](case)  # warm-up
        print(json.dumps({"peak_bytes": peak_in_process(VARIANTS[args.memory_of], case)}))
        return
    print(f"model: LLaVA layout, tiny CLIP vision tower + random Qwen2 text model of Qwen2-VL-2B's "
          f"dimensions, {args.layers} of its {REAL_LAYERS} layers")
    print(f"machine: {machine(device)}; {args.dtype}; torch {torch.__version__}; torch threads: {args.threads}")
    print("memory: " + ("torch.cuda.max_memory_allocated above allocated before the call" if cuda else
                        "peak RSS above RSS before the call, a fresh subprocess per variant and length"))
    for length in args.lengths:
        bench_length(length, args, device, dtype)


if __name__ == "__main__":
    main()
