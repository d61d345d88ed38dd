"""The image editor's side of the Explorer: what the editor is sent (an image, an example's mask as its brush
layer, a brush in a colour that stands out) and what is read back from it (the image, the painted or uploaded
mask), and the mask preview drawn from them. No Gradio events here: `ui.explorer_events` wires them."""

from __future__ import annotations

import gradio as gr
import numpy as np
from gradio.components.image_editor import EditorValue
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.figures.overlays import contrasting_colour, map_overlay, mask_overlay
from hi_core.method.masks import check_mask, painted_mask
from hi_core.model.images import load_mask

MASK_PREVIEW_PX = 240  # a small image is enlarged (nearest) to at least this for the mask preview


def mask_preview(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted and outlined, enlarged by a whole factor when small, so it reads at a glance."""
    return map_overlay(mask_overlay(image, mask), None, mask, min_side=MASK_PREVIEW_PX)


#: What the message beside Analyze says when nothing marks the key object.
NO_MASK = "paint the object you want scored with the brush (or pick an example, or upload a mask)"
MASK_LAYER_ALPHA = 150  # an example's mask in the editor: painted, and the object still shows through


def hex_colour(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{channel:02x}" for channel in colour)


def brush(colour: tuple[int, int, int]) -> gr.Brush:
    """The editor's brush in one colour: the one that stands out on the image (`contrasting_colour`; a red brush
    vanishes on a red object)."""
    shown = hex_colour(colour)
    return gr.Brush(colors=[shown], default_color=shown, default_size=6, color_mode="fixed")


def editor_value(
    image: np.ndarray, mask: np.ndarray | None = None, colour: tuple[int, int, int] | None = None
) -> EditorValue:
    """The editor's value: `image` with `mask` (if any) as its brush layer, half see-through, in `colour` (default:
    the brush colour that stands out on `image`)."""
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)  # (H, W, RGBA)
    if mask is not None:
        strokes[mask] = (*(colour or contrasting_colour(image)), MASK_LAYER_ALPHA)
    return {"background": image, "layers": [strokes], "composite": image}


def with_image(editor: dict | None) -> dict:
    """The editor's value, refused (InputError) when it holds no image."""
    if not editor or editor.get("background") is None:
        raise InputError("upload an image or pick an example first")
    return editor


def background(editor: dict | None) -> np.ndarray:
    return np.asarray(with_image(editor)["background"])[..., :3].astype(np.uint8)


def mask_from_inputs(
    editor: dict | None, uploaded_mask: str | None, max_pixels: int, check: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): the uploaded mask file (at most `max_pixels`) if given, else the painted strokes; the mask
    checked for scoring (`check_mask`) unless `check` is False."""
    value = with_image(editor)
    image = background(value)
    size = (image.shape[1], image.shape[0])
    if uploaded_mask:  # a mask of the uploaded image's size, reduced like the image if the editor reduced it
        mask = painted_mask([load_mask(uploaded_mask, max_pixels=max_pixels)], size)
    else:
        mask = painted_mask(list(value.get("layers") or []), size)
    if check and not mask.any():
        raise InputError(NO_MASK)
    return image, check_mask(mask, Image.fromarray(image)) if check else mask
