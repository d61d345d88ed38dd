"""The clickable L x H heatmap of HI (or of any per-head value), drawn with NumPy and PIL, and its geometry.

`HeatmapLayout.fit(layers, heads)` decides where everything lies from the shape alone; `draw_heatmap`
draws with that layout and `HeatmapLayout.cell_at(x, y)` maps a click back to (layer, head), so the
picture and the click agree by construction. A UI keeps the layout it drew with, or fits it again from
the values' shape (the same numbers give the same layout).

Picture, top to bottom: a title; "head ->" and the head numbers; the grid (rows: layers from the top,
columns: heads) with the layer numbers and a vertical "layer" down its left and a colour bar with its
tick values on its right; one line naming the selected cell and its value; with `missing` (grey NaN
cells, e.g. a hybrid model's layers without softmax attention) a legend line saying what grey means.
Numbers are printed on
every n-th row / column when the cells are too small for each (the selected row's and column's number
are always shown, boxed). The selected cell has a thick black-white-black outline. Each cell's value
is printed in it when the grid is at most `VALUES_MAX` x `VALUES_MAX`.

Colours: viridis from 0 (dark) to the largest value (yellow), so a cell's colour reads as an absolute
amount from 0 like HI itself, and the strongest head is always the brightest whatever the model's
range (HI rarely nears 1, and a 0..1 scale would leave most grids dark). Values below 0 (an HI
difference) switch to a diverging scale (RdBu_r, symmetric around 0). `vmin`/`vmax` fix the scale,
e.g. to compare two heatmaps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .drawing import (
    BACKGROUND,
    INK,
    blank,
    colormap_lut,
    cut,
    font,
    line_height,
    lut_indices,
    nice_ticks,
    text_width,
    tick_label,
)

MAX_WIDTH, MAX_HEIGHT = 420, 360  # the grid fits in this, unless cells would be smaller than MIN_CELL
MIN_CELL, MAX_CELL = 10, 64  # px per head's square
VALUES_MAX = 8  # each cell's value is printed on grids of at most this many layers and heads
LABEL_PX = 11  # layer / head / tick numbers
TITLE_PX = 12
PAD = 6
TITLE_BAND = 18
AXIS_BAND = 14  # "head ->" above the head numbers; the rotated "layer" left of the layer numbers
LABEL_BAND = 15  # the head numbers
BAR_GAP, BAR_WIDTH, TICKS_WIDTH = 14, 14, 42  # grid -> colour bar -> its tick values
BAR_MIN_HEIGHT = 100
CAPTION_BAND = 20  # the selected cell's line
LEGEND_BAND = 18  # the grey cells' meaning, when there are any (`fit(legend=True)`)
MIN_WIDTH = 300  # the title and the selected cell's line fit
SELECTION_PX = 3  # the outline's reach beyond the cell (black, white, white)
NICE_STEPS = (1, 2, 4, 5, 10, 20, 25, 50, 100)
NAN_COLOUR = (200, 200, 200)


@dataclass(frozen=True)
class HeatmapLayout:
    """Where a (layers, heads) heatmap's parts lie in its picture, in pixels (x right, y down).

    The grid's top-left corner is (left, top); the cell of (layer, head) spans x in
    [left + head * cell, left + (head + 1) * cell) and y in [top + layer * cell, top + (layer + 1) * cell)."""

    layers: int
    heads: int
    cell: int
    left: int
    top: int
    width: int  # the whole picture
    height: int
    bar_left: int  # the colour bar: x in [bar_left, bar_left + BAR_WIDTH), y in [top, top + bar_height)
    bar_height: int
    caption_top: int  # the selected cell's line
    layer_step: int  # every layer_step-th layer number is printed
    head_step: int
    values_shown: bool  # each cell's value printed in it
    legend_top: int | None = None  # the line saying what grey cells mean, below the caption (None: no such line)

    @classmethod
    def fit(
        cls, layers: int, heads: int, max_width: int = MAX_WIDTH, max_height: int = MAX_HEIGHT, legend: bool = False
    ) -> HeatmapLayout:
        """The layout for a (layers, heads) grid: square cells as large as fit `max_width` x `max_height`,
        between MIN_CELL and MAX_CELL px (a grid too large for MIN_CELL cells grows past the bounds).
        `legend`: a line below the caption says what grey (NaN) cells mean; it moves nothing above it,
        so `cell_at` is the same with or without it."""
        if layers < 1 or heads < 1:
            raise ValueError(f"a heatmap needs at least one layer and one head, got {layers} x {heads}")
        cell = int(np.clip(min(max_width // heads, max_height // layers), MIN_CELL, MAX_CELL))
        digit = text_width(font(LABEL_PX), "0")
        layer_labels = math.ceil(digit * len(str(layers - 1))) + 4
        left = PAD + AXIS_BAND + layer_labels + SELECTION_PX + 2
        top = PAD + TITLE_BAND + AXIS_BAND + LABEL_BAND + SELECTION_PX
        bar_left = left + heads * cell + BAR_GAP
        bar_height = max(layers * cell, BAR_MIN_HEIGHT)
        caption_top = top + bar_height + SELECTION_PX + 5
        width = max(bar_left + BAR_WIDTH + TICKS_WIDTH + PAD, MIN_WIDTH)
        legend_top = caption_top + CAPTION_BAND if legend else None
        height = caption_top + CAPTION_BAND + (LEGEND_BAND if legend else 0) + PAD
        label_height = line_height(font(LABEL_PX)) - 1
        layer_step = next(step for step in NICE_STEPS + (layers,) if step * cell >= label_height)
        head_label = digit * len(str(heads - 1)) + 4
        head_step = next(step for step in NICE_STEPS + (heads,) if step * cell >= head_label)
        values_shown = layers <= VALUES_MAX and heads <= VALUES_MAX
        return cls(
            layers,
            heads,
            cell,
            left,
            top,
            width,
            height,
            bar_left,
            bar_height,
            caption_top,
            layer_step,
            head_step,
            values_shown,
            legend_top,
        )

    @property
    def grid_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the whole grid, x1 and y1 exclusive."""
        return self.left, self.top, self.left + self.heads * self.cell, self.top + self.layers * self.cell

    @property
    def bar_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the colour bar, x1 and y1 exclusive."""
        return self.bar_left, self.top, self.bar_left + BAR_WIDTH, self.top + self.bar_height

    def cell_box(self, layer: int, head: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cell of (layer, head), x1 and y1 exclusive."""
        if not (0 <= layer < self.layers and 0 <= head < self.heads):
            raise IndexError(f"no cell ({layer}, {head}) in a {self.layers} x {self.heads} heatmap")
        x0, y0 = self.left + head * self.cell, self.top + layer * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell

    def cell_centre(self, layer: int, head: int) -> tuple[int, int]:
        x0, y0, _, _ = self.cell_box(layer, head)
        return x0 + self.cell // 2, y0 + self.cell // 2

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The (layer, head) whose cell holds the pixel (x, y), or None outside the grid (labels,
        colour bar, margins)."""
        head = math.floor((x - self.left) / self.cell)
        layer = math.floor((y - self.top) / self.cell)
        if 0 <= layer < self.layers and 0 <= head < self.heads:
            return layer, head
        return None


def _scale(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float, str]:
    """(low, high, colormap): 0..max with viridis; symmetric around 0 with RdBu_r when values are negative."""
    finite = values[np.isfinite(values)]
    smallest = float(finite.min()) if finite.size else 0.0
    largest = float(finite.max()) if finite.size else 0.0
    if vmin is None and smallest < 0:
        reach = vmax if vmax is not None else max(-smallest, largest)
        reach = reach if reach > 0 else 1.0
        return -reach, reach, "RdBu_r"
    low = 0.0 if vmin is None else float(vmin)
    high = (largest if largest > low else low + 1.0) if vmax is None else float(vmax)
    return low, high, ("RdBu_r" if low < 0 else "viridis")


def _number(value: float, decimals: int) -> str:
    """A cell's value with `decimals` decimals ("–" for NaN, never "-0.00")."""
    if not np.isfinite(value):
        return "–"
    text = f"{value:.{decimals}f}"
    return text[1:] if float(text) == 0 and text.startswith("-") else text


