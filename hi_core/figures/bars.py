"""The layer-score bar chart, drawn with NumPy and PIL (~1-3 ms against matplotlib's ~40-90 ms), and its geometry.

One bar per language-model layer, layer 0 on the left, over a score axis from 0 with round ticks and faint
grid lines. The top-k layers by score (the layers `--layers top --k K` would adapt: `scoring.rank_layers`,
ties to the lower layer) are red, the others grey, but only when k is smaller than the number of layers:
k >= layers would paint every bar "top", so then none is marked and the title says why. Layers that were not
scored (NaN: a hybrid model's layers without softmax attention) have no bar and are never marked; k counts
the scored layers. Each bar's value is printed above it when there are at most `VALUES_MAX` layers; layer
numbers are thinned when bars are narrow. `BarsLayout.fit(layers)` decides where everything lies from the count
alone, so a test (or a UI) can find a layer's bar without reading the drawing code."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..method.scoring import rank_layers
from .drawing import BACKGROUND, INK, cut, font, line_height, nice_ticks, text_width, tick_label

TOP_COLOUR, OTHER_COLOUR = (214, 39, 40), (140, 140, 140)  # the top-k layers, the others
GRID_COLOUR = (228, 228, 228)
SLOT_MAX, SLOT_MIN = 48, 6  # px per layer (bar and gap)
PLOT_MAX_WIDTH = 760  # bars are narrowed to fit this, down to SLOT_MIN
PLOT_HEIGHT = 170
MIN_WIDTH = 380  # the title fits
VALUES_MAX = 12  # each bar's value is printed above it for at most this many layers
LABEL_PX, TITLE_PX = 11, 12
PAD, TITLE_BAND, VALUE_BAND = 6, 20, 14
TICKS_WIDTH, AXIS_BAND = 40, 14  # the score ticks' values; the rotated "score" left of them
LABEL_BAND = 16  # the layer numbers under the bars, then "layer"
NICE_STEPS = (1, 2, 4, 5, 10, 20, 25, 50, 100)


@dataclass(frozen=True)
class BarsLayout:
    """Where a layer-bar chart's parts lie, in pixels (x right, y down). Layer i's slot spans x in
    [left + i * slot, left + (i + 1) * slot); its bar is the slot less a gap, rising from y = base."""

    layers: int
    slot: int
    left: int
    top: int  # the plot's top: the largest tick (or score) is drawn here
    base: int  # the zero line
    width: int
    height: int
    label_step: int  # every label_step-th layer number is printed
    values_shown: bool

    @classmethod
    def fit(cls, layers: int) -> BarsLayout:
        if layers < 1:
            raise ValueError(f"a layer-bar chart needs at least one layer, got {layers}")
        left = PAD + AXIS_BAND + TICKS_WIDTH
        fill = (MIN_WIDTH - left - 2 * PAD) // layers  # few layers: wider bars across the title's width
        slot = max(int(np.clip(PLOT_MAX_WIDTH // layers, SLOT_MIN, SLOT_MAX)), min(fill, 2 * SLOT_MAX))
        values_shown = layers <= VALUES_MAX
        top = PAD + TITLE_BAND + (VALUE_BAND if values_shown else 4)
        base = top + PLOT_HEIGHT
        width = max(left + layers * slot + 2 * PAD, MIN_WIDTH)
        height = base + 2 * LABEL_BAND + PAD
        label = text_width(font(LABEL_PX), "0") * len(str(layers - 1)) + 4
        label_step = next(step for step in NICE_STEPS + (layers,) if step * slot >= label)
        return cls(layers, slot, left, top, base, width, height, label_step, values_shown)

    def bar_box(self, layer: int, fraction: float) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of layer's bar reaching `fraction` of the plot's height, x1 and y1 exclusive."""
        if not 0 <= layer < self.layers:
            raise IndexError(f"no layer {layer} in a chart of {self.layers}")
        gap = max(1, self.slot // 5)
        x0 = self.left + layer * self.slot + gap // 2
        y0 = self.base - round(float(np.clip(fraction, 0.0, 1.0)) * PLOT_HEIGHT)
        return x0, y0, x0 + self.slot - gap, self.base

    def layer_at(self, x: float) -> int | None:
        """The layer whose slot holds x, or None left or right of the bars."""
        layer = math.floor((x - self.left) / self.slot)
        return layer if 0 <= layer < self.layers else None


def marked_layers(scores: np.ndarray, top_k: int) -> frozenset[int]:
    """The layers drawn red: the top-k by score when 0 < k < scored layers (NaN: not scored), else none."""
    layers, top_k = int(np.isfinite(np.asarray(scores, np.float64)).sum()), int(top_k)
    if not 0 < top_k < layers:
        return frozenset()
    return frozenset(int(layer) for layer in rank_layers(np.asarray(scores, np.float64))[:top_k])


def bars_title(title: str, layers: int, top_k: int, scored: int | None = None) -> str:
    """The chart's title; `scored`: how many of the `layers` were scored, when not all (a hybrid model)."""
    what = "layers" if scored is None or scored == layers else f"scored layers (of {layers})"
    layers = layers if scored is None else scored
    if 0 < top_k < layers:
        return f"{title}: top {top_k} of {layers} {what} in red"
    return f"{title} (k={top_k} ≥ {layers} {what}: none marked)" if top_k >= layers else f"{title} (none marked)"


def draw_layer_bars(scores: np.ndarray, top_k: int = 4, title: str = "Layer scores") -> np.ndarray:
    """(layers,) layer scores as a bar chart, an (H, W, 3) uint8 array (see the module's docstring).
    Scores below 0 are drawn as 0 (layer scores are sums or means of HI, never negative); NaN as no bar."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    layout = BarsLayout.fit(scores.size)
    finite = scores[np.isfinite(scores)]
    largest = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    ticks, decimals = nice_ticks(0.0, largest, count=4)
    high = max(largest, float(ticks[-1]))
    marked = marked_layers(scores, top_k)

    picture = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    labels, title_face = font(LABEL_PX), font(TITLE_PX, bold=True)
    draw.text(
        (PAD, PAD),
        cut(bars_title(title, layout.layers, int(top_k), finite.size), title_face, layout.width - 2 * PAD),
        font=title_face,
        fill=INK,
    )
    right = layout.left + layout.layers * layout.slot
    for tick in ticks:
        y = layout.base - round(tick / high * PLOT_HEIGHT)
        draw.line((layout.left, y, right, y), fill=GRID_COLOUR)
        draw.line((layout.left - 4, y, layout.left - 1, y), fill=INK)
        draw.text((layout.left - 6, y), tick_label(tick, decimals), font=labels, fill=INK, anchor="rm")
    for layer, score in enumerate(scores):
        if np.isfinite(score):
            x0, y0, x1, y1 = layout.bar_box(layer, score / high)
            if y1 > y0:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=TOP_COLOUR if layer in marked else OTHER_COLOUR)
            if layout.values_shown:
                draw.text(((x0 + x1) / 2, y0 - 2), f"{score:.3f}", font=labels, fill=INK, anchor="ms")
        if layer % layout.label_step == 0:
            centre = layout.left + layer * layout.slot + layout.slot / 2
            draw.text((centre, layout.base + 3), str(layer), font=labels, fill=INK, anchor="ma")
    draw.line((layout.left, layout.top - 2, layout.left, layout.base), fill=INK)
    draw.line((layout.left, layout.base, right, layout.base), fill=INK)
    draw.text(((layout.left + right) / 2, layout.base + LABEL_BAND + 1), "layer", font=labels, fill=INK, anchor="ma")
    axis = Image.new("L", (math.ceil(text_width(labels, "score")) + 2, line_height(labels)), 0)
    ImageDraw.Draw(axis).text((1, 0), "score", font=labels, fill=255)
    axis = axis.rotate(90, expand=True)
    picture.paste(INK, (PAD, layout.top + (PLOT_HEIGHT - axis.height) // 2), axis)
    return np.array(picture)
