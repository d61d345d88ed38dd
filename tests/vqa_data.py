"""Tiny closed-form VQA datasets written by hand for the tests: one coloured square per image, the
question in the record's `prompt` (words the tiny models' tokenizer knows), the answer as `text`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 230)}
PLACES = {"top": (2, 17), "bottom": (32, 17), "left": (17, 2), "right": (17, 32)}  # (row, column) of a 14-px square
QUESTIONS = {place: f"what is at the {place} ?" for place in PLACES}


def write_vqa_dataset(folder: Path, n: int = 8, prompts: str = "all", seed: int = 0) -> Path:
    """`n` 48x48 records: a square of colour c at place p, the question "what is at the p ?", the
    answer "c", the square's mask. prompts: "all" (every record has its question), "none" (no record
    has a prompt), or "some" (the odd records have none)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    lines = []
    for index in range(n):
        colour, place = list(COLOURS)[index % len(COLOURS)], list(PLACES)[index % len(PLACES)]
        pixels = (rng.random((48, 48, 3)) * 60).astype(np.uint8)
        mask = np.zeros((48, 48), dtype=bool)
        row, column = PLACES[place]
        mask[row : row + 14, column : column + 14] = True
        pixels[mask] = COLOURS[colour]
        name = f"vqa-{index:02d}"
        Image.fromarray(pixels).save(folder / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
        record = {"id": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png", "text": colour}
        if prompts == "all" or (prompts == "some" and index % 2 == 0):
            record["prompt"] = QUESTIONS[place]
        lines.append(json.dumps(record) + "\n")
    (folder / "data.jsonl").write_text("".join(lines))
    return folder
