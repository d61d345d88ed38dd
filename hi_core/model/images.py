"""Images and key-object masks as the user meant them: decoding files, every PIL mode, sizes.

Decoding is bounded (DESIGN 7): `Image.open` only reads the header, so the pixel count is
checked against a cap (`MAX_IMAGE_PIXELS` by default; a public app passes a smaller one) before
anything is decoded. A 17.6 KB 1-bit PNG of 12000 x 12000 px is refused here instead of becoming
gigabytes of arrays. Images smaller than `MIN_IMAGE_SIDE` on a side are refused where a model or
GrabCut would read them (`check_image_size`: nothing to localize, and GrabCut fails on them).

How each PIL mode is read (`image_to_rgb` for images, `mask_from_image` for masks):
- Images become 8-bit RGB. 16-bit (`I;16*`) keeps its top 8 bits; 32-bit `I` is read in the
  smallest of the ranges 0..255, 0..65535 that holds its values, else stretched from its own
  minimum to maximum; `F` in [0, 1] is scaled by 255, else stretched the same way. So a 16-bit
  PNG is never saturated to white. Alpha (`LA`, `RGBA`, `P` with transparency, ...) is
  composited over white (`ALPHA_BACKGROUND`): a transparent pixel shows as the page behind it.
  `CMYK`, `P`, `1`, `L`, ... go through PIL's own conversion.
- Masks are thresholded at half their range: `1` set; `L` and colour modes >= 128 in some channel
  (`P` by its palette colours); `I;16*` >= 32768; `I` at half of the smallest of 0..255,
  0..65535, 0..2^31-1 that holds its values; `F` >= 0.5 (read as coverage). So JPEG noise never
  counts as object. A mask with an alpha channel that is not opaque everywhere is read from its
  alpha alone (>= 128: transparent = not object, as an exported brush layer is); an all-opaque
  alpha carries no information, and the grey or colour value decides.

The model gets its own pixels: an image reaches the processor as the file decodes it (within the pixel
cap), so maps equal transformers' own processor applied to the same file; only copies for display or
GrabCut are ever reduced (by their callers), and the mask keeps the image's size. A server that must
bound what a visitor's files cost passes `ImageLimits` with a `max_side`: each file is then reduced
while it is decoded (`open_bounded`, what the app's image editor does too), so n images hold at most
n x max_side^2 pixels; `load_image_and_mask` keeps a reduced mask the size of its reduced image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..base.errors import InputError

MAX_IMAGE_PIXELS = 50_000_000  # 50 Mpx: an 8000 x 6000 photo passes; decoding it costs ~150 MB
MIN_IMAGE_SIDE = 8
ALPHA_BACKGROUND = (255, 255, 255)

_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def check_image_size(size: tuple[int, int], max_pixels: int | None = None, kind: str = "image") -> None:
    """Refuse a (width, height) below `MIN_IMAGE_SIDE` on a side, or above `max_pixels` in all."""
    check_pixels(size, max_pixels, kind)
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{kind} is {width}x{height} px: it must be at least {MIN_IMAGE_SIDE} px on each side")


def check_pixels(size: tuple[int, int], max_pixels: int | None, kind: str = "image") -> None:
    """Refuse a (width, height) of more than `max_pixels` pixels (None: any size)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{kind} is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}: "
            "downscale it first"
        )


