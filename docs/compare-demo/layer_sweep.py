"""LoRA on one layer at a time: for a folder of `finetune --layers L --seed S` runs named runs/layerL-seedS,
the held-out metric per layer (mean over seeds, 95% t-interval) beside the layer's HI score, and the rank
correlation between the two (Spearman over the layers, exact permutation p-value). For captions it adds
the share of the reference's objects the caption names in full (size, colour, shape) and the share of
multi-object captions in reading order (reading_order.py).

    python docs/compare-demo/layer_sweep.py SWEEP_FOLDER SCORE.json [--plot OUT.png]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import permutation_test, spearmanr

from hi_core.causal.ablation import key_named
from hi_core.tuning.intervals import mean_interval
from hi_core.data.synth import COLOURS, SHAPES, SIZES

from reading_order import captions, reading_order_share

RUN_NAME = re.compile(r"layer(\d+)-seed(\d+)")
OBJECT = re.compile(rf"\b(?:{'|'.join(SIZES)}) (?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})\b")


def objects_named(run: Path) -> float:
    """The share of the reference captions' objects ("big red circle") that the generated caption names."""
    named = [key_named(row["generated"], phrase) for row in captions(run) for phrase in OBJECT.findall(row["reference"])]
    return float(np.mean(named))


def spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its exact two-sided permutation p-value (a handful of layers:
    every pairing is tried)."""
    test = permutation_test((x, y), lambda a, b: spearmanr(a, b).statistic, permutation_type="pairings",
                            n_resamples=np.inf)
    return float(test.statistic), float(test.pvalue)


def sweep(folder: Path) -> dict[int, dict[str, list[float]]]:
    """Per layer, per measure, the value of each seed's run."""
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted((folder / "runs").iterdir()):
        match = RUN_NAME.fullmatch(run.name)
        if match is None:
            continue
        record = json.loads((run / "run.json").read_text())
        layer = int(match.group(1))
        if record["task"] == "vqa":
            values[layer]["answer accuracy"].append(record["metrics"]["accuracy"])
        else:
            values[layer]["BLEU-4"].append(record["metrics"]["bleu4"])
            values[layer]["objects named"].append(objects_named(run))
            values[layer]["in reading order"].append(reading_order_share(run))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("ranking", type=Path, help="the JSON `score` wrote (its layer scores)")
    parser.add_argument("--plot", type=Path, help="write a figure: layer score and each measure per layer")
    args = parser.parse_args()

    scores = {entry["layer"]: entry["score"] for entry in json.loads(args.ranking.read_text())["layers"]}
    values = sweep(args.folder)
    layers = sorted(values)
    measures = list(values[layers[0]])
    print("| layer | HI layer score | " + " | ".join(measures) + " |")
    print("|---" * (2 + len(measures)) + "|")
    summaries = {name: [mean_interval(values[layer][name]) for layer in layers] for name in measures}
    for row, layer in enumerate(layers):
        cells = [f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]" for s in (summaries[n][row] for n in measures)]
        print(f"| {layer} | {scores[layer]:.3f} | " + " | ".join(cells) + " |")
    for name in measures:
        rho, p = spearman([scores[layer] for layer in layers], [s["mean"] for s in summaries[name]])
        print(f"Spearman(layer score, {name}) over {len(layers)} layers: {rho:+.2f} (p = {p:.2f})")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 1 + len(measures), figsize=(3.6 * (1 + len(measures)), 3.0))
        axes[0].bar(layers, [scores[layer] for layer in layers], color="0.55")
        axes[0].set_title("HI layer score\n(the ranking's scored set)", fontsize=10)
        axes[0].set_xlabel("layer")
        for axis, name in zip(axes[1:], measures):
            means = np.array([s["mean"] for s in summaries[name]])
            errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] for s in summaries[name]]).T
            axis.bar(layers, means, yerr=errors, capsize=3, color="tab:blue")
            low = float((means - errors[0]).min())
            axis.set_ylim(max(0.0, low - 0.1 * (means.max() - low + 1e-9)), None)
            axis.set_title(f"{name}\nLoRA on this layer only", fontsize=10)
            axis.set_xlabel("layer")
        figure.suptitle("One layer at a time (whiskers: 95% interval over seeds)", fontsize=10)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