@functools.cache
def _rotated(text: str) -> Image.Image:
    """`text` turned 90 degrees counter-clockwise, as an L image to paste through (ink = 255)."""
    face = font(LABEL_PX)
    strip = Image.new("L", (math.ceil(text_width(face, text)) + 2, line_height(face)), 0)
    ImageDraw.Draw(strip).text((1, 0), text, font=face, fill=255)
    return strip.rotate(90, expand=True)


def _value_colour(colour: np.ndarray) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_heatmap(
    values: np.ndarray,
    selected: tuple[int, int] | None = None,
    layout: HeatmapLayout | None = None,
    title: str = "Head Impact: click a cell",
    label: str = "HI",
    vmin: float | None = None,
    vmax: float | None = None,
    missing: str | None = None,
    marked: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """`values` (layers, heads) as a clickable heatmap, (layout.height, layout.width, 3) uint8; `layout`
    defaults to `HeatmapLayout.fit(*values.shape)` (with a legend line when `missing` is given). `label`
    names the value (colour bar, caption). NaN cells are grey; `missing` says what they mean (e.g. a layer
    not scored) in the legend line, when the layout has one. Each (layer, head) of `marked` (e.g. heads removed by
    an ablation) is crossed out."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"a heatmap needs a (layers, heads) array, got shape {values.shape}")
    layout = layout or HeatmapLayout.fit(values.shape[0], values.shape[1], legend=missing is not None)
    if (layout.layers, layout.heads) != values.shape:
        raise ValueError(f"layout for {layout.layers} x {layout.heads} heads, values {values.shape}")
    low, high, colormap = _scale(values, vmin, vmax)
    lut = colormap_lut(colormap)
    colours = lut[lut_indices(values, low, high)]  # (layers, heads, 3)
    colours[~np.isfinite(values)] = NAN_COLOUR

    canvas = blank(layout.height, layout.width)
    x0, y0, x1, y1 = layout.grid_box
    cell = layout.cell
    canvas[y0:y1, x0:x1] = colours.repeat(cell, axis=0).repeat(cell, axis=1)
    if cell >= 16:  # thin white gaps between cells
        canvas[y0 + cell - 1 : y1 : cell, x0:x1] = BACKGROUND
        canvas[y0:y1, x0 + cell - 1 : x1 : cell] = BACKGROUND
    bx0, by0, bx1, by1 = layout.bar_box
    gradient = lut[np.linspace(255, 0, by1 - by0).round().astype(int)]  # top: high
    canvas[by0:by1, bx0:bx1] = gradient[:, None, :]

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    labels, bold = font(LABEL_PX), font(LABEL_PX, bold=True)
    draw.text(
        (PAD, PAD),
        cut(title, font(TITLE_PX, bold=True), layout.width - 2 * PAD),
        font=font(TITLE_PX, bold=True),
        fill=INK,
    )
    draw.rectangle((bx0 - 1, by0 - 1, bx1, by1), outline=INK)

    # axes: "head ->" over the head numbers, a rotated "layer" left of the layer numbers
    head_row = y0 - SELECTION_PX - 2  # the head numbers' baseline
    draw.text((x0, head_row - LABEL_BAND), "head →", font=labels, fill=INK, anchor="ls")
    axis = _rotated("layer")
    picture.paste(INK, (PAD, y0 + max(0, (min(y1 - y0, layout.bar_height) - axis.height) // 2)), axis)
    chosen_layer, chosen_head = selected if selected is not None else (None, None)
    row_clear = line_height(labels)
    for layer in range(0, layout.layers, layout.layer_step):
        centre = y0 + layer * cell + cell / 2
        if chosen_layer is None or abs(centre - (y0 + chosen_layer * cell + cell / 2)) >= row_clear:
            draw.text((x0 - SELECTION_PX - 3, centre), str(layer), font=labels, fill=INK, anchor="rm")
    column_clear = text_width(labels, "0") * (len(str(layout.heads - 1)) + 1.5)
    for head in range(0, layout.heads, layout.head_step):
        centre = x0 + head * cell + cell / 2
        if chosen_head is None or abs(centre - (x0 + chosen_head * cell + cell / 2)) >= column_clear:
            draw.text((centre, head_row), str(head), font=labels, fill=INK, anchor="ms")

    # the colour bar's ticks and name
    draw.text((bx0, head_row), label, font=bold, fill=INK, anchor="ls")
    ticks, decimals = nice_ticks(low, high, count=max(2, layout.bar_height // 60))
    span = by1 - by0 - 1
    top_y = by0
    for tick in ticks:
        y = by0 + span * (high - tick) / (high - low)
        if abs(y - top_y) < row_clear and tick != high:  # the top end's own label wins
            continue
        draw.line((bx1, y, bx1 + 3, y), fill=INK)
        draw.text((bx1 + 5, y), tick_label(tick, decimals), font=labels, fill=INK, anchor="lm")
    if not np.isclose(ticks, high).any():
        draw.line((bx1, top_y, bx1 + 3, top_y), fill=INK)
        draw.text((bx1 + 5, top_y), tick_label(high, max(decimals, 2)), font=labels, fill=INK, anchor="lm")

    if layout.values_shown:
        face = font(int(np.clip(cell // 4, 9, 13)))
        for layer in range(layout.layers):
            for head in range(layout.heads):
                value = values[layer, head]
                text = _number(value, 2)
                cx, cy = layout.cell_centre(layer, head)
                draw.text((cx, cy), text, font=face, fill=_value_colour(colours[layer, head]), anchor="mm")

    for layer, head in marked:  # a cross from corner to corner, dark over its light halo
        cx0, cy0, cx1, cy1 = layout.cell_box(layer, head)
        for width, colour in ((4, (255, 255, 255)), (2, INK)):
            draw.line((cx0 + 2, cy0 + 2, cx1 - 3, cy1 - 3), fill=colour, width=width)
            draw.line((cx0 + 2, cy1 - 3, cx1 - 3, cy0 + 2), fill=colour, width=width)

    if selected is not None:
        layer, head = selected
        cx0, cy0, cx1, cy1 = layout.cell_box(layer, head)
        reach = SELECTION_PX
        draw.rectangle((cx0 - reach, cy0 - reach, cx1 - 1 + reach, cy1 - 1 + reach), outline=(0, 0, 0), width=1)
        draw.rectangle(
            (cx0 - reach + 1, cy0 - reach + 1, cx1 - 2 + reach, cy1 - 2 + reach), outline=(255, 255, 255), width=2
        )
        draw.rectangle((cx0, cy0, cx1 - 1, cy1 - 1), outline=(0, 0, 0), width=1)
        _boxed(draw, (x0 - SELECTION_PX - 3, (cy0 + cy1) / 2), str(layer), bold, "rm")
        _boxed(draw, ((cx0 + cx1) / 2, head_row), str(head), bold, "ms")
        value = values[layer, head]
        grey = missing is not None and layout.legend_top is not None and not np.isfinite(value)
        caption = f"selected layer {layer}, head {head}: {label} {_number(value, 3)}" + (
            " (grey, below)" if grey else ""
        )
        face = font(TITLE_PX, bold=True)
        draw.text((PAD, layout.caption_top), cut(caption, face, layout.width - 2 * PAD), font=face, fill=INK)
    if layout.legend_top is not None and missing is not None:
        swatch = LEGEND_BAND - 8
        draw.rectangle(
            (PAD, layout.legend_top + 2, PAD + swatch, layout.legend_top + 2 + swatch), fill=NAN_COLOUR, outline=INK
        )
        face = font(LABEL_PX)
        draw.text(
            (PAD + swatch + 6, layout.legend_top + 1),
            cut(f"grey: {missing}", face, layout.width - 3 * PAD - swatch),
            font=face,
            fill=INK,
        )
    return np.array(picture)


def _boxed(draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str, face, anchor: str) -> None:
    """White `text` on a black box (the selected row's and column's numbers)."""
    x0, y0, x1, y1 = draw.textbbox(at, text, font=face, anchor=anchor)
    draw.rectangle((x0 - 2, y0 - 2, x1 + 1, y1 + 1), fill=(0, 0, 0))
    draw.text(at, text, font=face, fill=(255, 255, 255), anchor=anchor)
