"""Answer accuracy per question kind for each condition of an `ablate` folder on closed-form VQA, with
each condition's most frequent answer to the kind's questions (a wrong answer of the right kind, e.g.
another colour, is lost perception; an answer of another kind, e.g. "no" to a colour question, is a
misread question). The kinds come from the dataset's `kind` field (`dataset synth --task vqa`).

    python docs/heads-demo/per_kind.py DATASET_FOLDER ABLATE_FOLDER [ABLATE_FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from hi_core.model.metrics import normalize_answer


def main(dataset: str, folders: list[str]) -> None:
    records = (json.loads(line) for line in (Path(dataset) / "data.jsonl").read_text().splitlines())
    kinds = {record["id"]: record.get("kind", "-") for record in records}
    for folder in map(Path, folders):
        rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
        correct: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        answers: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        for row in rows:
            kind = kinds[row["id"]]
            for condition, answer in row["generated"].items():
                correct[condition][kind].append(normalize_answer(answer) == normalize_answer(row["reference"]))
                answers[condition][kind][answer] += 1
        sizes = Counter(kinds[row["id"]] for row in rows)
        names = sorted(sizes)
        print(f"## {folder} ({len(rows)} questions: " + ", ".join(f"{sizes[kind]} {kind}" for kind in names) + ")")
        print("| condition | " + " | ".join(names) + " |")
        print("|---" * (1 + len(names)) + "|")
        for condition, by_kind in correct.items():
            cells = []
            for kind in names:
                answer, count = answers[condition][kind].most_common(1)[0]
                cells.append(f"{sum(by_kind[kind]) / len(by_kind[kind]):.2f} ('{answer}' x{count})")
            print(f"| {condition} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
