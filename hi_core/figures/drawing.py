"""What the array-drawn pictures share (`heatmap`, `overlays`): colormap lookup tables, fonts, wrapped text.

Pictures drawn here are (H, W, 3) uint8 arrays built with NumPy, OpenCV and PIL: no matplotlib figure is
made (matplotlib only lends its colormaps and its bundled DejaVu font, each loaded once)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import ImageDraw, ImageFont

INK = (34, 34, 34)  # text on the white background
BACKGROUND = (255, 255, 255)


def blank(height: int, width: int, colour: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """An (height, width, 3) uint8 canvas of one colour. A grey (all channels equal, like the white
    background) is a scalar fill, ~100x faster than NumPy broadcasting a 3-tuple into every pixel."""
    if colour[0] == colour[1] == colour[2]:
        return np.full((height, width, 3), colour[0], np.uint8)
    return np.tile(np.asarray(colour, np.uint8), (height, width, 1))


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """matplotlib's colormap `name` as a (256, 3) uint8 lookup table (built once per name)."""
    from matplotlib import colormaps

    return np.round(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def lut_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` scaled from [low, high] to lookup-table indices 0..255 (clipped; NaN -> 0)."""
    span = high - low
    scaled = (np.asarray(values, np.float64) - low) / span if span > 0 else np.zeros(np.shape(values))
    return np.clip(np.nan_to_num(scaled * 255 + 0.5, nan=0.0), 0, 255).astype(np.uint8)


@functools.cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's bundled copy) at `size` px; PIL's default font if that file is missing."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size)


def line_height(face) -> int:
    ascent, descent = face.getmetrics()
    return ascent + descent


def text_width(face, text: str) -> float:
    return face.getlength(text)


def wrap(text: str, face, width: float, max_lines: int = 3) -> list[str]:
    """`text` broken at spaces into lines at most `width` px wide (a word longer than that is cut with
    an ellipsis; beyond `max_lines` the last line ends with one)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_width(face, candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return [cut(line, face, width) for line in lines] or [""]


def cut(line: str, face, width: float) -> str:
    """`line`, cut to at most `width` px with an ellipsis when longer."""
    if text_width(face, line) <= width:
        return line
    while line and text_width(face, line + "…") > width:
        line = line[:-1]
    return line + "…"


def draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], face, centre_x: float, top: float, fill=INK) -> None:
    """Lines of text centred on `centre_x`, the first one's top at `top`."""
    height = line_height(face)
    for index, line in enumerate(lines):
        draw.text((centre_x, top + index * height), line, font=face, fill=fill, anchor="ma")


def nice_ticks(low: float, high: float, count: int = 4) -> tuple[np.ndarray, int]:
    """Round tick values within [low, high] (about `count` intervals) and the decimals they need."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    ticks = np.arange(math.ceil(low / step - 1e-9) * step, high + step * 1e-6, step)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if round(step / magnitude, 3) == 2.5 else 0))
    return ticks, min(decimals, 6)


def tick_label(value: float, decimals: int) -> str:
    """`value` with `decimals` decimals, "0" rather than "-0.0"."""
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text
