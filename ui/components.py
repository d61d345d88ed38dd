"""Gradio components with the explorer's limits built in.

`BoundedImageEditor` is a `gr.ImageEditor` whose server side never decodes more than the deployment
allows: Gradio's own preprocessing opens each uploaded layer with PIL and converts it at full
resolution (a 17.6 KB 1-bit PNG of 12000 x 12000 px becomes gigabytes of RGBA), before any handler
runs. Here the pixel count is read from the file's header first (refused beyond `max_pixels`), and
a large image is reduced to at most `max_side` pixels per side while it is decoded (JPEG draft
mode, then a box filter), so the handler, the overlays and the model only ever see a bounded image.
The background and the brush layers have one canvas size, so they are reduced alike. The number of brush
layers is bounded too (`max_layers`), counted from the payload before any layer is decoded, and so is the
index a browser may send a layer blob under (Gradio's `accept_blobs` grows a list to any index it is sent). A
refused upload reaches the handler as `Refused` (`refuse_in_preprocess`), which reports it beside Analyze.

These are subclasses, not patched instances: Gradio re-creates a component for a session from its class
and constructor arguments whenever an event updates it (a `gr.skip()` or a property update), and an
instance's patch would be lost there (after one failed GrabCut, the session's editor would decode any
upload at full size). Gradio writes a `.pyi` stub beside this module for them (ignored by git).
"""

from __future__ import annotations

import math
import re
import reprlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
from gradio.components.base import server
from gradio.components.image_editor import AcceptBlobs, EditorData
from gradio.data_classes import FileData
from gradio.processing_utils import hash_bytes

from hi_core.base.errors import InputError
from hi_core.model.images import image_to_rgb, open_bounded
from hi_core.model.inputs import check_text_length

from .feedback import Refused, shortened
from .settings import scrub_paths


def bounded_open(source: str | BytesIO, max_pixels: int, max_side: int) -> PIL.Image.Image:
    """An image file opened with at most `max_pixels` (else InputError) and reduced to `max_side` per side."""
    return open_bounded(source, "the image", max_pixels, max_side)  # the dataset records' decoding too


def refuse_in_preprocess(self: gr.components.Component, payload: Any) -> Any:
    """A component's preprocessing that hands the handler `Refused(message)` where Gradio's own checks (a number
    below its minimum, a value not among the choices, an upload over the limits) would raise `gr.Error`; every
    handler taking it is wrapped by `feedback.reports_input_errors`, which reports it beside the action. The
    `preprocess` of the classes below: each a direct subclass of a Gradio component, drawn in the page by that
    component's frontend (`is_template`, as Gradio's own templates do)."""
    name = component_name(self)
    expected = wrong_type(self, payload)  # sent through the API, e.g. "abc" for a number: Gradio's checks would raise
    if expected:
        return Refused(f"{name}: expected {expected}, got {reprlib.repr(payload)}")
    try:
        return super(type(self), self).preprocess(payload)
    except (gr.Error, InputError) as error:
        return Refused(
            f"{name}: {scrub_paths(shortened(str(error.message if isinstance(error, gr.Error) else error)))}"
        )


def component_name(component: gr.components.Component) -> str:
    """The component as a refusal names it: its label (a translated one as Gradio writes it), else its elem_id."""
    return str(component.label or component.elem_id or type(component).__name__)


MAX_CHOICE_CHARS = 4096  # a choice's value: a model's name or path at most


def wrong_type(component: gr.components.Component, payload: Any) -> str:
    """What `component` expects, in words, when `payload` is not of a type its preprocessing takes ("" when it is)."""
    if payload is None:
        return ""
    if isinstance(component, (gr.Number, gr.Slider)):
        number = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
        return "" if number else "a number"
    if isinstance(component, gr.CheckboxGroup):
        return "" if isinstance(payload, list) else "a list of choices"
    if isinstance(component, gr.Checkbox):
        return "" if isinstance(payload, bool) else "true or false"
    if isinstance(component, (gr.Dropdown, gr.Radio)) and isinstance(payload, str) and len(payload) > MAX_CHOICE_CHARS:
        return "one of the choices"  # no choice is this long: refused without Gradio's message, which quotes it whole
    return ""


# One class statement each: Gradio's ComponentMeta reads each component class's own source (to write its `.pyi`
# stub), so these cannot be made in a loop.
class RefusingNumber(gr.Number):
    is_template = True
    preprocess = refuse_in_preprocess


