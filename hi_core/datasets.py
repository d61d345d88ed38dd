"""The dataset format (DESIGN 5): a folder with `data.jsonl`, one record per line,
`{"id", "image", "mask", "text", "key_phrase"?}`, paths relative to the folder; the mask is a PNG
of the image's size, nonzero = key object.

`read_dataset` streams validated records and reports bad ones (missing file, mask size mismatch,
empty mask, malformed line) instead of crashing; `write_synthetic` writes a generated set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError
from .masks import check_mask, load_image, load_mask
from .outputs import atomic_path
from .synth import Order, make_scene

logger = logging.getLogger(__name__)

INDEX = "data.jsonl"


@dataclass(frozen=True)
class Record:
    """One example: the image, its key-object mask (H, W) bool, the description, the key phrase."""

    id: str
    image: Image.Image
    mask: np.ndarray
    text: str
    key_phrase: str | None = None


@dataclass
class Problems:
    """Records skipped while reading, as (line number, id or None, reason)."""

    skipped: list[tuple[int, str | None, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        lines = [f"line {line} ({rid or 'no id'}): {reason}" for line, rid, reason in self.skipped]
        return f"{len(self)} bad record(s) skipped:\n" + "\n".join(lines) if lines else "no bad records"


def _parse(folder: Path, line: str) -> Record:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg})") from None
    if not isinstance(entry, dict):
        raise InputError("a record must be a JSON object")
    missing = [key for key in ("id", "image", "mask", "text") if not entry.get(key)]
    if missing:
        raise InputError(f"missing field(s) {', '.join(missing)}")
    wrong = [key for key in ("image", "mask", "text") if not isinstance(entry[key], str)]
    if wrong:
        raise InputError(f"field(s) {', '.join(wrong)} must be strings")
    image = load_image(folder / entry["image"])
    mask = check_mask(load_mask(folder / entry["mask"]), image)
    text = str(entry["text"])
    key_phrase = entry.get("key_phrase") or None
    if key_phrase is not None and key_phrase.lower() not in text.lower():
        raise InputError(f"key phrase {key_phrase!r} does not occur in the text")
    return Record(id=str(entry["id"]), image=image, mask=mask, text=text, key_phrase=key_phrase)


def read_dataset(
    folder: str | Path,
    problems: Problems | None = None,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    skip_ids: Container[str] = (),
) -> Iterator[Record]:
    """Yield the valid records of a dataset folder, in file order; bad ones go to `problems`.

    limit: read only the first `limit` records (non-empty lines, valid or not, so every shard
    agrees on where the data ends). shard (index, count): read only every count-th record,
    starting at the index-th (data-parallel workers split a dataset this way). skip_ids: records
    with these ids are passed over without opening their files (resuming a run).
    """
    folder = Path(folder)
    index = folder / INDEX
    if not index.is_file():
        raise InputError(f"{str(folder)!r} is not a dataset folder: it has no {INDEX}")
    shard_index, shard_count = shard
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"bad shard {shard}")
    problems = problems if problems is not None else Problems()
    with open(index, encoding="utf-8") as lines:
        records = ((number, line) for number, line in enumerate(lines, start=1) if line.strip())
        for position, (number, line) in enumerate(records):
            if limit is not None and position >= limit:
                return
            if position % shard_count != shard_index or (skip_ids and _line_id(line) in skip_ids):
                continue
            try:
                record = _parse(folder, line)
            except InputError as error:
                problems.skipped.append((number, _line_id(line), str(error)))
                logger.warning("skipping %s line %d: %s", INDEX, number, error)
                continue
            yield record


def count_records(folder: str | Path, limit: int | None = None) -> int:
    """How many records (non-empty lines) `read_dataset` will look at, without reading them."""
    if not (Path(folder) / INDEX).is_file():
        raise InputError(f"{str(folder)!r} is not a dataset folder: it has no {INDEX}")
    with open(Path(folder) / INDEX, encoding="utf-8") as lines:
        total = sum(1 for line in lines if line.strip())
    return total if limit is None else min(total, limit)


def record_ids(folder: str | Path, limit: int | None = None) -> Iterator[str | None]:
    """The id of each record (None where a line has none), in file order, without reading files."""
    with open(Path(folder) / INDEX, encoding="utf-8") as lines:
        records = (line for line in lines if line.strip())
        for position, line in enumerate(records):
            if limit is not None and position >= limit:
                return
            yield _line_id(line)


def _line_id(line: str) -> str | None:
    try:
        value = json.loads(line).get("id")
    except (json.JSONDecodeError, AttributeError):
        return None
    return None if value is None else str(value)


def write_synthetic(
    folder: str | Path, n: int = 100, seed: int = 0, size: int = 96, max_objects: int = 3, order: Order = "drawing"
) -> Path:
    """Write `n` generated scenes (images/, masks/, data.jsonl) to `folder`; same seed, same files.

    `order`: objects listed as drawn (the demo model's captions) or in reading order; the images,
    masks and key phrases do not depend on it.
    """
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for index in range(n):
        scene = make_scene(rng, size=size, max_objects=max_objects)
        scene_id = f"synth-{seed}-{index:05d}"
        image_path, mask_path = f"images/{scene_id}.png", f"masks/{scene_id}.png"
        Image.fromarray(scene.image).save(folder / image_path)
        Image.fromarray(scene.masks[scene.key].astype(np.uint8) * 255).save(folder / mask_path)
        records.append({"id": scene_id, "image": image_path, "mask": mask_path, "text": scene.caption(order), "key_phrase": scene.key_phrase})
    with atomic_path(folder / INDEX) as temporary:
        temporary.write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder
