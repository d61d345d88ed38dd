"""The dataset format (DESIGN 5): a folder with `data.jsonl`, one record per line,
`{"id", "image", "mask", "text", "key_phrase"?, "prompt"?}`, paths relative to the folder; the
mask is a PNG of the image's size, nonzero = key object.

Reading is two steps. `scan_dataset` reads only `data.jsonl` (cheap: no image is opened) and
gives every record its line number, its id and, for a malformed one, the reason it is skipped;
`load_record` then opens a record's image and mask. `read_dataset` streams the valid records of a
folder (or of one shard of it) and reports bad ones instead of crashing. Every reader of a dataset
(scoring, resuming, data-parallel shards, the app's gallery, fine-tuning) goes through the same
scan, so all of them agree on which record an id means. The rules:

- A record is a non-blank line. Line numbers are the file's own (1-based, blank lines counted),
  wherever a skipped record is reported. The file is read as bytes and decoded line by line, so a
  line that is not UTF-8 is one skipped record ("not UTF-8"); a UTF-8 byte-order mark before the
  first line is ignored, and so is a `\\r` before a line's end.
- `id`: a non-empty string, or a JSON integer (written as its decimal string: `7` and `"7"` are
  the same id). Anything else (float, boolean, null, list, empty string) is a skipped record.
- Ids are unique: the first record of an id is the one that counts, valid or not (an id is claimed
  by the first line that names it, even if that record is skipped for another reason); every later
  record with that id is skipped as "duplicate id, first at line N". This holds with `limit`,
  `shard` and `skip_ids` alike, since the scan always reads every line before the ones it yields.
- `image`, `mask`, `text`: required, non-empty strings. `key_phrase`, `prompt`: optional; when
  present and not null they must be non-empty strings (null means absent), and the key phrase must
  occur in the text. Unknown fields are ignored.
- Then the files: a missing or unreadable image or mask, a mask of another size than its image, or
  an empty mask make a skipped record too (`load_record`). Its reason names the file as data.jsonl
  does (relative to the dataset folder), never by the folder's path: a server's paths stay its own.
  Files are decoded within `ImageLimits` (the library's pixel cap, full size; a server passes its own
  cap and side, so that a batch of n records holds at most n x side^2 pixels).

A server also bounds the index itself before anything reads it (`check_index`: its size and line
count), and can stop a long read between lines (`stop`: `Cancelled` is raised).

`write_synthetic` writes a generated set in this format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from PIL import Image

from ..base.errors import InputError, check_whole
from ..base.outputs import atomic_path
from ..method.masks import check_mask
from ..model.images import ImageLimits, load_image_and_mask
from ..model.inputs import phrase_span
from .synth import Order, make_scene

logger = logging.getLogger(__name__)

INDEX = "data.jsonl"
REQUIRED = ("id", "image", "mask", "text")
OPTIONAL = ("key_phrase", "prompt")
STOP_EVERY = 1024  # lines read between two looks at a reader's stop flag

#: A stop flag a long read looks at between lines and batches (e.g. `threading.Event().is_set`).
Stop = Callable[[], bool]


class Cancelled(Exception):
    """A read (or a scoring run) stopped because its caller's stop flag was set; nothing was kept."""


class RecordFields(TypedDict, total=False):
    """The checked fields of a well-formed record of data.jsonl (none for a malformed one): file names relative
    to the dataset folder, the description, and the optional key phrase and prompt (None when left out)."""

    image: str
    mask: str
    text: str
    key_phrase: str | None
    prompt: str | None


@dataclass(frozen=True)
class Record:
    """One example: the image, its key-object mask (H, W) bool, the description, the key phrase,
    the record's own prompt (None: the run's prompt), and its line in data.jsonl (0: not from a file)."""

    id: str
    image: Image.Image
    mask: np.ndarray
    text: str
    key_phrase: str | None = None
    prompt: str | None = None
    line: int = 0


@dataclass(frozen=True)
class RecordLine:
    """One record of data.jsonl as scanned, before any file is opened.

    number: the file's own line number (1-based, blank lines counted). id: the record's id, or None
    where it has no usable one. fields: the checked fields (image, mask, text, key_phrase, prompt)
    of a well-formed record. problem: why the record is skipped, or None.
    """

    number: int
    id: str | None
    fields: RecordFields = field(default_factory=RecordFields)
    problem: str | None = None


