"""`validate` with and without reusing what a head's removal cannot change (hi_core/model/replay.py), side by side.

One process, one model, one dataset: a warm-up (a tiny `validate`), then the same `validate` twice, timed with
`time.perf_counter()`: `whole` (every pass computes the image features and every decoder layer: the reuse turned
off by replacing `head_effects.replaying` with a no-op) and `reused` (as shipped). Prints both times, their
ratio and the largest difference between the two runs' effects and dose-response curves (0 up to float rounding:
the reuse changes no number). Records: generated scenes (`write_synthetic`, seed 11), the held-out fifth by hash
as `validate` splits; `--records` caps them.

    python bench/validate_speed.py                                   # demo, 32 records, all 48 heads, 20 orders
    python bench/validate_speed.py --model smolvlm-256m --records 2 --heads 2 --orders 1 --max-k 2 --modes zero

`--model smolvlm-256m` / `qwen2-vl-2b`: the released architectures at true size with random weights
(tests/real_models.py builds them once into ~/.cache/hi-explorer/real-size); the scenes are 96-px images, which
their processors upscale to their own sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def model_source(name: str) -> str:
    if name in ("smolvlm-256m", "qwen2-vl-2b"):
        from tests.real_models import build_real_model

        return str(build_real_model(name))
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--records", type=int, default=32, help="held-out records (default: %(default)s)")
    parser.add_argument("--heads", type=int, help="a seeded sample of heads removed one by one (default: all)")
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--max-k", type=int)
    parser.add_argument("--modes", default="zero,mean")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    import hi_core.causal.head_effects as head_effects
    from hi_core.data.datasets import write_synthetic
    from hi_core.tuning.finetune import DataConfig
    from hi_core.model.loading import LoadConfig, load_model
    from hi_core.causal.validation import ValidationConfig, validate

    torch.set_num_threads(args.threads)
    loaded = load_model(LoadConfig(model_source(args.model), device="cpu"))
    config = ValidationConfig(modes=tuple(args.modes.split(",")), heads=args.heads, orders=args.orders, max_k=args.max_k,
                              ranking_records=2, mean_records=2, data=DataConfig(eval_limit=args.records))
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(folder, max(200, 6 * args.records), seed=11)
        warm_up = ValidationConfig(modes=("zero",), heads=1, orders=1, max_k=1, ranking_records=1, mean_records=1,
                                   data=DataConfig(eval_limit=2))
        validate(loaded, folder, warm_up)  # first forwards, lazy imports: paid before either timing
        timings, runs = {}, {}
        shipped = head_effects.replaying
        for name in ("whole", "reused"):
            head_effects.replaying = shipped if name == "reused" else (lambda plan: contextlib.nullcontext())
            begin = time.perf_counter()
            runs[name] = validate(loaded, folder, config)
            timings[name] = time.perf_counter() - begin
            print(f"{name:7s} {timings[name]:8.1f} s", flush=True)
        head_effects.replaying = shipped
    whole, reused = runs["whole"], runs["reused"]
    difference = max(max(float(np.abs(whole.effects[m] - reused.effects[m]).max()) for m in whole.effects),
                     max(float(np.abs(whole.curves[n] - reused.curves[n]).max()) for n in whole.curves))
    passes = len(whole.heads) * len(config.modes) + sum(len(group) for group in whole.orders.values()) * (len(whole.ks) - 1)
    print(f"| {args.model} | {args.threads} | {len(whole.record_ids)} records, {len(whole.heads)} heads, {args.orders} "
          f"orders, k <= {whole.ks[-1]} (~{passes} passes) | {timings['whole']:.0f} s | {timings['reused']:.0f} s | "
          f"**{timings['whole'] / timings['reused']:.2f}x** | {difference:.1e} |")


if __name__ == "__main__":
    main()
