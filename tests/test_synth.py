"""Synthetic scenes: exact masks, descriptions that match the objects, reproducible from the seed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hi_core.cli.main import main
from hi_core.data.datasets import read_dataset, write_synthetic
from hi_core.base.errors import InputError
from hi_core.data.synth import COLOURS, NEW_KINDS, QUESTION_KINDS, make_scene, make_vqa, position_phrase


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


# Closed-form VQA: the oracle below reads the question's words and answers from the scene's
# objects, without the generator's code.
CELLS = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "center",
         (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}


def oracle(objects, question: str) -> tuple[str, list[int]]:
    """The right answer to a question about these objects, and the objects it can be about."""
    if match := re.fullmatch(r"What colour is the (\w+)\?", question):
        about = [i for i, obj in enumerate(objects) if obj.shape == match[1]]
        return (objects[about[0]].colour if len(about) == 1 else "ambiguous"), about
    if match := re.fullmatch(r"What colour is at the ([\w ]+)\?", question):
        about = [i for i, obj in enumerate(objects) if CELLS[obj.row, obj.column] == match[1]]
        return (objects[about[0]].colour if len(about) == 1 else "ambiguous"), about
    if match := re.fullmatch(r"What shape is at the ([\w ]+)\?", question):
        about = [i for i, obj in enumerate(objects) if CELLS[obj.row, obj.column] == match[1]]
        return (objects[about[0]].shape if len(about) == 1 else "ambiguous"), about
    if match := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        about = [i for i, obj in enumerate(objects) if (obj.colour, obj.shape) == (match[1], match[2])]
        return (CELLS[objects[about[0]].row, objects[about[0]].column] if len(about) == 1 else "ambiguous"), about
    if match := re.fullmatch(r"Is the (\w+) (big|small)\?", question):
        about = [i for i, obj in enumerate(objects) if obj.shape == match[1]]
        return (("yes" if objects[about[0]].size == match[2] else "no") if len(about) == 1 else "ambiguous"), about
    if match := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        present = any((obj.colour, obj.shape) == (match[1], match[2]) for obj in objects)
        return ("yes" if present else "no"), [i for i, obj in enumerate(objects) if obj.shape == match[2]]
    raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize("kind", QUESTION_KINDS + NEW_KINDS)
def test_answers_are_right_for_the_scene_and_the_mask_is_the_asked_objects(kind):
    rng = np.random.default_rng(21)
    answers = set()
    for _ in range(40):
        scene, question = make_vqa(rng, kind)
        answer, about = oracle(scene.objects, question.text)
        assert question.kind == kind and question.answer == answer
        assert about == [question.target]  # the one object the question is about
        mask = scene.masks[question.target]
        assert mask.any() and (scene.image[mask] == COLOURS[scene.objects[question.target].colour]).all()
        answers.add(answer)
    assert len(answers) > 1
    if kind in ("exists", "size"):
        assert answers == {"yes", "no"}


def test_same_seed_same_questions_other_seed_other_questions():
    def questions(seed):
        rng = np.random.default_rng(seed)
        return [make_vqa(rng, kind) for kind in QUESTION_KINDS * 3]

    a, b, c = questions(3), questions(3), questions(4)
    assert [q for _, q in a] == [q for _, q in b] and [q for _, q in a] != [q for _, q in c]
    for (scene_a, _), (scene_b, _) in zip(a, b):
        np.testing.assert_array_equal(scene_a.image, scene_b.image)


def test_unknown_question_kind_is_an_input_error():
    with pytest.raises(InputError, match="kind must be one of colour, shape, position, exists, colour_at, size"):
        make_vqa(np.random.default_rng(0), "count")


def _vqa_dataset(tmp_path, name, seed, n=24):
    out = tmp_path / name
    assert main(["dataset", "synth", "--task", "vqa", "--out", str(out), "--n", str(n), "--seed", str(seed)]) == 0
    return out


def test_vqa_dataset_is_reproducible_by_seed(tmp_path):
    first, again, other = _vqa_dataset(tmp_path, "a", 5), _vqa_dataset(tmp_path, "b", 5), _vqa_dataset(tmp_path, "c", 6)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert len(files) == 1 + 2 * 24
    for name in files:
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "data.jsonl").read_text() != (other / "data.jsonl").read_text()


def test_vqa_dataset_records_hold_every_kind_right_answers_and_the_asked_objects_masks(tmp_path):
    folder = _vqa_dataset(tmp_path, "vqa", 9, n=40)
    entries = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert {entry["kind"] for entry in entries} == set(QUESTION_KINDS)
    rng = np.random.default_rng(9)  # the same scenes, regenerated: the oracle needs their objects
    records = list(read_dataset(folder))
    assert len(records) == 40
    for index, (entry, record) in enumerate(zip(entries, records)):
        scene, _ = make_vqa(rng, QUESTION_KINDS[index % len(QUESTION_KINDS)])
        np.testing.assert_array_equal(np.asarray(record.image), scene.image)
        answer, about = oracle(scene.objects, record.prompt)
        assert record.prompt == entry["prompt"] and record.text == answer and record.key_phrase is None
        np.testing.assert_array_equal(record.mask, scene.masks[about[0]])


def test_vqa_dataset_of_a_new_kind_asks_only_that_kind_reproducibly(tmp_path):
    def write(name, seed):
        out = tmp_path / name
        assert main(["dataset", "synth", "--task", "vqa", "--kinds", "colour_at", "--out", str(out), "--n", "12",
                     "--seed", str(seed)]) == 0
        return [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]

    first, again = write("a", 2), write("b", 2)
    assert first == again and {entry["kind"] for entry in first} == {"colour_at"}
    assert all(entry["prompt"].startswith("What colour is at the ") and entry["text"] in COLOURS for entry in first)


@pytest.mark.parametrize("extra, message", [
    (["--task", "vqa", "--kinds", "colour,count"], "--kinds must be one of colour, shape, position, exists, colour_at, size, got 'count'"),
    (["--kinds", "colour_at"], "--kinds applies to --task vqa only"),
])
def test_bad_kinds_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["dataset", "synth", "--out", str(tmp_path / "x"), "--n", "2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_order_with_the_vqa_task_is_an_input_error(tmp_path, capsys):
    code = main(["dataset", "synth", "--task", "vqa", "--order", "reading", "--out", str(tmp_path / "x")])
    assert code == 2 and "--order applies to --task caption only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reading_order_is_read_from_the_positions_a_caption_writes():
    from hi_core.data.synth import in_reading_order, listed_positions

    assert listed_positions("a big red circle at the top left and a small blue star at the center") == [(0, 0), (1, 1)]
    assert in_reading_order("a big red circle at the top left and a small blue star at the center")
    assert not in_reading_order("a small blue star at the center and a big red circle at the top left")
    assert not in_reading_order("a big red circle at the top left and a small blue star")  # a position missing
    assert listed_positions("a big red circle at the moon") is None
    rng = np.random.default_rng(5)
    scenes = [make_scene(rng) for _ in range(40)]
    assert all(in_reading_order(scene.caption("reading")) for scene in scenes)
    several = [scene for scene in scenes if len(scene.objects) > 1]
    assert any(not in_reading_order(scene.caption("drawing")) for scene in several)
