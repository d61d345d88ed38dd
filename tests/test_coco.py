"""COCO -> dataset format: the key-object rule on a tiny COCO-format fixture built here (no download)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from hi_core.cli.main import main
from hi_core.data.coco import DUPLICATE_IMAGE, MISSING_IMAGE, NO_NAMED_OBJECT, SIZE_MISMATCH, UNREADABLE_IMAGE, convert_coco
from hi_core.data.coco_captions import SYNONYMS, find_mentions, plural, vocabulary
from hi_core.data.datasets import Problems, read_dataset
from hi_core.base.errors import InputError

CATEGORIES = {1: "person", 18: "dog", 3: "car", 58: "hot dog", 79: "oven"}


def block(height, width, top, left, bottom, right):
    """A (height, width) uint8 mask with the rectangle [top:bottom, left:right] set."""
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask):
    """COCO's uncompressed RLE, written out by hand: column-major run lengths, zeros first."""
    counts, value, run = [], 0, 0
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def rectangle(left, top, right, bottom):
    return [left, top, right, top, right, bottom, left, bottom]


@pytest.fixture
def coco(tmp_path):
    """Instances + captions JSONs and an image folder; `expected` maps image id -> (text, key phrase, annotation id)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations, captions = [], [], []

    def add_image(image_id, name, width, height, texts, save=True, size=None):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if save:
            pixels = rng.integers(0, 256, (*(size or (height, width)), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images_dir / name)
        for text in texts:
            captions.append({"id": len(captions) + 100, "image_id": image_id, "caption": text})

    def add_object(annotation_id, image_id, category, segmentation, crowd=0, area=1.0):
        annotations.append({"id": annotation_id, "image_id": image_id, "category_id": category,
                            "segmentation": segmentation, "iscrowd": crowd, "area": area, "bbox": [0, 0, 1, 1]})

    # 1: the first caption names nothing; the second names dogs (plural): of two dogs, the larger by its
    # pixels (its `area` field says otherwise); the crowd of dogs is larger still, and never chosen; the
    # person is the largest object, but only the third caption names it.
    add_image(1, "one.png", 40, 30, ["A photo of nothing in particular.", "  Two dogs playing on the grass. \n",
                                     "A man walking his dog."])
    add_object(11, 1, 18, [rectangle(2, 2, 6, 6)], area=500.0)
    add_object(12, 1, 18, compressed_rle(block(30, 40, 10, 10, 20, 22)), area=10.0)
    add_object(13, 1, 18, uncompressed_rle(block(30, 40, 0, 20, 30, 40)), crowd=1, area=600.0)
    add_object(14, 1, 1, [rectangle(0, 0, 39, 29)], area=1000.0)
    # 2 (JPEG): a synonym ("man" -> person), a two-part polygon; the larger oven is not named.
    add_image(2, "two.jpg", 32, 24, ["A man standing in a kitchen."])
    add_object(21, 2, 1, [rectangle(1, 1, 5, 10), rectangle(8, 2, 12, 12)])
    add_object(22, 2, 79, [rectangle(14, 0, 31, 23)])
    # 3: a multi-word category, written in capitals: "Hot dog" is the hot dog, not the (larger) dog.
    add_image(3, "three.png", 36, 28, ["A Hot dog on a plate."])
    add_object(31, 3, 58, uncompressed_rle(block(28, 36, 5, 6, 12, 14)))
    add_object(32, 3, 18, [rectangle(15, 2, 35, 27)])
    # 4: no caption names an object of the image.
    add_image(4, "four.png", 20, 20, ["An empty street at night.", "Nothing to see here."])
    add_object(41, 4, 3, [rectangle(2, 2, 10, 10)])
    # 5: its file is missing.
    add_image(5, "five.png", 20, 20, ["A dog."], save=False)
    add_object(51, 5, 18, [rectangle(2, 2, 10, 10)])
    # 6: the only person is a crowd region.
    add_image(6, "six.png", 20, 20, ["People crossing the street."])
    add_object(61, 6, 1, uncompressed_rle(block(20, 20, 0, 0, 10, 20)), crowd=1)
    # 7: its file is not an image.
    add_image(7, "seven.jpg", 20, 20, ["A dog on a sofa."], save=False)
    (images_dir / "seven.jpg").write_text("not an image")
    add_object(71, 7, 18, [rectangle(2, 2, 10, 10)])
    # 8: its file is of another size than the annotations say.
    add_image(8, "eight.png", 20, 20, ["A dog."], size=(12, 16))
    add_object(81, 8, 18, [rectangle(2, 2, 10, 10)])

    categories = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in CATEGORIES.items()]
    instances_path, captions_path = tmp_path / "instances.json", tmp_path / "captions.json"
    instances_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    captions_path.write_text(json.dumps({"images": images, "annotations": captions}))
    expected = {"1": ("Two dogs playing on the grass.", "dogs", 12), "2": ("A man standing in a kitchen.", "man", 21),
                "3": ("A Hot dog on a plate.", "Hot dog", 31)}
    return instances_path, captions_path, images_dir, expected


def official_mask(instances_path, annotation_id):
    """The annotation's mask by the official COCO API (an independent path through pycocotools)."""
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(instances_path))
    return api.annToMask(api.anns[annotation_id]).astype(bool)


