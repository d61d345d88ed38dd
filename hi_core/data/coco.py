"""COCO -> the dataset format (DESIGN 5): each image's key object is an object its description names.

For each image of the instances file (in file order):
1. walk its captions in annotation order; a caption names a category when it contains the
   category's name or one of its synonyms (`coco_captions`), singular or plural, as whole words (case-insensitive),
   matched left to right, longest phrase first ("hot dog" is the food, not a dog);
2. the first caption that names a category with a non-crowd instance in the image wins;
3. the key object is the largest non-crowd instance of the categories that caption names, by the
   pixel area of its rasterized mask (not the annotation's `area` field; ties: annotation order).
   Crowd regions (iscrowd=1) are never the key object.
The record's `text` is that caption (stripped), its `key_phrase` the words that named the object,
as written. An image is skipped, and counted, under the first reason that applies: its id was already seen
(ids are written as strings, so 7 and "7" are one id; the first image of an id counts, as in the
dataset format); no caption names an object of it; its file is missing; unreadable; of another size
than its annotation says. Malformed annotation files (wrong types, bad segmentations) are one
InputError before anything is written.

The annotation JSONs are loaded whole (COCO train2017's instances file is ~450 MB of JSON, a few
GB in memory); images are processed one at a time, and `data.jsonl` is written atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from ..base.errors import InputError, check_whole
from ..base.outputs import atomic_path
from ..model.images import load_image
from .coco_captions import choose_key_object, vocabulary
from .datasets import INDEX, make_dataset_folder

logger = logging.getLogger(__name__)

NO_NAMED_OBJECT = "no named object"
DUPLICATE_IMAGE = "duplicate image id"
MISSING_IMAGE = "missing image file"
UNREADABLE_IMAGE = "unreadable image file"
SIZE_MISMATCH = "image size differs from its annotation"


def coco_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """The compressed RLE of a COCO segmentation: polygons, uncompressed RLE or compressed RLE."""
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]; under 3 points is no area
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE (crowd regions)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = segmentation  # compressed RLE
    else:
        raise InputError(f"a segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    size = list(rle.get("size", ()))
    if size != [height, width]:
        shape = f"{size[1]}x{size[0]}" if len(size) == 2 else f"of size {size}"
        raise InputError(f"an RLE mask is {shape} but its image is {width}x{height}")
    return rle


def _load_json(path: str | Path, kind: str, keys: Sequence[str]) -> dict[str, Any]:
    """A COCO annotation file as a dict with `keys`; a missing or malformed file is an input error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{kind} file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise InputError(f"{kind} file {str(path)!r} is not valid JSON ({error})") from None
    except OSError as error:
        raise InputError(f"cannot read {kind} file {str(path)!r} ({error.strerror or error})") from None
    missing = [key for key in keys if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise InputError(f"{kind} file {str(path)!r} is not a COCO {kind} file: it has no {', '.join(missing)} list")
    return data


@dataclass(frozen=True)
class _Coco:
    """The annotations indexed by image id: images in file order, category names, instances, captions."""

    images: list[dict[str, Any]]
    categories: dict[int, str]
    instances: dict[int, list[dict[str, Any]]]
    captions: dict[int, list[str]]


#: The JSON types each field must have (ids are integers or strings, as COCO-format tools write them).
_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int, str),
    "image_id": (int, str),
    "category_id": (int, str),
    "name": (str,),
    "caption": (str,),
    "file_name": (str,),
    "height": (int,),
    "width": (int,),
    "segmentation": (list, dict),
}


def _require(entry: Any, keys: Sequence[str], kind: str) -> None:
    """Check that an image / annotation / category entry is an object with `keys` of the right types."""
    if not isinstance(entry, dict):
        raise InputError(f"malformed COCO annotations: a {kind} entry is not a JSON object ({str(entry)[:60]})")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise InputError(f"malformed COCO annotations: {kind} {entry.get('id')!r} has no {', '.join(missing)}")
    for key in keys:
        value = entry[key]
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            allowed = " or ".join(allowed_type.__name__ for allowed_type in _TYPES[key])
            raise InputError(
                f"malformed COCO annotations: {kind} {entry.get('id')!r} has {key} {str(value)[:40]!r} "
                f"(expected {allowed})"
            )
    if kind == "image" and (entry["height"] < 1 or entry["width"] < 1):
        raise InputError(
            f"malformed COCO annotations: image {entry['id']!r} is {entry['width']}x{entry['height']} pixels"
        )


