"""Key-object masks: checking them against the image, and putting them on the model's grid.

DESIGN 1.4: the mask goes through the image's geometric transform (the family adapter sends it
through the processor), is area-averaged onto the image grid, and a cell belongs to the object
when at least half of it is covered; if none is, the one cell with the largest coverage.
A mask that covers every cell the model sees is refused: every head's HI would be 1 whatever it
attends to. One that covers more than `ALMOST_FULL_SHARE` of them is scored with a logged
warning (chance IoU is then high, and HI tells heads apart poorly).

Reading image and mask files (every PIL mode, the pixel cap) lives in `hi_core.model.images`.
`mask_grid` is the step of every scoring run: a checked mask on the grid of a built sequence.
Also here: masks from a painting editor's layers, and GrabCut proposals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from ..base.errors import InputError
from ..model.images import check_image_size, image_to_rgb

if TYPE_CHECKING:
    from ..model.inputs import ModelInputs
    from ..model.loading import LoadedModel

logger = logging.getLogger(__name__)

OBJECT_FRACTION = 0.5
ALMOST_FULL_SHARE = 0.75  # above this share of the valid cells, a logged warning
GRABCUT_SIDE = 512  # GrabCut runs on a copy whose longer side is at most this many pixels

__all__ = [
    "MaskGrid",
    "check_mask",
    "grabcut_mask",
    "mask_grid",
    "object_patches",
    "painted_mask",
]


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
    mask = mask if mask.dtype == bool else mask > 0
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
    """Cells with coverage >= 0.5, or else the single most covered cell (padding cells excluded).

    Refused when the object covers every valid cell (HI would be 1 for every head); a warning is
    logged above `ALMOST_FULL_SHARE` of them.
    """
    valid = np.ones(fractions.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    fractions = np.where(valid, fractions, 0.0)
    if not (fractions > 0).any():
        raise InputError("the mask lies outside the part of the image the model sees (after resize / crop)")
    patches = fractions >= OBJECT_FRACTION
    if not patches.any():
        patches = np.zeros(fractions.shape, dtype=bool)
        patches.flat[int(np.argmax(fractions))] = True
    covered, cells = int(patches.sum()), int(valid.sum())
    if covered == cells:
        raise InputError(
            f"the mask covers the whole image the model sees (all {cells} grid cells): every head's HI would be 1; "
            "mark only the key object"
        )
    if covered > ALMOST_FULL_SHARE * cells:
        logger.warning(
            "the mask covers %d of %d grid cells (more than %.0f%%): HI tells heads apart poorly when the object "
            "fills the image",
            covered,
            cells,
            100 * ALMOST_FULL_SHARE,
        )
    return MaskGrid(fractions=fractions, object_patches=patches)


def mask_grid(loaded: LoadedModel, inputs: ModelInputs, mask: np.ndarray) -> MaskGrid:
    """The mask (H, W) of the image of `inputs`, bool or float coverage, on its grid (DESIGN 1.4):
    sent through the processor's geometry by the family adapter (at the image's size, as the image went),
    area-averaged, and thresholded by `object_patches` on the cells that are image."""
    fractions = loaded.adapter.view_mask_fractions(loaded.model, loaded.processor, mask, inputs.tensors, inputs.layout)
    return object_patches(fractions, inputs.layout.valid)


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
        alpha = (
            layer[..., 3]
            if layer.ndim == 3 and layer.shape[-1] == 4
            else (layer.max(axis=-1) if layer.ndim == 3 else layer)
        )
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
    a margin) bounds the object and its pixels are marked probable foreground. GrabCut runs on a
    copy of at most `GRABCUT_SIDE` px per side (its cost does not grow with the upload), and its
    proposal is scaled back to the image. Returns (H, W) bool.
    """
    hint = np.asarray(hint, dtype=bool)
    width, height = image.size
    check_image_size(image.size)
    if hint.shape != (height, width):
        raise InputError(f"the hint is {hint.shape[1]}x{hint.shape[0]} but the image is {width}x{height}")
    if not hint.any():
        raise InputError("draw a rough box or scribble over the object first")
    original_hint = hint
    scale = min(1.0, GRABCUT_SIDE / max(width, height))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = image_to_rgb(image)
    if small != (width, height):
        rgb = rgb.resize(small, Image.Resampling.BOX)
        # A thin scribble must survive the downscale: any covered share marks the small pixel.
        hint = cv2.resize(np.where(hint, np.uint8(255), np.uint8(0)), small, interpolation=cv2.INTER_AREA) > 0
    if hint.all():
        raise InputError(
            "the hint covers the whole image: GrabCut needs background around the object; mark only the object"
        )
    pixels = np.asarray(rgb)[..., ::-1].copy()  # OpenCV wants BGR
    small_height, small_width = hint.shape
    ys, xs = np.nonzero(hint)
    margin = max(2, int(0.05 * max(small_height, small_width)))
    x0, x1 = max(0, xs.min() - margin), min(small_width - 1, xs.max() + margin)
    y0, y1 = max(0, ys.min() - margin), min(small_height - 1, ys.max() + margin)
    labels = np.full((small_height, small_width), cv2.GC_BGD, dtype=np.uint8)
    labels[y0 : y1 + 1, x0 : x1 + 1] = cv2.GC_PR_BGD
    labels[hint] = cv2.GC_PR_FGD
    background_model, foreground_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    no_rect = (0, 0, 0, 0)  # GC_INIT_WITH_MASK starts from `labels`; the rectangle is unused
    cv2.grabCut(pixels, labels, no_rect, background_model, foreground_model, iterations, cv2.GC_INIT_WITH_MASK)
    proposal = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if not proposal.any():
        return original_hint
    if proposal.shape != (height, width):
        proposal = (
            cv2.resize(np.where(proposal, np.uint8(255), np.uint8(0)), (width, height), interpolation=cv2.INTER_LINEAR)
            >= 128
        )
    return proposal