@dataclass
class Problems:
    """Records skipped while reading, as (line number, id or None, reason)."""

    skipped: list[tuple[int, str | None, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        lines = [f"line {line} ({rid or 'no id'}): {reason}" for line, rid, reason in self.skipped]
        return f"{len(self)} bad record(s) skipped:\n" + "\n".join(lines) if lines else "no bad records"


def _index_path(folder: str | Path) -> Path:
    index = Path(folder) / INDEX
    if not index.is_file():
        raise InputError(f"{str(folder)!r} is not a dataset folder: it has no {INDEX}")
    return index


def check_index(folder: str | Path, max_mb: float | None = None, max_lines: int | None = None) -> None:
    """Refuse a data.jsonl of more than `max_mb` MB (from its size) or `max_lines` lines (newlines counted
    in 1 MiB blocks, nothing parsed) before any reader scans it: every reader reads every line before the
    first record it yields (ids must be unique), so a 5 M-line index would hold a server for minutes."""
    index = _index_path(folder)
    size = index.stat().st_size
    if max_mb is not None and size > max_mb * 1e6:
        raise InputError(f"{INDEX} is {size / 1e6:.1f} MB; this deployment reads at most {max_mb:g} MB")
    if max_lines is None:
        return
    lines, last = 0, b"\n"
    with open(index, "rb") as data:
        while block := data.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    if lines > max_lines:
        raise InputError(f"{INDEX} has {lines:,} lines; this deployment reads at most {max_lines:,}")


def _raw_lines(index: Path, stop: Stop | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line of the file, streamed; `Cancelled` once `stop()`."""
    try:
        lines = open(index, "rb")  # noqa: SIM115  closed by the `with` below; only opening may raise OSError here
    except OSError as error:
        raise InputError(f"cannot read {str(index)!r} ({error.strerror or error})") from None
    with lines:
        for number, raw in enumerate(lines, start=1):
            if stop is not None and number % STOP_EVERY == 0 and stop():
                raise Cancelled(f"stopped while reading {INDEX}, at line {number:,}")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                raw = raw[3:]
            if raw.strip():
                yield number, raw


def make_dataset_folder(folder: str | Path) -> Path:
    """Create `folder` with its images/ and masks/ for writing a dataset; a path that is a file, or
    under one, or that cannot be created, is an InputError (before anything is written)."""
    folder = Path(folder)
    try:
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"cannot write a dataset to {str(folder)!r}: it is a file, or under a file") from None
    except OSError as error:
        raise InputError(f"cannot create the dataset folder {str(folder)!r} ({error.strerror or error})") from None
    return folder


def _record_id(value: Any) -> str | None:
    """The id as a string: a non-empty string as it is, an integer in decimal; else None."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _kind(value: Any) -> str:
    """A JSON value's kind, for messages."""
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_fields(entry: dict[str, Any]) -> tuple[RecordFields, str | None]:
    """The record's checked fields, and why it is malformed (None when it is not)."""
    missing = [key for key in REQUIRED if entry.get(key) is None or entry.get(key) == ""]
    if missing:
        return RecordFields(), f"missing field(s) {', '.join(missing)}"
    if _record_id(entry["id"]) is None:
        return (
            RecordFields(),
            f"id must be a non-empty string or an integer, got {_kind(entry['id'])} {json.dumps(entry['id'])[:40]}",
        )
    wrong = [key for key in ("image", "mask", "text") if not isinstance(entry[key], str)]
    wrong += [key for key in OPTIONAL if entry.get(key) is not None and not isinstance(entry[key], str)]
    if wrong:
        return RecordFields(), "; ".join(f"{key} must be a string, got {_kind(entry[key])}" for key in wrong)
    empty = [key for key in OPTIONAL if isinstance(entry.get(key), str) and not entry[key].strip()]
    if empty:
        return RecordFields(), f"field(s) {', '.join(empty)} are empty (leave them out, or write null, for none)"
    fields = RecordFields(
        image=entry["image"],
        mask=entry["mask"],
        text=entry["text"],
        key_phrase=entry.get("key_phrase"),
        prompt=entry.get("prompt"),
    )
    if fields["key_phrase"] is not None and phrase_span(fields["text"], fields["key_phrase"].strip()) is None:
        return RecordFields(), f"key phrase {fields['key_phrase']!r} does not occur in the text"
    return fields, None


def _scan_line(number: int, raw: bytes) -> RecordLine:
    """One line's id and checked fields, or its problem; no file is opened."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return RecordLine(number, None, problem="not UTF-8")
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        return RecordLine(number, None, problem=f"not valid JSON ({error.msg})")
    except RecursionError:  # thousands of nested brackets
        return RecordLine(number, None, problem="not valid JSON (nested too deeply)")
    if not isinstance(entry, dict):
        return RecordLine(number, None, problem=f"a record must be a JSON object, got {_kind(entry)}")
    record_id = _record_id(entry.get("id"))
    fields, problem = _check_fields(entry)
    return RecordLine(number, record_id, fields, problem)


def scan_dataset(folder: str | Path, limit: int | None = None, stop: Stop | None = None) -> Iterator[RecordLine]:
    """Every record (non-blank line) of data.jsonl in file order, up to `limit` records, with its id
    and any problem, duplicate ids included; reads only data.jsonl (no image is opened). `stop`: looked
    at every `STOP_EVERY` lines; `Cancelled` is raised once it says so."""
    first_line: dict[str, int] = {}
    for position, (number, raw) in enumerate(_raw_lines(_index_path(folder), stop)):
        if limit is not None and position >= limit:
            return
        line = _scan_line(number, raw)
        record_id = line.id
        if record_id is not None:
            if record_id in first_line:
                line = RecordLine(number, record_id, problem=f"duplicate id, first at line {first_line[record_id]}")
            else:
                first_line[record_id] = number
        yield line


def load_record(folder: str | Path, line: RecordLine, limits: ImageLimits | None = None) -> Record:
    """Open a well-formed record's image and mask within `limits` (None: the library's pixel cap, full
    size). InputError: missing, unreadable, over the cap, mismatched, empty; the files named as the
    record names them (relative to the dataset folder)."""
    if line.problem is not None or line.id is None:
        raise InputError(line.problem or "the record has no id")
    folder = Path(folder)
    fields = line.fields
    image, mask = load_image_and_mask(
        folder / fields["image"],
        folder / fields["mask"],
        limits or ImageLimits(),
        names=(fields["image"], fields["mask"]),
    )
    mask = check_mask(mask, image)
    return Record(
        id=line.id,
        image=image,
        mask=mask,
        text=fields["text"],
        key_phrase=fields["key_phrase"],
        prompt=fields["prompt"],
        line=line.number,
    )


def read_dataset(
    folder: str | Path,
    problems: Problems | None = None,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    skip_ids: Container[str] = (),
    limits: ImageLimits | None = None,
    stop: Stop | None = None,
) -> Iterator[Record]:
    """Yield the valid records of a dataset folder, in file order; bad ones go to `problems`.

    limit: read only the first `limit` records (non-blank lines, valid or not, so every shard
    agrees on where the data ends). shard (index, count): yield only every count-th record,
    starting at the index-th (data-parallel workers split a dataset this way); duplicates are
    still found across shards. skip_ids: records with these ids are passed over without opening
    their files or reporting them (resuming a run; reading only some records). limits: how far
    each file may be decoded (`load_record`). stop: `Cancelled` is raised once it says so (looked at
    while scanning and before each record's files are opened).
    """
    shard_index, shard_count = shard
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"bad shard {shard}")
    problems = problems if problems is not None else Problems()
    for position, line in enumerate(scan_dataset(folder, limit, stop)):
        if position % shard_count != shard_index or (skip_ids and line.id in skip_ids):
            continue
        if stop is not None and stop():
            raise Cancelled(f"stopped before line {line.number} of {INDEX}")
        try:
            yield load_record(folder, line, limits)
        except InputError as error:
            problems.skipped.append((line.number, line.id, str(error)))
            logger.warning("skipping %s line %d: %s", INDEX, line.number, error)


def count_records(folder: str | Path, limit: int | None = None, stop: Stop | None = None) -> int:
    """How many records (non-blank lines) `read_dataset` will look at, without reading them."""
    total = sum(1 for _ in _raw_lines(_index_path(folder), stop))
    return total if limit is None else min(total, limit)


def record_ids(folder: str | Path, limit: int | None = None) -> Iterator[str | None]:
    """The id of each record (None where a line has none), in file order, without opening files."""
    return (line.id for line in scan_dataset(folder, limit))


def write_generated(folder: str | Path, records: Iterable[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]) -> Path:
    """Write generated records, each (id, image (H, W, 3) uint8, mask (H, W) bool, the other fields), as a
    dataset in `folder` (new or empty): images/ID.png, masks/ID.png, and data.jsonl written last, atomically."""
    folder = make_dataset_folder(folder)
    lines = []
    for record_id, image, mask, fields in records:
        image_path, mask_path = f"images/{record_id}.png", f"masks/{record_id}.png"
        Image.fromarray(image).save(folder / image_path)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / mask_path)
        lines.append(json.dumps({"id": record_id, "image": image_path, "mask": mask_path, **fields}) + "\n")
    with atomic_path(folder / INDEX) as temporary:
        temporary.write_text("".join(lines))
    return folder


def write_synthetic(
    folder: str | Path, n: int = 100, seed: int = 0, size: int = 96, max_objects: int = 3, order: Order = "drawing"
) -> Path:
    """Write `n` generated scenes (images/, masks/, data.jsonl) to `folder`; same seed, same files.

    `order`: objects listed as drawn (the demo model's captions) or in reading order; the images,
    masks and key phrases do not depend on it.
    """
    check_whole("n", n)
    rng = np.random.default_rng(seed)

    def records():
        for index in range(n):
            scene = make_scene(rng, size=size, max_objects=max_objects)
            yield (
                f"synth-{seed}-{index:05d}",
                scene.image,
                scene.masks[scene.key],
                {"text": scene.caption(order), "key_phrase": scene.key_phrase},
            )

    return write_generated(folder, records())
