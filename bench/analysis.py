"""How long one analysis takes with the demo model on this machine (the app's "Analyze" button).

Measured side by side in one run, on the example images, medians over repetitions interleaved
across the variants so machine noise hits all alike:
  forward   one plain SDPA forward pass of the same sequence (the floor)
  analyze   hi_core.analysis.analyze_image: inputs, capture, mask on the grid, HI of every head
  app       the app's whole handler: analyze + every figure + the download files

Run: python bench/analysis.py [--model demo] [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from hi_core.analysis import AnalysisConfig, analyze_image, run_forward  # noqa: E402
from hi_core.datasets import read_dataset  # noqa: E402
from hi_core.inputs import build_inputs  # noqa: E402
from hi_core.loading import LoadConfig, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(LoadConfig(args.model, device="cpu"))
    records = list(read_dataset(app.EXAMPLES_DIR))
    timings: dict[str, list[float]] = {"forward": [], "analyze": [], "app": []}

    def forward(record):
        inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, record.image, "Describe the image.", record.text)
        with torch.inference_mode():
            run_forward(loaded, inputs.tensors)

    def analyze(record):
        analyze_image(loaded, record.image, record.mask, record.text, AnalysisConfig(key_phrase=record.key_phrase))

    def handler(record):
        analysis = analyze_image(loaded, record.image, record.mask, record.text, AnalysisConfig(key_phrase=record.key_phrase))
        session = app.Session(analysis=analysis, image=app.np.asarray(record.image), mask=record.mask, selected=analysis.ranked_heads()[0])
        views = app._views(session, 8, 0, 4)
        app._downloads(session, views)

    variants = {"forward": forward, "analyze": analyze, "app": handler}
    for function in variants.values():  # warm-up
        function(records[0])
    for _ in range(args.reps):
        for record in records:
            for name, function in variants.items():
                started = time.perf_counter()
                function(record)
                timings[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in timings.items()}
    print(f"model {args.model}, {len(records)} example images x {args.reps} reps, torch threads {torch.get_num_threads()}")
    for name in variants:
        print(f"{name:>8}: median {median[name] * 1000:7.1f} ms  ({median[name] / median['forward']:.2f}x forward)")


if __name__ == "__main__":
    main()
