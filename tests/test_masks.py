"""Masks: reading files, checking them against the image, object patches on the grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.method.masks import check_mask, grabcut_mask, object_patches, painted_mask
from hi_core.model.images import load_image, load_mask


def test_rgba_mask_uses_alpha_and_any_channel(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[1, 1] = (0, 0, 255, 255)  # blue, opaque: object
    rgba[2, 2] = (255, 255, 255, 0)  # white but transparent: not object
    Image.fromarray(rgba).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.shape == (4, 5) and mask.sum() == 1 and mask[1, 1]


def test_check_mask_size_and_emptiness():
    image = Image.new("RGB", (5, 4))
    with pytest.raises(InputError, match="mask is 4x4 but the image is 5x4"):
        check_mask(np.ones((4, 4)), image)
    with pytest.raises(InputError, match="mask is empty"):
        check_mask(np.zeros((4, 5)), image)
    assert check_mask(np.eye(4, 5) * 3, image).dtype == bool


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not an image file"):
        load_mask(tmp_path / "x.png")


@given(arrays(np.float64, (4, 5), elements=st.floats(0, 1)))
def test_object_patches_threshold_or_best_cell(fractions):
    if not (fractions > 0).any():
        with pytest.raises(InputError, match="outside"):
            object_patches(fractions)
        return
    if (fractions >= 0.5).all():
        with pytest.raises(InputError, match="covers the whole image"):
            object_patches(fractions)
        return
    patches = object_patches(fractions).object_patches
    if (fractions >= 0.5).any():
        np.testing.assert_array_equal(patches, fractions >= 0.5)
    else:
        assert patches.sum() == 1 and fractions[patches][0] == fractions.max()


def test_padding_cells_never_belong_to_the_object():
    fractions = np.array([[0.9, 0.9], [0.1, 0.0]])
    valid = np.array([[False, True], [True, True]])
    np.testing.assert_array_equal(object_patches(fractions, valid).object_patches, [[False, True], [False, False]])


def test_painted_mask_reads_alpha_and_rescales_same_aspect_layers():
    stroke = np.zeros((40, 60, 4), np.uint8)
    stroke[10:20, 30:45] = (255, 0, 0, 255)
    faint = np.zeros((20, 30, 4), np.uint8)  # half-size canvas: same aspect, scaled up
    faint[0:2, 0:3, 3] = 10
    mask = painted_mask([stroke, None, faint], (60, 40))
    assert mask.shape == (40, 60)
    assert mask[10:20, 30:45].all() and mask[0:4, 0:6].all()
    assert mask.sum() == 10 * 15 + 4 * 6


def test_painted_mask_rejects_another_aspect():
    with pytest.raises(InputError, match="painted layer is 10x40 but the image is 60x40"):
        painted_mask([np.full((40, 10, 4), 255, np.uint8)], (60, 40))


def test_grabcut_recovers_an_object_from_a_loose_box():
    rng = np.random.default_rng(0)
    pixels = (rng.random((80, 100, 3)) * 60).astype(np.uint8)
    obj = np.zeros((80, 100), bool)
    yy, xx = np.mgrid[:80, :100]
    obj[(yy - 40) ** 2 + (xx - 55) ** 2 < 15**2] = True
    pixels[obj] = (230, 200, 30)
    box = np.zeros_like(obj)
    box[20:62, 35:76] = True  # loose box around the disc
    proposal = grabcut_mask(Image.fromarray(pixels), box)
    iou = (proposal & obj).sum() / (proposal | obj).sum()
    assert iou > 0.9 and (box & obj).sum() / (box | obj).sum() < 0.5
    with pytest.raises(InputError, match="draw a rough box"):
        grabcut_mask(Image.fromarray(pixels), np.zeros_like(obj))


@pytest.mark.parametrize("size", [(1, 1), (4, 30)])
def test_grabcut_on_a_too_small_image_is_an_input_error(size):
    width, height = size
    with pytest.raises(InputError, match="at least 8 px on each side"):
        grabcut_mask(Image.new("RGB", size), np.ones((height, width), bool))


def test_grabcut_needs_background_outside_the_hint():
    with pytest.raises(InputError, match="covers the whole image"):
        grabcut_mask(Image.new("RGB", (20, 16)), np.ones((16, 20), bool))
    with pytest.raises(InputError, match="the hint is 10x16 but the image is 20x16"):
        grabcut_mask(Image.new("RGB", (20, 16)), np.ones((16, 10), bool))


def test_grabcut_on_a_large_image_runs_on_a_bounded_copy(monkeypatch):
    import cv2

    height, width = 1800, 2400
    yy, xx = np.mgrid[:height, :width]
    obj = (yy - 900) ** 2 + (xx - 1300) ** 2 < 300**2
    rng = np.random.default_rng(0)
    pixels = (rng.random((height, width, 3)) * 60).astype(np.uint8)
    pixels[obj] = (230, 200, 30)
    box = np.zeros_like(obj)
    box[500:1300, 900:1700] = True
    seen = []
    grabcut = cv2.grabCut
    monkeypatch.setattr(cv2, "grabCut", lambda image, *args: seen.append(image.shape) or grabcut(image, *args))
    proposal = grabcut_mask(Image.fromarray(pixels), box)
    assert seen and max(seen[0][:2]) <= 512  # the work is on a copy of at most GRABCUT_SIDE px
    assert proposal.shape == obj.shape
    assert (proposal & obj).sum() / (proposal | obj).sum() > 0.95


def test_a_mask_covering_every_cell_is_refused_and_almost_every_cell_warned(caplog):
    with pytest.raises(InputError, match="covers the whole image the model sees .*HI would be 1"):
        object_patches(np.full((4, 5), 0.8))
    valid = np.ones((4, 5), bool)
    valid[0, 0] = False  # padding does not count: the object still covers every cell that is image
    with pytest.raises(InputError, match="all 19 grid cells"):
        object_patches(np.full((4, 5), 0.8), valid)
    almost = np.ones((4, 5))
    almost[0, :4] = 0.0  # 16 of 20 cells: 80%
    with caplog.at_level("WARNING", logger="hi_core.method.masks"):
        assert object_patches(almost).object_patches.sum() == 16
    assert "covers 16 of 20 grid cells" in caplog.text
    caplog.clear()
    almost[1, :2] = 0.0  # 14 of 20: 70%, no warning
    with caplog.at_level("WARNING", logger="hi_core.method.masks"):
        object_patches(almost)
    assert caplog.text == ""
