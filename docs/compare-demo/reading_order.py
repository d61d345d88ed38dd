"""The reading-order task measured directly: for each compare folder, the share of held-out scenes with
several objects whose generated caption lists them top to bottom, then left to right (by the positions it
writes: `hi_core.data.synth.in_reading_order`), per run, then per strategy (mean over seeds, 95% t-interval) and
top - random, top - bottom (95% Welch interval), as `compare` reports its metrics.

    python docs/compare-demo/reading_order.py COMPARE_FOLDER [COMPARE_FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from hi_core.tuning.intervals import difference_interval, mean_interval
from hi_core.data.synth import in_reading_order


def captions(run: Path) -> list[dict]:
    """A run's held-out records with their generated captions (`captions.jsonl`)."""
    return [json.loads(line) for line in (run / "captions.jsonl").read_text().splitlines()]


def reading_order_share(run: Path) -> float:
    rows = captions(run)
    several = [row["generated"] for row in rows if " and " in row["reference"]]
    return float(np.mean([in_reading_order(caption) for caption in several]))


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        shares: dict[str, list[float]] = defaultdict(list)
        for run in sorted((folder / "runs").iterdir()):
            strategy = run.name.rsplit("-seed", 1)[0]
            shares[strategy].append(reading_order_share(run))
        print(f"## {folder}")
        for strategy, values in shares.items():
            entry = mean_interval(values)
            interval = "" if entry["low"] is None else f" [{entry['low']:.3f}, {entry['high']:.3f}]"
            print(f"{strategy}: {entry['mean']:.3f}{interval}  (runs: {', '.join(f'{v:.3f}' for v in values)})")
        first = "top-heads" if "top-heads" in shares else "top"
        for other in ("random", "bottom", "random-heads", "bottom-heads", "top"):
            if other != first and other in shares and len(shares[other]) > 1 and len(shares[first]) > 1:
                entry = difference_interval(shares[first], shares[other])
                print(f"{first} - {other}: {entry['difference']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