class RefusingSlider(gr.Slider):
    is_template = True
    preprocess = refuse_in_preprocess


class RefusingDropdown(gr.Dropdown):
    is_template = True
    preprocess = refuse_in_preprocess


class RefusingRadio(gr.Radio):
    is_template = True
    preprocess = refuse_in_preprocess


class RefusingCheckboxGroup(gr.CheckboxGroup):
    is_template = True
    preprocess = refuse_in_preprocess


class RefusingCheckbox(gr.Checkbox):
    is_template = True
    preprocess = refuse_in_preprocess


#: The refusing class of each checked input component (`refuse_in_handler`).
REFUSING: dict[type[gr.components.Component], type[gr.components.Component]] = {
    gr.Number: RefusingNumber,
    gr.Slider: RefusingSlider,
    gr.Dropdown: RefusingDropdown,
    gr.Radio: RefusingRadio,
    gr.CheckboxGroup: RefusingCheckboxGroup,
    gr.Checkbox: RefusingCheckbox,
}


def refuse_in_handler(component: gr.components.Component) -> gr.components.Component:
    """`component`, made an instance of its `REFUSING` class (so the session copies Gradio makes of it refuse too)."""
    refusing = REFUSING.get(type(component))
    if refusing is not None:
        component.__class__ = refusing
    return component


class BoundedTextbox(gr.Textbox):
    """A `gr.Textbox(**kwargs)` whose value reaches the handler only as text of at most `max_chars` characters (None:
    any length): a longer text, or a value of another type sent through the API, is `Refused` from its length or
    type alone, before a tokenizer, a regex or the log reads it; the refusal quotes only the text's head."""

    is_template = True

    def __init__(self, value: str = "", max_chars: int | None = None, **kwargs: Any) -> None:
        self.max_chars = max_chars
        super().__init__(value, **kwargs)

    def get_config(self, cls: type | None = None) -> dict[str, Any]:
        return super().get_config(cls or gr.Textbox)  # the page's props: the parent's parameters

    def preprocess(self, payload: str | None) -> Any:
        name = component_name(self)
        if payload is not None and not isinstance(payload, str):
            return Refused(f"{name}: expected text, got {reprlib.repr(payload)}")
        try:
            check_text_length(name[:1].lower() + name[1:], payload or "", self.max_chars)
        except InputError as error:
            return Refused(str(error))
        return super().preprocess(payload)


MAX_PENDING_EDITS = 64  # editor values a browser has sent as blobs but no event has read yet (oldest go first)


