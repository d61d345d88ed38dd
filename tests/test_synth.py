"""Synthetic scenes: exact masks, descriptions that match the objects, reproducible from the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hi_core.cli import main
from hi_core.datasets import write_synthetic
from hi_core.errors import InputError
from hi_core.synth import COLOURS, make_scene, position_phrase


def test_same_seed_same_scene_other_seed_other_scene():
    a, b = make_scene(np.random.default_rng(7)), make_scene(np.random.default_rng(7))
    c = make_scene(np.random.default_rng(8))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.text == b.text and a.key == b.key
    assert not np.array_equal(a.image, c.image)


def test_masks_are_the_objects_visible_pixels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = make_scene(rng)
        assert scene.masks.shape == (len(scene.objects),) + scene.image.shape[:2]
        assert not (scene.masks.sum(axis=0) > 1).any()  # one owner per pixel
        for obj, mask in zip(scene.objects, scene.masks):
            if mask.any():  # every visible pixel has exactly the object's colour
                assert (scene.image[mask] == COLOURS[obj.colour]).all()
        assert scene.masks[scene.key].any()


def test_description_names_every_object_with_its_position():
    scene = make_scene(np.random.default_rng(3))
    for obj in scene.objects:
        assert f"a {obj.size} {obj.colour} {obj.shape} at the {position_phrase(obj.row, obj.column)}" in scene.text
    assert scene.key_phrase in scene.text


def test_object_mask_lies_in_its_layout_cell():
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = make_scene(rng)
        side = scene.image.shape[0]
        for obj, mask in zip(scene.objects, scene.masks):
            if mask.any():
                ys, xs = np.nonzero(mask)
                assert int(ys.mean() * 3 // side) == obj.row and int(xs.mean() * 3 // side) == obj.column


def test_position_phrases():
    assert position_phrase(0, 0) == "top left" and position_phrase(1, 1) == "center"
    assert position_phrase(0, 1) == "top" and position_phrase(1, 2) == "right"


def test_reading_order_lists_objects_top_to_bottom_then_left_to_right():
    rng = np.random.default_rng(11)
    for _ in range(30):
        scene = make_scene(rng)
        listed = scene.caption("reading").split(" and ")
        ordered = sorted(scene.objects, key=lambda obj: (obj.row, obj.column))
        assert listed == [obj.description for obj in ordered]
        assert scene.caption("drawing") == scene.text == " and ".join(obj.description for obj in scene.objects)


def test_unknown_order_is_an_input_error():
    with pytest.raises(InputError, match="order must be one of drawing, reading"):
        make_scene(np.random.default_rng(0)).caption("alphabetical")


def test_reading_order_dataset_has_the_same_scenes_and_reordered_texts(tmp_path):
    write_synthetic(tmp_path / "drawing", n=20, seed=4, size=48)
    main(["dataset", "synth", "--out", str(tmp_path / "reading"), "--n", "20", "--seed", "4", "--size", "48", "--order", "reading"])
    drawing = [json.loads(line) for line in (tmp_path / "drawing" / "data.jsonl").read_text().splitlines()]
    reading = [json.loads(line) for line in (tmp_path / "reading" / "data.jsonl").read_text().splitlines()]
    assert [r["id"] for r in drawing] == [r["id"] for r in reading]
    assert [r["key_phrase"] for r in drawing] == [r["key_phrase"] for r in reading]
    for a, b in zip(drawing, reading):
        assert sorted(a["text"].split(" and ")) == sorted(b["text"].split(" and "))
        assert (tmp_path / "drawing" / a["image"]).read_bytes() == (tmp_path / "reading" / b["image"]).read_bytes()
    assert sum(a["text"] != b["text"] for a, b in zip(drawing, reading)) > 0  # multi-object scenes reorder


@pytest.mark.parametrize("size, max_objects", [(0, 3), (15, 3), (4097, 3), (float("nan"), 3), (48, 0), (48, 10)])
def test_scene_options_out_of_range_are_input_errors(size, max_objects):
    with pytest.raises(InputError, match="size must be a whole number of pixels in|max_objects must be a whole number in"):
        make_scene(np.random.default_rng(0), size=size, max_objects=max_objects)
