"""Which part of the key object an ablation takes away: for each condition of an `ablate` folder on
synthetic descriptions, the share of held-out captions that contain the key object's size, colour and
shape words (each alone, whole words), beside the whole key phrase, and the share of captions of at
most four words (a collapse of generation rather than a wrong word).

    python docs/heads-demo/key_words.py ABLATE_FOLDER [ABLATE_FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hi_core.causal.ablation import key_named
from hi_core.model.metrics import normalize_caption
from hi_core.data.synth import COLOURS, SHAPES, SIZES


def attribute(phrase: list[str], vocabulary) -> str | None:
    return next((word for word in phrase if word in vocabulary), None)


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
        print(f"## {folder} ({len(rows)} captions)")
        print("| condition | size word | colour word | shape word | key phrase | captions of <= 4 words |")
        print("|---|---|---|---|---|---|")
        for condition in rows[0]["generated"]:
            counts = {"size": 0, "colour": 0, "shape": 0, "phrase": 0, "short": 0}
            for row in rows:
                generated = row["generated"][condition]
                caption, phrase = normalize_caption(generated).split(), normalize_caption(row["key_phrase"]).split()
                for name, vocabulary in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES)):
                    counts[name] += attribute(phrase, vocabulary) in caption
                counts["phrase"] += key_named(generated, row["key_phrase"])
                counts["short"] += len(caption) <= 4
            shares = " | ".join(f"{counts[name] / len(rows):.3f}" for name in counts)
            print(f"| {condition} | {shares} |")


if __name__ == "__main__":
    main(sys.argv[1:])