def test_key_object_rule_on_the_fixture(coco, tmp_path):
    instances, captions, images_dir, expected = coco
    summary = convert_coco(instances, captions, images_dir, tmp_path / "out")
    assert summary.written == 3
    assert summary.skipped == {NO_NAMED_OBJECT: 2, MISSING_IMAGE: 1, UNREADABLE_IMAGE: 1, SIZE_MISMATCH: 1}
    problems = Problems()
    records = list(read_dataset(tmp_path / "out", problems))
    assert len(problems) == 0
    assert [record.id for record in records] == ["1", "2", "3"]
    for record in records:
        text, key_phrase, annotation_id = expected[record.id]
        assert (record.text, record.key_phrase) == (text, key_phrase)
        np.testing.assert_array_equal(record.mask, official_mask(instances, annotation_id))
    # the RLE masks, also against the arrays they were encoded from
    np.testing.assert_array_equal(records[0].mask, block(30, 40, 10, 10, 20, 22).astype(bool))
    np.testing.assert_array_equal(records[2].mask, block(28, 36, 5, 6, 12, 14).astype(bool))
    index = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert [entry["image"] for entry in index] == ["images/1.png", "images/2.jpg", "images/3.png"]
    for name, entry in zip(["one.png", "two.jpg", "three.png"], index):
        assert (tmp_path / "out" / entry["image"]).read_bytes() == (images_dir / name).read_bytes()
        assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / entry["mask"])))) == {0, 255}
    assert list((tmp_path / "out").glob(".*.tmp")) == []


def test_limit_stops_after_n_records(coco, tmp_path):
    instances, captions, images_dir, _ = coco
    summary = convert_coco(instances, captions, images_dir, tmp_path / "out", limit=2)
    assert summary.written == 2
    assert [record.id for record in read_dataset(tmp_path / "out")] == ["1", "2"]


@pytest.mark.parametrize("singular, expected", [
    ("dog", "dogs"), ("bus", "buses"), ("bench", "benches"), ("puppy", "puppies"), ("guy", "guys"),
    ("man", "men"), ("policeman", "policemen"), ("child", "children"), ("knife", "knives"), ("mouse", "mice"),
    ("sheep", "sheep"), ("hot dog", "hot dogs"), ("wine glass", "wine glasses"), ("teddy bear", "teddy bears"),
])
def test_plural(singular, expected):
    assert plural(singular) == expected


@pytest.mark.parametrize("caption, named", [
    ("A teddy bear and a bear near hot dogs.", [("teddy bear", "teddy bear"), ("bear", "bear"), ("hot dog", "hot dogs")]),
    ("Two WOMEN ride motor bikes past a stop sign", [("person", "WOMEN"), ("motorcycle", "motor bikes"), ("stop sign", "stop sign")]),
    ("a microwave oven above the stove", [("microwave", "microwave oven"), ("oven", "stove")]),
    ("A hot-dog stand; no cats.", [("hot dog", "hot-dog"), ("cat", "cats")]),
    ("An empty street at night.", []),
])
def test_mentions_match_longest_phrase_first(caption, named):
    mentions = find_mentions(caption, vocabulary(SYNONYMS))
    assert [(mention.category, caption[mention.start : mention.end]) for mention in mentions] == named


def test_synonym_table_names_the_80_categories_unambiguously():
    assert len(SYNONYMS) == 80
    owners: dict[str, set[str]] = {}
    for category, synonyms in SYNONYMS.items():
        for phrase in (category, *synonyms):
            for form in (phrase, plural(phrase)):
                owners.setdefault(form, set()).add(category)
    assert {form: names for form, names in owners.items() if len(names) > 1} == {}