class BoundedImageEditor(gr.ImageEditor):
    """A `gr.ImageEditor(**kwargs)` that refuses images over `max_pixels` and reduces them to `max_side` on arrival:
    its own `convert_and_format_image` (the step of its preprocessing that decodes each layer) goes through
    `bounded_open` first. More than `max_layers` brush layers (None: any number) are refused before any is decoded.
    What the server sends it (an example, a GrabCut mask) goes as PNG, so the pixels that come back are those sent
    (Gradio's default, WebP, is lossy: an example would be scored on altered pixels)."""

    is_template = True  # drawn by the parent's frontend (Gradio's way for its own template components)

    def __init__(self, max_pixels: int, max_side: int, max_layers: int | None = None, **kwargs: Any) -> None:
        self.max_pixels, self.max_side, self.max_layers = max_pixels, max_side, max_layers
        self._blobs_lock = threading.Lock()  # `blob_storage` is the shared component's, written by any session
        kwargs.setdefault("format", "png")
        super().__init__(**kwargs)

    def preprocess(self, payload: EditorData | None) -> Any:
        layers = self._layers_sent(payload)
        if self.max_layers is not None and len(layers) > self.max_layers:
            if payload is not None and payload.id is not None:
                with self._blobs_lock:
                    self.blob_storage.pop(payload.id, None)
            name = self.label or self.elem_id or type(self).__name__
            return Refused(f"{name}: {len(layers):,} brush layers were sent; at most {self.max_layers} are accepted")
        return refuse_in_preprocess(self, payload)

    def _layers_sent(self, payload: EditorData | None) -> Sequence:
        """The payload's layers (files), or those a browser sent as blobs under its id: counted, not decoded."""
        if payload is None:
            return []
        if payload.id is not None:
            with self._blobs_lock:
                sent = self.blob_storage.get(payload.id)
            return sent.layers if sent is not None else []
        return payload.layers

    @server
    def accept_blobs(self, data: AcceptBlobs) -> None:
        """Gradio's, with the layer's index bounded by `max_layers` and at most `MAX_PENDING_EDITS` values held."""
        index = data.data.get("index")
        if (
            data.data.get("type") == "layer"
            and index not in (None, "", "null")
            and (not str(index).isdigit() or (self.max_layers is not None and int(index) >= self.max_layers))
        ):
            raise gr.Error(f"a brush layer's index must be below {self.max_layers}, got {shortened(str(index), 20)}")
        with self._blobs_lock:
            super().accept_blobs(data)
            while len(self.blob_storage) > MAX_PENDING_EDITS:
                self.blob_storage.pop(next(iter(self.blob_storage)))

    def get_config(self, cls: type | None = None) -> dict[str, Any]:
        return super().get_config(cls or gr.ImageEditor)  # the page's props: the parent's parameters

    def convert_and_format_image(self, file: FileData | bytes | None, flatten_on_white: bool = False) -> Any:
        if file is None:
            return None
        source = file.path if isinstance(file, FileData) else BytesIO(file)
        image = bounded_open(source, self.max_pixels, self.max_side)  # InputError: the handler is told (Refused)
        # The image (any mode: 16-bit, CMYK, ...) as 8-bit RGB, or a brush layer as RGBA, reduced, handed
        # to Gradio's own conversion (mode, alpha, type).
        image = image_to_rgb(image) if flatten_on_white else image.convert("RGBA")
        buffer = BytesIO()
        image.save(buffer, format="PNG")
        return super().convert_and_format_image(buffer.getvalue(), flatten_on_white)


@dataclass(frozen=True)
class Picture:
    """A figure's pixels and the name its download gets (without `.png`), e.g. `hi-heatmap-demo`."""

    pixels: np.ndarray  # (H, W, 3) uint8
    name: str


def file_name(*parts: str) -> str:
    """A download's name from words: lower case, runs of anything but letters, digits, '.' and '_' as one '-'."""
    return re.sub(r"[^a-z0-9._]+", "-", "-".join(parts).lower()).strip("-.")[:120] or "figure"


FIGURE_CLASS = "hi-figure"  # the page's style (ui.app.CSS) keeps a band over these for their buttons


class Figure(gr.Image):
    """A picture of results (heatmap, head maps, bars): read-only, sent and downloaded as PNG (Gradio's
    default, lossy WebP, smears the small numbers on the figures), with a download and a fullscreen button.

    The figures carry their own titles, so the component's label (`label`: what screen readers and the API
    name) is not drawn over them. A download is named `download_name`.png, or after what a `Picture` value says it
    shows."""

    is_template = True

    def __init__(self, label: str, download_name: str, **kwargs: Any) -> None:
        self.download_name = download_name
        kwargs.setdefault("buttons", ["download", "fullscreen"])
        kwargs.setdefault("show_label", False)
        kwargs.setdefault("interactive", False)
        kwargs.setdefault("format", "png")
        kwargs["elem_classes"] = [*(kwargs.get("elem_classes") or []), FIGURE_CLASS]
        super().__init__(label=label, **kwargs)

    def get_config(self, cls: type | None = None) -> dict[str, Any]:
        return super().get_config(cls or gr.Image)  # the page's props: the parent's parameters

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            value = Picture(value, self.download_name)
        if isinstance(value, Picture):  # written under its name (Gradio names every array `image.png`)
            value = save_png(value.pixels, Path(self.GRADIO_CACHE), file_name(value.name))
        return super().postprocess(value)


PNG_COMPRESSION = 1  # zlib level: 0.25 s -> ~0.03 s for a 1000 x 500 figure of eight panels, files ~1.5x larger


def save_png(pixels: np.ndarray, cache: Path, name: str) -> str:
    """`pixels` as `name`.png in Gradio's upload cache (a folder named by the content's hash, as Gradio's own
    `save_pil_to_cache` does, but compressed fast: every redraw of the page encodes several figures)."""
    buffer = BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    data = buffer.getvalue()
    folder = cache / hash_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not path.is_file():
        path.write_bytes(data)
    return str(path.resolve())
