"""Head maps over images, drawn as (H, W, 3) uint8 arrays with NumPy, OpenCV and PIL (no matplotlib figure).

A head's map (gh, gw) covers the whole image as gh x gw blocks, coloured with inferno over that map's own
range (min..max, so every map uses the whole scale) at 0.6 opacity; the key object's mask is outlined in
cyan. Images are first brought to the panel's size (area-averaged down, linearly up), so an upload of
thousands of pixels costs no more than a small one.

- `overlay_panels`: a grid of such panels with a title over each and one over the grid (the app's
  selected head, top-N heads and every head of a layer);
- `map_overlay`: one panel without titles (the Dataset tab's gallery);
- `mask_overlay`: the mask tinted over the image (the mask preview).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .drawing import INK, blank, colormap_lut, draw_lines, font, line_height, lut_indices, wrap

#: Nothing here draws an image with more pixels per side than this (thumbnails, panels).
PANEL_SIDE = 480
#: The longer side of one panel of `overlay_panels`.
PANEL_PX = 240
MAP_OPACITY = 0.6
OUTLINE = (0, 255, 255)  # the mask's outline
OUTLINE_PX = 2
GAP_PX = 6  # between panels, and around the grid
TITLE_PX = 12  # a panel's title
SUPTITLE_PX = 14  # the grid's title


def fit_for_display(
    image: np.ndarray, mask: np.ndarray | None = None, max_side: int = PANEL_SIDE
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, mask) area-averaged down so the longer side is at most `max_side` (the mask as a coverage
    fraction in [0, 1]); unchanged when already that small."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return image, mask


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8, copy=False))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at (width, height) = `size`: area-averaged when reduced, linear when enlarged."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    shrink = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _mask_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at (width, height) = `size` (area coverage >= 0.5 when reduced, nearest when enlarged)."""
    mask = np.asarray(mask)
    if (mask.shape[1], mask.shape[0]) == size:
        return mask >= 0.5 if mask.dtype != bool else mask
    shrink = size[0] < mask.shape[1]
    resized = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    return resized >= 0.5


