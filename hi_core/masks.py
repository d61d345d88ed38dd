"""Images and key-object masks: reading them, checking them, and putting the mask on the grid.

DESIGN 1.4: the mask goes through the image's geometric transform (the family adapter sends it
through the processor), is area-averaged onto the image grid, and a cell belongs to the object
when at least half of it is covered; if none is, the one cell with the largest coverage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

OBJECT_FRACTION = 0.5


def _read_image_file(path: str | Path, kind: str) -> Image.Image:
    """The decoded image of a file; a missing or non-image file is an input error naming `kind`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{kind} file {str(path)!r} does not exist")
    prefix = "" if kind == "image" else f"{kind} "
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{prefix}{str(path)!r} is not an image file PIL can read ({error})") from None
    except Image.DecompressionBombError as error:  # not an OSError: PIL's guard against huge images
        raise InputError(f"{prefix}{str(path)!r} is too large to decode ({error})") from None


def load_image(path: str | Path) -> Image.Image:
    """An RGB image from a file; a missing or non-image file is an input error."""
    return _read_image_file(path, "image").convert("RGB")


def load_mask(path: str | Path) -> np.ndarray:
    """A boolean (H, W) mask from an image file: nonzero pixels (any channel) are the key object."""
    array = np.asarray(_read_image_file(path, "mask"))
    if array.ndim == 3:
        if array.shape[-1] == 4:  # RGBA: a transparent pixel is not the object, whatever its colour
            array = np.where(array[..., 3:] > 0, array[..., :3], 0)
        array = array.max(axis=-1)
    return array > 0


def check_mask(mask: np.ndarray, image: Image.Image) -> np.ndarray:
    """The mask as a boolean array, checked against the image: same size, not empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be a 2-D array (height, width), got shape {mask.shape}")
    height, width = mask.shape
    if (width, height) != image.size:
        raise InputError(
            f"mask is {width}x{height} but the image is {image.size[0]}x{image.size[1]}: they must be the same size"
        )
    mask = mask > 0
    if not mask.any():
        raise InputError("mask is empty: mark the key object with nonzero pixels")
    return mask


@dataclass(frozen=True)
class MaskGrid:
    """The key object on the image grid.

    fractions: (gh, gw) share of each cell covered by the object, in [0, 1].
    object_patches: (gh, gw) bool, the cells that belong to the object.
    """

    fractions: np.ndarray
    object_patches: np.ndarray


def object_patches(fractions: np.ndarray, valid: np.ndarray | None = None) -> MaskGrid:
    """Cells with coverage >= 0.5, or else the single most covered cell (padding cells excluded)."""
    fractions = np.where(valid, fractions, 0.0) if valid is not None else fractions
    if not (fractions > 0).any():
        raise InputError("the mask lies outside the part of the image the model sees (after resize / crop)")
    patches = fractions >= OBJECT_FRACTION
    if not patches.any():
        patches = np.zeros(fractions.shape, dtype=bool)
        patches.flat[int(np.argmax(fractions))] = True
    return MaskGrid(fractions=fractions, object_patches=patches)


def painted_mask(layers: list[np.ndarray | None], size: tuple[int, int]) -> np.ndarray:
    """The union of painted strokes as a boolean (H, W) mask of the image's `size` (width, height).

    `layers` are the RGBA brush layers of an image editor; a pixel is painted where a layer's
    alpha is nonzero (colour differences against the background would miss strokes in the image's
    own colours). A layer of another size is scaled to the image when the aspect ratio agrees
    (editors may return a resized canvas), and is an input error otherwise.
    """
    width, height = size
    painted = np.zeros((height, width), dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        layer = np.asarray(layer)
        alpha = layer[..., 3] if layer.ndim == 3 and layer.shape[-1] == 4 else (layer.max(axis=-1) if layer.ndim == 3 else layer)
        if alpha.shape != (height, width):
            layer_height, layer_width = alpha.shape
            if abs(layer_width * height - layer_height * width) > max(width, height):
                raise InputError(f"painted layer is {layer_width}x{layer_height} but the image is {width}x{height}")
            alpha = cv2.resize(alpha.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        painted |= alpha > 0
    return painted


def grabcut_mask(image: Image.Image, hint: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Propose an object mask from a rough hint with OpenCV's GrabCut.

    `hint` (H, W) bool is a scribble or a filled box over the object: its bounding box (grown by
    a margin) bounds the object and its pixels are marked probable foreground. Returns (H, W) bool.
    """
    hint = np.asarray(hint, dtype=bool)
    if not hint.any():
        raise InputError("draw a rough box or scribble over the object first")
    pixels = np.asarray(image.convert("RGB"))[..., ::-1].copy()  # OpenCV wants BGR
    height, width = hint.shape
    ys, xs = np.nonzero(hint)
    margin = max(2, int(0.05 * max(height, width)))
    x0, x1 = max(0, xs.min() - margin), min(width - 1, xs.max() + margin)
    y0, y1 = max(0, ys.min() - margin), min(height - 1, ys.max() + margin)
    labels = np.full((height, width), cv2.GC_BGD, dtype=np.uint8)
    labels[y0 : y1 + 1, x0 : x1 + 1] = cv2.GC_PR_BGD
    labels[hint] = cv2.GC_PR_FGD
    background_model, foreground_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(pixels, labels, None, background_model, foreground_model, iterations, cv2.GC_INIT_WITH_MASK)
    proposal = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    return proposal if proposal.any() else hint