def test_cli_from_coco(coco, tmp_path, capsys):
    instances, captions, images_dir, _ = coco
    argv = ["dataset", "from-coco", "--instances", str(instances), "--captions", str(captions),
            "--images", str(images_dir), "--out", str(tmp_path / "out"), "--limit", "5"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wrote 3 records to ") and "skipped 5 images" in err
    assert len(list(read_dataset(tmp_path / "out"))) == 3


@pytest.mark.parametrize("case, message", [
    ("missing instances", "instances file"), ("malformed captions", "is not valid JSON"),
    ("not coco", "has no categories list"), ("no images dir", "images folder"), ("no field", "has no file_name"),
    ("bad limit", "limit must be a whole number of at least 1"),
])
def test_cli_bad_input_exits_2_with_one_line(case, message, coco, tmp_path, capsys):
    instances, captions, images_dir, _ = coco
    broken = tmp_path / "broken.json"
    args = {"--instances": str(instances), "--captions": str(captions), "--images": str(images_dir), "--out": str(tmp_path / "out")}
    if case == "missing instances":
        args["--instances"] = str(tmp_path / "nowhere.json")
    elif case == "malformed captions":
        broken.write_text('{"annotations": [')
        args["--captions"] = str(broken)
    elif case == "not coco":
        broken.write_text(json.dumps({"images": [], "annotations": []}))
        args["--instances"] = str(broken)
    elif case == "no images dir":
        args["--images"] = str(tmp_path / "no-such-folder")
    elif case == "no field":
        data = json.loads(instances.read_text())
        del data["images"][0]["file_name"]
        broken.write_text(json.dumps(data))
        args["--instances"] = str(broken)
    argv = ["dataset", "from-coco", *(item for pair in args.items() for item in pair)]
    code = main(argv + (["--limit", "0"] if case == "bad limit" else []))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and message in captured.err and "Traceback" not in captured.err


def test_library_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        convert_coco(tmp_path / "i.json", tmp_path / "c.json", tmp_path, tmp_path / "out")


def test_a_bad_segmentation_names_its_annotation(coco, tmp_path):
    instances, captions, images_dir, _ = coco
    data = json.loads(instances.read_text())
    data["annotations"][1]["segmentation"]["size"] = [10, 10]
    instances.write_text(json.dumps(data))
    with pytest.raises(InputError, match="instance annotation 12 of image 1: an RLE mask is 10x10 but its image is 40x30"):
        convert_coco(instances, captions, images_dir, tmp_path / "out")


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].update(height="30"), "image 1 has height '30' (expected int)"),
    (lambda d: d["images"][0].update(width=0), "image 1 is 0x30 pixels"),
    (lambda d: d["images"][0].update(file_name=5), "image 1 has file_name '5' (expected str)"),
    (lambda d: d["images"][0].update(id=[1]), "image [1] has id '[1]' (expected int or str)"),
    (lambda d: d["categories"][0].update(id={"a": 1}), "category"),
    (lambda d: d["annotations"][0].update(image_id=None), "instance annotation 11 has image_id 'None'"),
    (lambda d: d["annotations"][0].update(segmentation=[["a", "b", "c", "d", "e", "f"]]), "instance annotation 11 of image 1: its segmentation cannot be read"),
    (lambda d: d["annotations"][0].update(segmentation=[5]), "instance annotation 11 of image 1: its segmentation cannot be read"),
    (lambda d: d["annotations"][0].update(segmentation="polygon"), "instance annotation 11 has segmentation 'polygon' (expected list or dict)"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [30, 40]}), "instance annotation 11 of image 1: a segmentation must be polygons or RLE"),
])
def test_malformed_annotations_are_one_input_error(coco, tmp_path, change, message):
    instances, captions, images_dir, _ = coco
    _edit(instances, change)
    with pytest.raises(InputError) as raised:
        convert_coco(instances, captions, images_dir, tmp_path / "out")
    assert message in str(raised.value)


def test_a_bad_caption_is_one_input_error(coco, tmp_path):
    instances, captions, images_dir, _ = coco
    _edit(captions, lambda d: d["annotations"][0].update(caption=None))
    with pytest.raises(InputError, match="caption annotation .* has caption 'None'"):
        convert_coco(instances, captions, images_dir, tmp_path / "out")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_path_that_is_a_file_is_an_input_error(coco, tmp_path, where):
    instances, captions, images_dir, _ = coco
    (tmp_path / "taken").write_text("my notes")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "out"
    with pytest.raises(InputError, match="is a file, or under a file"):
        convert_coco(instances, captions, images_dir, out)
    assert (tmp_path / "taken").read_text() == "my notes"


def test_duplicate_image_ids_keep_the_first_and_odd_ids_make_safe_file_names(coco, tmp_path):
    instances, captions, images_dir, _ = coco

    def change(data):
        data["images"].append(dict(data["images"][1], file_name="one.png", width=40, height=30))  # id 2 again, another file
        data["images"][2]["id"] = "../3"  # the hot dog: an id that is no file name
        for annotation in data["annotations"]:
            if annotation["image_id"] == 3:
                annotation["image_id"] = "../3"

    _edit(instances, change)
    _edit(captions, lambda d: [a.update(image_id="../3") for a in d["annotations"] if a["image_id"] == 3])
    summary = convert_coco(instances, captions, images_dir, tmp_path / "out")
    assert summary.written == 3 and summary.skipped[DUPLICATE_IMAGE] == 1
    records = list(read_dataset(tmp_path / "out"))
    assert [record.id for record in records] == ["1", "2", "../3"]
    assert records[1].image.size == (32, 24)  # the first image of id 2, not the later one
    index = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert index[2]["image"].startswith("images/id-") and "/" not in index[2]["image"][len("images/"):]
    assert list((tmp_path / "out").glob("3*")) == []  # nothing written beside images/ and masks/