def outline(mask: np.ndarray, thickness: int = OUTLINE_PX) -> np.ndarray:
    """The pixels of a bool mask within `thickness` px of its edge (the image's border counts as an edge)."""
    if not mask.any():
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    core = cv2.erode(mask.astype(np.uint8), kernel, iterations=thickness, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & ~core.astype(bool)


def map_colours(head_map: np.ndarray, size: tuple[int, int], colormap: str = "inferno") -> np.ndarray:
    """A map (gh, gw) as (height, width, 3) uint8 blocks over `size` = (width, height): `colormap` over the
    map's own min..max; pixel row y shows map row floor(y * gh / height) (the map covers the whole image)."""
    head_map = np.asarray(head_map, np.float64)
    low, high = np.nanmin(head_map), np.nanmax(head_map)
    colours = colormap_lut(colormap)[lut_indices(head_map, low, high)]  # (gh, gw, 3)
    return cv2.resize(colours, size, interpolation=cv2.INTER_NEAREST)


def _panel(image: np.ndarray, head_map: np.ndarray | None, edge: np.ndarray | None) -> np.ndarray:
    """The (already sized) image with the map blended over it and the outline pixels `edge` painted."""
    height, width = image.shape[:2]
    if head_map is not None:
        image = cv2.addWeighted(image, 1 - MAP_OPACITY, map_colours(head_map, (width, height)), MAP_OPACITY, 0.0)
    elif edge is not None:
        image = image.copy()
    if edge is not None:
        image[edge] = OUTLINE
    return image


def map_overlay(
    image: np.ndarray, head_map: np.ndarray | None = None, mask: np.ndarray | None = None, min_side: int = 0
) -> np.ndarray:
    """One panel as a (H', W', 3) uint8 array: the head's map (gh, gw) over the image as patch blocks
    (inferno over the map's range, 0.6 opacity) and the mask's 2-px outline in cyan. A small image is
    first enlarged by an integer factor (nearest) until its shorter side is at least `min_side` px, so
    thumbnails stay sharp; a large one is reduced to PANEL_SIDE."""
    image, mask = fit_for_display(_rgb(image), mask)
    factor = max(1, -(-min_side // min(image.shape[:2])))
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    edge = None
    if mask is not None:
        inside = np.asarray(mask) >= 0.5
        if factor > 1:
            inside = inside.repeat(factor, axis=0).repeat(factor, axis=1)
        edge = outline(inside) if inside.any() else None
    return _panel(image, head_map, edge) if (head_map is not None or edge is not None) else image.copy()


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 255)) -> np.ndarray:
    """The image with the mask tinted in `colour` (half opacity), (H, W, 3) uint8."""
    blended = image[..., :3].astype(np.float32).copy()
    blended[mask] = 0.5 * blended[mask] + 0.5 * np.asarray(colour, np.float32)
    return blended.astype(np.uint8)


def _panel_size(image: np.ndarray, side: int) -> tuple[int, int]:
    """(width, height) of `image` with its longer side at `side` px."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay_panels(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray | None],
    masks: Sequence[np.ndarray | None] | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    title: str = "",
    panel: int = PANEL_PX,
) -> np.ndarray:
    """A grid of panels (image, its head map, the mask's outline) as one (H, W, 3) uint8 array on white:
    `columns` panels per row, each image scaled so its longer side is `panel` px and centred in its
    cell, `titles[i]` over panel i (wrapped to the panel's width, at most 3 lines), `title` over the grid.
    A map or mask may be None (the image alone). The same image (or mask) object passed for several
    panels is resized once."""
    count = len(images)
    if count == 0:
        raise ValueError("overlay_panels needs at least one image")
    if (
        len(maps) != count
        or (masks is not None and len(masks) != count)
        or (titles is not None and len(titles) != count)
    ):
        raise ValueError("images, maps, masks and titles must have the same length")
    columns = max(1, min(columns, count))
    rows = -(-count // columns)

    sized: dict[int, np.ndarray] = {}  # id(image) -> the image at panel size
    edges: dict[tuple[int, tuple[int, int]], np.ndarray | None] = {}  # (id(mask), size) -> outline pixels
    pictures = []
    for index, image in enumerate(images):
        if id(image) not in sized:
            rgb = _rgb(image)
            sized[id(image)] = _resized(rgb, _panel_size(rgb, panel))
        picture = sized[id(image)]
        size = (picture.shape[1], picture.shape[0])
        mask = None if masks is None else masks[index]
        edge = None
        if mask is not None:
            key = (id(mask), size)
            if key not in edges:
                inside = _mask_at(mask, size)
                edges[key] = outline(inside) if inside.any() else None
            edge = edges[key]
        pictures.append(
            _panel(picture, maps[index], edge) if (maps[index] is not None or edge is not None) else picture
        )

    cell_width = max(p.shape[1] for p in pictures)
    cell_height = max(p.shape[0] for p in pictures)
    title_face, suptitle_face = font(TITLE_PX), font(SUPTITLE_PX, bold=True)
    wrapped = [wrap(text, title_face, cell_width) if text else [] for text in (titles or [""] * count)]
    title_band = max(len(lines) for lines in wrapped) * line_height(title_face)
    title_band += 3 if title_band else 0
    width = columns * cell_width + (columns + 1) * GAP_PX
    top_lines = wrap(title, suptitle_face, width - 2 * GAP_PX) if title else []
    top = GAP_PX + (len(top_lines) * line_height(suptitle_face) + GAP_PX if top_lines else 0)
    row_height = title_band + cell_height
    height = top + rows * row_height + rows * GAP_PX

    canvas = blank(height, width)
    origins = []
    for index, picture in enumerate(pictures):
        row, column = divmod(index, columns)
        x0 = GAP_PX + column * (cell_width + GAP_PX)
        y0 = top + row * (row_height + GAP_PX)
        px = x0 + (cell_width - picture.shape[1]) // 2
        py = y0 + title_band + (cell_height - picture.shape[0]) // 2
        canvas[py : py + picture.shape[0], px : px + picture.shape[1]] = picture
        origins.append((x0, y0))
    if not top_lines and not any(wrapped):
        return canvas
    drawn = Image.fromarray(canvas)
    draw = ImageDraw.Draw(drawn)
    if top_lines:
        draw_lines(draw, top_lines, suptitle_face, width / 2, GAP_PX, fill=INK)
    for (x0, y0), lines in zip(origins, wrapped):
        draw_lines(draw, lines, title_face, x0 + cell_width / 2, y0, fill=INK)
    return np.array(drawn)


#: Colours a brush or a mask layer may take, as (R, G, B): saturated and far apart.
BRUSH_COLOURS = ((255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 160, 255), (255, 0, 0), (255, 255, 255), (0, 0, 0))


def contrasting_colour(
    image: np.ndarray, colours: Sequence[tuple[int, int, int]] = BRUSH_COLOURS
) -> tuple[int, int, int]:
    """Of `colours`, the one the image's pixels come least close to: the largest 5th percentile of the Euclidean
    RGB distance to the pixels (the closest 5% decide, so a small red object makes red a poor brush on it).

    `image` (H, W, 3) uint8; it is sampled to at most ~64k pixels, so the cost does not grow with the upload."""
    pixels = np.asarray(image)[..., :3].reshape(-1, 3)
    pixels = pixels[:: max(1, len(pixels) // 65_536)].astype(np.float32)  # (n, 3)
    palette = np.asarray(colours, np.float32)  # (c, 3)
    distances = np.linalg.norm(pixels[None] - palette[:, None], axis=-1)  # (c, n)
    red, green, blue = colours[int(np.percentile(distances, 5, axis=1).argmax())]
    return int(red), int(green), int(blue)
