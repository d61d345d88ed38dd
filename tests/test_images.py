"""Reading images and masks: every PIL mode as the user meant it, the pixel cap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.model.images import (
    MIN_IMAGE_SIDE,
    check_image_size,
    image_to_rgb,
    load_image,
    load_mask,
)

H, W = 8, 10
LEFT = (slice(None), slice(0, W // 2))  # the left half of every test picture
RIGHT = (slice(None), slice(W // 2, W))


def _halves(left, right, dtype) -> np.ndarray:
    values = np.empty((H, W), dtype=dtype)
    values[LEFT], values[RIGHT] = left, right
    return values


def _p_image(transparent: bool) -> Image.Image:
    """A palette image: index 0 (left) dark blue, index 1 (right) light green; index 0 transparent if asked."""
    image = Image.fromarray(_halves(0, 1, np.uint8), mode="P")
    image.putpalette([10, 20, 120, 100, 240, 100] + [0, 0, 0] * 254)
    if transparent:
        image.info["transparency"] = 0
    return image


def _with_alpha(mode: str, colour, alpha_left: int) -> Image.Image:
    """An image of `mode` (LA or RGBA) of one colour, the left half with alpha `alpha_left`, the right opaque."""
    channels = len(mode)
    pixels = np.zeros((H, W, channels), np.uint8)
    pixels[..., : channels - 1] = colour
    pixels[..., -1] = _halves(alpha_left, 255, np.uint8)
    return Image.fromarray(pixels, mode=mode)


# mode -> (an image of that mode, the file suffix that keeps the mode, expected RGB left, expected RGB right)
IMAGE_CASES = {
    "L": (lambda: Image.fromarray(_halves(40, 200, np.uint8), mode="L"), "png", (40,) * 3, (200,) * 3),
    "LA": (lambda: _with_alpha("LA", 60, 0), "png", (255,) * 3, (60,) * 3),  # transparent -> white background
    "RGB": (lambda: Image.fromarray(np.stack([_halves(10, 200, np.uint8)] * 3, -1)), "png", (10,) * 3, (200,) * 3),
    "RGBA": (lambda: _with_alpha("RGBA", (200, 30, 30), 0), "png", (255,) * 3, (200, 30, 30)),
    "P": (lambda: _p_image(False), "png", (10, 20, 120), (100, 240, 100)),
    "P+transparency": (lambda: _p_image(True), "png", (255,) * 3, (100, 240, 100)),
    "1": (lambda: Image.fromarray(_halves(False, True, bool)), "png", (0,) * 3, (255,) * 3),
    # 16-bit grey: its top 8 bits, not saturated to white (PIL's convert("RGB") gives 255 for both)
    "I;16": (lambda: Image.fromarray(_halves(10000, 50000, np.uint16), mode="I;16"), "png", (39,) * 3, (195,) * 3),
    # 32-bit ints within 0..65535 read as 16-bit; within 0..255 as 8-bit
    "I": (lambda: Image.fromarray(_halves(10000, 50000, np.int32), mode="I"), "tif", (39,) * 3, (195,) * 3),
    "I (8-bit values)": (lambda: Image.fromarray(_halves(40, 200, np.int32), mode="I"), "tif", (40,) * 3, (200,) * 3),
    # float in [0, 1] scaled by 255; other floats stretched from their minimum to their maximum
    "F": (lambda: Image.fromarray(_halves(0.2, 0.8, np.float32), mode="F"), "tif", (51,) * 3, (204,) * 3),
    "F (any range)": (lambda: Image.fromarray(_halves(-3.0, 1000.0, np.float32), mode="F"), "tif", (0,) * 3, (255,) * 3),
    "CMYK": (lambda: Image.fromarray(np.stack([_halves(0, 0, np.uint8)] * 3 + [_halves(255, 0, np.uint8)], -1), mode="CMYK"),
             "tif", (0,) * 3, (255,) * 3),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_every_image_mode_reads_as_8bit_rgb(tmp_path, case):
    make, suffix, left, right = IMAGE_CASES[case]
    original = make()
    path = tmp_path / f"image.{suffix}"
    original.save(path)
    with Image.open(path) as reopened:  # the file really carries the mode under test
        assert reopened.mode.split(";")[0] == original.mode.split(";")[0]
    image = load_image(path)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (H, W, 3)
    np.testing.assert_allclose(pixels[LEFT].reshape(-1, 3), np.broadcast_to(left, (H * W // 2, 3)), atol=1)
    np.testing.assert_allclose(pixels[RIGHT].reshape(-1, 3), np.broadcast_to(right, (H * W // 2, 3)), atol=1)


def test_sixteen_bit_image_keeps_its_gradient():
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    grey = np.asarray(image_to_rgb(Image.fromarray(ramp, mode="I;16")))[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and (np.diff(grey[0].astype(int)) > 0).all()


def _mask_with_alpha(mode: str, value, alpha) -> Image.Image:
    channels = len(mode)
    pixels = np.zeros((H, W, channels), np.uint8)
    value = np.asarray(value)
    pixels[..., : channels - 1] = value[..., None] if value.ndim == 2 else value
    pixels[..., -1] = alpha
    return Image.fromarray(pixels, mode=mode)


# mode -> (a mask image whose object is the right half, file suffix). The left half is never 0 where
# the mode allows it: below half the range, so "nonzero" would wrongly call it object.
MASK_CASES = {
    "L": (lambda: Image.fromarray(_halves(100, 128, np.uint8), mode="L"), "png"),
    # grey + alpha: white everywhere, only the alpha marks the object (the whole-image bug)
    "LA (alpha decides)": (lambda: _mask_with_alpha("LA", 255, _halves(0, 255, np.uint8)), "png"),
    "LA (opaque: grey decides)": (lambda: _mask_with_alpha("LA", _halves(90, 255, np.uint8), 255), "png"),
    "RGB": (lambda: Image.fromarray(np.stack([_halves(100, 0, np.uint8), _halves(100, 0, np.uint8), _halves(100, 200, np.uint8)], -1)), "png"),
    "RGBA (alpha decides)": (lambda: _mask_with_alpha("RGBA", 255, _halves(100, 200, np.uint8)), "png"),
    "RGBA (opaque: colour decides)": (lambda: _mask_with_alpha("RGBA", _halves(0, 255, np.uint8), 255), "png"),
    "P": (lambda: _p_image(False), "png"),  # left dark blue (max channel 120), right light green
    "P+transparency": (lambda: _p_image(True), "png"),
    "1": (lambda: Image.fromarray(_halves(False, True, bool)), "png"),
    "I;16": (lambda: Image.fromarray(_halves(32767, 32768, np.uint16), mode="I;16"), "png"),
    "I": (lambda: Image.fromarray(_halves(30000, 40000, np.int32), mode="I"), "tif"),
    "I (8-bit values)": (lambda: Image.fromarray(_halves(127, 255, np.int32), mode="I"), "tif"),
    "F": (lambda: Image.fromarray(_halves(0.49, 0.5, np.float32), mode="F"), "tif"),
    "CMYK": (lambda: Image.fromarray(np.stack([_halves(0, 0, np.uint8)] * 3 + [_halves(200, 0, np.uint8)], -1), mode="CMYK"), "tif"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_every_mask_mode_is_thresholded_at_half_its_range(tmp_path, case):
    make, suffix = MASK_CASES[case]
    original = make()
    path = tmp_path / f"mask.{suffix}"
    original.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.split(";")[0] == original.mode.split(";")[0]
    np.testing.assert_array_equal(load_mask(path), _halves(False, True, bool))


def test_jpeg_noise_in_a_mask_is_not_object(tmp_path):
    truth = np.zeros((64, 80), bool)
    truth[16:40, 24:56] = True
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "mask.jpg", quality=70)
    with Image.open(tmp_path / "mask.jpg") as jpeg:
        raw = np.asarray(jpeg)
    assert (raw > 0).sum() > 1.2 * truth.sum()  # JPEG ringing: "nonzero" would grow the object
    assert (load_mask(tmp_path / "mask.jpg") != truth).mean() < 0.01


def test_a_mask_below_half_its_range_marks_nothing(tmp_path):
    Image.fromarray(np.eye(H, W, dtype=np.uint8)).save(tmp_path / "labels.png")  # a 0/1 label map
    with pytest.raises(InputError, match="mask is empty: .* marks the object, which takes at least half the range"):
        load_mask(tmp_path / "labels.png")


def test_pixel_cap_refuses_before_decoding_and_names_size_and_cap(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 17.6 KB on disk, 144 Mpx
    assert (tmp_path / "huge.png").stat().st_size < 30_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning is not shown beside our message
        with pytest.raises(InputError, match=r"12000x12000 = 144,000,000 pixels, more than the limit of 50,000,000"):
            load_image(tmp_path / "huge.png")
        with pytest.raises(InputError, match=r"mask .* 144,000,000 pixels"):
            load_mask(tmp_path / "huge.png")
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="30x20 = 600 pixels, more than the limit of 500"):
        load_image(tmp_path / "small.png", max_pixels=500)
    assert load_image(tmp_path / "small.png", max_pixels=600).size == (30, 20)


def test_pil_decompression_bomb_error_is_an_input_error(tmp_path):
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # 196 Mpx: beyond twice PIL's limit
    with pytest.raises(InputError, match="too large to decode"):
        load_image(tmp_path / "bomb.png", max_pixels=None)


@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 100), (100, 3)])
def test_too_small_images_are_refused(size):
    with pytest.raises(InputError, match=f"at least {MIN_IMAGE_SIDE} px on each side"):
        check_image_size(size)


def test_a_one_bit_mask_file_reads_as_its_set_pixels(tmp_path):
    block = Image.new("1", (1200, 900))
    block.paste(1, (300, 100, 1000, 700))  # PIL stores set pixels as byte 255: bools must still be 0 / 1
    block.save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png")
    assert mask.sum() == 700 * 600 and mask[100:700, 300:1000].all()