def open_header(source: str | Path | BinaryIO, label: str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file opened lazily (only its header read so far) whose pixel count is within
    `max_pixels` (None: no cap but PIL's own decompression-bomb limit). The caller decodes it (`load`,
    or `draft` + `thumbnail` to decode reduced). Unreadable, bomb-sized or too large: an input error
    naming `label` (and the size and the cap)."""
    try:
        # PIL warns about (and above twice its limit refuses) a huge image while opening it; the
        # warning is replaced by our own check of the same size right after, so it is ignored.
        # (The filter is process-wide while it lasts; at worst another thread's such warning is lost.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as error:  # not an OSError: PIL's guard against huge images
        raise InputError(f"{label} is too large to decode: {error}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{label} is not an image file PIL can read ({error})") from None
    try:
        check_pixels(image.size, max_pixels, label)
    except InputError:
        image.close()
        raise
    return image


@dataclass(frozen=True)
class ImageLimits:
    """How far an image file may be decoded: refused beyond `max_pixels` (read from its header), and
    reduced while decoding to at most `max_side` pixels per side (None: the file's own size, what the
    library gives the model). A public server passes its settings, so that a batch of records holds at
    most batch x max_side^2 pixels whatever the files claim."""

    max_pixels: int | None = MAX_IMAGE_PIXELS
    max_side: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < MIN_IMAGE_SIDE):
                raise InputError(f"{name} must be a whole number of at least {MIN_IMAGE_SIDE}, or None, got {value!r}")


def reduce_on_decode(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` (opened by `open_header`, not yet decoded) decoded to at most `max_side` pixels per side:
    a JPEG decodes at 1/2, 1/4 or 1/8 scale directly (draft mode), then a box filter; in place (PIL's
    `thumbnail`), and returned. Never more than the file's own pixels are held, and only while decoding."""
    if max_side is not None and max(image.size) > max_side:
        image.draft(image.mode, (max_side, max_side))
        image.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return image


def open_bounded(
    source: str | Path | BinaryIO, label: str, max_pixels: int | None, max_side: int | None
) -> Image.Image:
    """An image file with at most `max_pixels` (else InputError naming `label`), reduced to `max_side`
    per side while decoding (`reduce_on_decode`): what the app's image editor and its dataset records
    decode."""
    return reduce_on_decode(open_header(source, label, max_pixels), max_side)


def _existing(path: Path, kind: str, name: str | None) -> str:
    """How messages call the file (`kind` and `name`, default its path), once it is known to exist (else
    InputError)."""
    shown = repr(str(path) if name is None else name)
    if not path.is_file():
        raise InputError(f"{kind} file {shown} does not exist")
    return f"{kind} {shown}"


def open_image(
    path: str | Path,
    kind: str = "image",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_side: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """The decoded image of a file, its size checked from the header before decoding (`open_header`),
    reduced to `max_side` per side while decoding (None: full size).

    A missing or non-image file, or one beyond `max_pixels` is an input error naming `kind`, the
    file (as `name`, e.g. its path inside a dataset; default: its path), the size and the cap.
    """
    path = Path(path)
    label = _existing(path, kind, name)
    try:
        with open_header(path, label, max_pixels) as image:
            reduce_on_decode(image, max_side)
            image.load()
    except OSError as error:  # a truncated or damaged file fails only while decoding
        raise InputError(f"{label} is not an image file PIL can read ({error})") from None
    return image


def _range_top(high: int) -> int:
    """The top of the smallest of the ranges 0..255, 0..65535, 0..2^31-1 holding a non-negative `high`."""
    return next(top for top in (255, 65535, 2**31 - 1) if high <= top)


def _integer_range_top(values: np.ndarray) -> int | None:
    """The top of the smallest of the ranges 0..255, 0..65535, 0..2^31-1 holding `values`; None if one is negative."""
    low, high = int(values.min()), int(values.max())
    if low < 0:
        return None
    return _range_top(high)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Values mapped linearly from their own [min, max] onto 0..255 (a constant image: 0)."""
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.round((values - low) * scale).astype(np.uint8)


def _to_8bit(image: Image.Image) -> Image.Image:
    """An `I;16*`, `I` or `F` image as 8-bit grey (`L`), scaled by its range, never saturated."""
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT:
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
    elif image.mode == "I":
        top = _integer_range_top(values)
        grey = (
            _stretch(values)
            if top is None or top > 65535
            else (values.astype(np.uint8) if top == 255 else (values >> 8).astype(np.uint8))
        )
    else:  # F
        finite = np.isfinite(values).all()
        in_unit = finite and float(values.min()) >= 0.0 and float(values.max()) <= 1.0
        grey = np.round(values * 255.0).astype(np.uint8) if in_unit else _stretch(values)
    return Image.fromarray(grey, mode="L")


def image_to_rgb(image: Image.Image) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB, by the rules in the module docstring."""
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("L", "1") and "transparency" in image.info:
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES:
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _alpha(image: Image.Image) -> np.ndarray | None:
    """The alpha channel when the image has one that is not opaque everywhere, else None."""
    if image.mode in ("P", "L", "1", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in _ALPHA_MODES:
        return None
    alpha = np.asarray(image.getchannel("A"))
    return alpha if (alpha < 255).any() else None


def mask_from_image(image: Image.Image) -> np.ndarray:
    """A boolean (H, W) mask from an image of any PIL mode: half the range, or alpha (see module)."""
    alpha = _alpha(image)
    if alpha is not None:
        return alpha >= 128
    mode = image.mode
    if mode == "1":  # PIL's bytes are 0 / 255: compared, not reinterpreted, so the bools are 0 / 1
        return np.asarray(image).view(np.uint8) != 0
    if mode in _SIXTEEN_BIT:
        return np.asarray(image).astype(np.uint16) >= 32768
    if mode == "I":
        values = np.asarray(image)
        top = _range_top(max(int(values.max()), 0))  # negative values count as 0
        return values >= (top + 1) // 2
    if mode == "F":
        return np.asarray(image) >= 0.5
    if mode == "L":
        return np.asarray(image) >= 128
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0)) >= 128
    rgb = np.asarray(image.convert("RGB"))  # RGB(A), P, CMYK, YCbCr, ...: via RGB colours
    return rgb.max(axis=-1) >= 128


def load_image(
    path: str | Path, max_pixels: int | None = MAX_IMAGE_PIXELS, max_side: int | None = None, name: str | None = None
) -> Image.Image:
    """An 8-bit RGB image from a file of any mode; size checked before decoding, reduced to `max_side`
    while decoding (see module); messages call the file `name` (default: its path)."""
    return image_to_rgb(open_image(path, "image", max_pixels, max_side, name))


def load_mask(
    path: str | Path,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_side: int | None = None,
    name: str | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A boolean (H, W) key-object mask from a file of any mode, thresholded at half its range; reduced
    to `max_side` while decoding (a reduced grey mask is thresholded after the box filter: cells at
    least half covered), then brought to `size` (width, height) when given and different (nearest
    neighbour: a JPEG image's draft decoding can round its reduced size one pixel apart from the mask's)."""
    picture = open_image(path, "mask", max_pixels, max_side, name)
    if size is not None and picture.size != size:
        picture = picture.resize(size, Image.Resampling.NEAREST)
    mask = mask_from_image(picture)
    if not mask.any():
        raise InputError(
            f"mask is empty: no pixel of {str(path) if name is None else name!r} marks the object, which takes at "
            "least half the range (>= 128 of 255, >= 32768 of 65535, >= 0.5 as float) or, with transparency, at least "
            "half opaque"
        )
    return mask


def load_image_and_mask(
    image_path: str | Path,
    mask_path: str | Path,
    limits: ImageLimits = ImageLimits(),
    names: tuple[str | None, str | None] = (None, None),
) -> tuple[Image.Image, np.ndarray]:
    """A record's RGB image and boolean (H, W) mask, decoded within `limits`. Reduced, a mask of another size
    than its image (as the files are) is an InputError before either is decoded, and the mask keeps its
    image's reduced size; unreduced, the caller checks the sizes (`masks.check_mask`). `names`: how messages
    call the two files (default: their paths)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    if limits.max_side is not None:  # compare the files' own sizes (from their headers) before reducing
        sizes = []
        for path, kind, name in ((image_path, "image", names[0]), (mask_path, "mask", names[1])):
            with open_header(path, _existing(path, kind, name), limits.max_pixels) as header:
                sizes.append(header.size)
        (width, height), (mask_width, mask_height) = sizes
        if sizes[0] != sizes[1]:
            raise InputError(
                f"mask is {mask_width}x{mask_height} but the image is {width}x{height}: they must be the same size"
            )
    image = load_image(image_path, limits.max_pixels, limits.max_side, names[0])
    mask = load_mask(
        mask_path, limits.max_pixels, limits.max_side, names[1], size=image.size if limits.max_side else None
    )
    return image, mask