def _index(instances_path: str | Path, captions_path: str | Path) -> _Coco:
    instances = _load_json(instances_path, "instances", ("images", "annotations", "categories"))
    captions = _load_json(captions_path, "captions", ("annotations",))
    categories: dict[int, str] = {}
    for category in instances["categories"]:
        _require(category, ("id", "name"), "category")
        categories[category["id"]] = category["name"]
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in instances["annotations"]:
        _require(annotation, ("image_id", "category_id", "segmentation"), "instance annotation")
        by_image[annotation["image_id"]].append(annotation)
    texts: dict[int, list[str]] = defaultdict(list)
    for annotation in captions["annotations"]:
        _require(annotation, ("image_id", "caption"), "caption annotation")
        texts[annotation["image_id"]].append(annotation["caption"])
    for image in instances["images"]:
        _require(image, ("id", "file_name", "height", "width"), "image")
    return _Coco(instances["images"], categories, by_image, texts)


@dataclass(frozen=True)
class CocoSummary:
    """What a conversion did: the output folder, the records written, the images skipped by reason."""

    folder: Path
    written: int
    skipped: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
        return f"wrote {self.written} records to {self.folder}; skipped {sum(self.skipped.values())} images" + (
            f" ({reasons})" if reasons else ""
        )


def _annotation_rle(annotation: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """`coco_rle` of an instance annotation, with its pixel area checked by decoding it; a bad
    segmentation is an input error naming the annotation."""
    where = f"instance annotation {annotation.get('id')!r} of image {annotation['image_id']!r}"
    try:
        rle = coco_rle(annotation["segmentation"], height, width)
        mask_utils.area(rle)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    except (TypeError, ValueError, OverflowError, IndexError) as error:  # pycocotools on malformed polygons or counts
        raise InputError(f"{where}: its segmentation cannot be read ({error})") from None
    return rle


_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _file_stem(record_id: str) -> str:
    """The record's file name (without extension): its id where that is a plain file name, else a
    hash of it (an id like "a/b" or "../x" must not become a path)."""
    if _SAFE_STEM.fullmatch(record_id):
        return record_id
    return "id-" + hashlib.sha1(record_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _image_problem(path: Path, width: int, height: int) -> str | None:
    """Why an image file cannot be used (missing, unreadable, another size), or None."""
    if not path.is_file():
        return MISSING_IMAGE
    try:
        size = load_image(path).size  # the reader `read_dataset` uses, so readable means the same there
    except InputError:
        return UNREADABLE_IMAGE
    return SIZE_MISMATCH if size != (width, height) else None


def convert_coco(
    instances: str | Path, captions: str | Path, images: str | Path, out: str | Path, limit: int | None = None
) -> CocoSummary:
    """Write the dataset format to `out` from COCO instances + captions JSONs and the image folder.

    `limit` stops after that many records. Images are copied as they are (`images/<id><ext>`), the
    key object's mask is written as `masks/<id>.png` (0/255, the image's size).
    """
    check_whole("limit", limit, optional=True)
    images_dir = Path(images)
    if not images_dir.is_dir():
        raise InputError(f"images folder {str(images_dir)!r} does not exist")
    coco = _index(instances, captions)
    phrases = vocabulary(coco.categories.values())
    folder = make_dataset_folder(out)
    records: list[dict[str, str]] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    for image in tqdm(coco.images, desc="images", unit="image", disable=None):  # disable=None: off without a tty
        if str(image["id"]) in seen:
            skipped[DUPLICATE_IMAGE] += 1
            continue
        seen.add(str(image["id"]))
        height, width = image["height"], image["width"]
        candidates = [
            annotation for annotation in coco.instances.get(image["id"], []) if not annotation.get("iscrowd", 0)
        ]
        rles = [_annotation_rle(annotation, height, width) for annotation in candidates]
        key = choose_key_object(
            coco.captions.get(image["id"], []),
            [coco.categories.get(annotation["category_id"], "") for annotation in candidates],
            [int(mask_utils.area(rle)) for rle in rles],
            phrases,
        )
        source = images_dir / image["file_name"]
        reason = _image_problem(source, width, height) if key is not None else NO_NAMED_OBJECT
        if key is None or reason is not None:
            skipped[reason or NO_NAMED_OBJECT] += 1
            logger.debug("skipping image %s: %s", image["id"], reason)
            continue
        record_id = str(image["id"])
        stem = _file_stem(record_id)
        image_path, mask_path = f"images/{stem}{source.suffix}", f"masks/{stem}.png"
        shutil.copyfile(source, folder / image_path)
        mask = mask_utils.decode(rles[key.index])  # (height, width) uint8 0/1
        Image.fromarray(mask * 255).save(folder / mask_path)
        records.append(
            {"id": record_id, "image": image_path, "mask": mask_path, "text": key.text, "key_phrase": key.key_phrase}
        )
        if limit is not None and len(records) >= limit:
            break
    with atomic_path(folder / INDEX) as temporary:
        temporary.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return CocoSummary(folder=folder, written=len(records), skipped=dict(skipped))
