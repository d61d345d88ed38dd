"""The cache of a dataset's scoring (`dataset_scoring.score_dataset`): per-image results kept between runs, so a rerun
with the same settings, or a run after an interruption, scores only the images that are missing.

The cache folder holds `config.json` (the settings its results depend on: `cache_settings`; a cache of other
settings, a file, or a folder of part files without config.json is refused with an InputError
before any image is scored: `check_cache_folder`) and one part file per process (`PartWriter`): scored images and
records whose files failed, by id and the record's fingerprint (its fields, and its image's and
mask's size and modification time: `record_fingerprint`), so a record edited or whose files were
replaced since it was cached is scored again. Lines of a part file that cannot be read (cut short
by a kill, or edited) are ignored, and those records scored again (`read_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..base.errors import InputError
from ..base.outputs import write_json
from ..model.loading import LoadedModel
from .dataset_analysis import DatasetConfig, ImageScore
from .datasets import RecordLine

CONFIG_FILE = "config.json"
PART_PATTERN = "part-*.jsonl"


#: A record's result by (id, fingerprint): its score, or its failure {"id", "skipped": reason, "line"?: n}.
Entries = dict[tuple[str, str], "ImageScore | dict[str, Any]"]


def cache_settings(loaded: LoadedModel, folder: Path, config: DatasetConfig) -> dict[str, Any]:
    """What a cached per-image result depends on; a cache made with other settings is refused."""
    analysis = config.analysis
    return {
        "model": loaded.name,
        "dataset": str(folder.resolve()),
        "dtype": str(loaded.model.dtype),
        "prompt": analysis.prompt,
        "queries": analysis.queries,
        "key_phrase": analysis.key_phrase,
        "use_key_phrases": config.use_key_phrases,
        "scoring": asdict(analysis.scoring),
    } | ({"image_limits": asdict(config.image_limits)} if config.image_limits is not None else {})


def check_cache_folder(cache: str | Path) -> Path:
    """Refuse a cache path that cannot be a cache folder, before any model work: an existing file,
    a path under a file, or a folder holding part files but no config.json (results of unknown
    settings). The CLI can call this before loading the model."""
    cache = Path(cache)
    for parent in (cache, *cache.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == cache else f"is under {str(parent)!r}, which is a file"
            raise InputError(f"the cache {str(cache)!r} {what}: give a folder (it is created if missing)")
        if parent.is_dir():
            break
    if cache.is_dir():
        if not (cache / CONFIG_FILE).is_file() and ((cache / CONFIG_FILE).exists() or any(cache.glob(PART_PATTERN))):
            raise InputError(
                f"the folder {str(cache)!r} holds results without a readable {CONFIG_FILE}: "
                "it is not a cache of this program; delete it or choose another cache folder"
            )
        odd = sorted(part.name for part in cache.glob(PART_PATTERN) if not part.is_file())
        if odd:
            raise InputError(f"the cache {str(cache)!r} holds {', '.join(odd)}, which should be files: delete them")
        if not os.access(cache, os.W_OK | os.X_OK):
            raise InputError(f"the cache folder {str(cache)!r} is not writable")
    return cache


def open_cache(cache: Path, settings: dict[str, Any], main_process: bool) -> None:
    """Create the cache folder, or check that an existing one was made with the same settings."""
    check_cache_folder(cache)
    path = cache / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            saved = None
        if not isinstance(saved, dict):
            raise InputError(
                f"the cache {str(cache)!r} has an unreadable {CONFIG_FILE}; delete the folder or choose another"
            )
        differing = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
        if differing:
            raise InputError(
                f"the cache {str(cache)!r} holds results made with other settings ({', '.join(differing)}); "
                "delete it or choose another cache folder"
            )
    elif main_process:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            write_json(path, settings)
        except OSError as error:
            raise InputError(f"cannot create the cache folder {str(cache)!r} ({error.strerror or error})") from None


def record_fingerprint(folder: Path, line: RecordLine) -> str:
    """What a record's score depends on besides the run's settings: its checked fields (text, key
    phrase, prompt, file names) and its image's and mask's size and modification time. A cached
    result whose fingerprint differs from the record's now is stale and scored again."""
    parts = [json.dumps(line.fields, sort_keys=True)]
    for key in ("image", "mask"):
        try:
            stat = (folder / line.fields[key]).stat()
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except (KeyError, TypeError, OSError, ValueError):  # no such field, or no such file (it fails when loaded)
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_entry(line: bytes) -> tuple[str, ImageScore | dict[str, Any]] | None:
    """A part file's line as (fingerprint, a score or a failure {"id", "skipped", "line"?}); None if
    unreadable or written without a fingerprint."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    fingerprint = entry.pop("record", None)
    if not isinstance(fingerprint, str):
        return None
    if "skipped" in entry:
        return (fingerprint, entry) if isinstance(entry["skipped"], str) else None
    try:
        score = ImageScore.from_json(entry)
    except (TypeError, ValueError):  # missing or extra keys, ragged arrays
        return None
    return (fingerprint, score) if score.hi.ndim == 2 and score.hi.shape == score.mass.shape else None


def read_cache(cache: Path) -> Entries:
    """Every cached record by (id, fingerprint) (scored images and failures), from all part files,
    streamed.

    A line that cannot be read (cut short by an interruption, or edited) is ignored (its image is
    scored again); a score wins over a failure of the same record.
    """
    entries: Entries = {}
    for part in sorted(cache.glob(PART_PATTERN)):
        with open(part, "rb") as lines:
            for line in lines:
                read = _cache_entry(line)
                if read is None:
                    continue
                fingerprint, entry = read
                key = (entry.id if isinstance(entry, ImageScore) else entry["id"], fingerprint)
                if isinstance(entry, ImageScore) or not isinstance(
                    entries.get(key), ImageScore
                ):  # a failure, unless scored
                    entries[key] = entry
    return entries


class PartWriter:
    """Appends entries to this process's part file, one flushed and synced line each batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file():  # drop a last line cut short by an interruption before appending
            text = path.read_bytes()
            if text and not text.endswith(b"\n"):
                path.write_bytes(text[: text.rfind(b"\n") + 1])

    def append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with open(self.path, "a", encoding="utf-8") as part:
            part.write("".join(json.dumps(entry) + "\n" for entry in entries))
            part.flush()
            os.fsync(part.fileno())
