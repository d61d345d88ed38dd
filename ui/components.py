"""Gradio components with the explorer's limits built in.

`bounded_image_editor` makes a `gr.ImageEditor` whose server side never decodes more than the deployment
allows: Gradio's own preprocessing opens each uploaded layer with PIL and converts it at full
resolution (a 17.6 KB 1-bit PNG of 12000 x 12000 px becomes gigabytes of RGBA), before any handler
runs. Here the pixel count is read from the file's header first (refused beyond `max_pixels`), and
a large image is reduced to at most `max_side` pixels per side while it is decoded (JPEG draft
mode, then a box filter), so the handler, the overlays and the model only ever see a bounded image.
The background and the brush layers have one canvas size, so they are reduced alike. A refused upload
reaches the handler as `Refused` (`feedback.refuse_in_handler`), which reports it beside Analyze.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import gradio as gr
import PIL.Image
from gradio.data_classes import FileData

from hi_core.images import image_to_rgb, open_header

from .feedback import refuse_in_handler


def bounded_open(source: str | BytesIO, max_pixels: int, max_side: int) -> PIL.Image.Image:
    """An image file opened with at most `max_pixels` (else InputError) and reduced to `max_side` per side."""
    image = open_header(source, "the image", max_pixels)
    if max(image.size) > max_side:
        image.draft(image.mode, (max_side, max_side))  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly
        image.thumbnail((max_side, max_side), PIL.Image.Resampling.BOX)
    return image


def bounded_image_editor(max_pixels: int, max_side: int, **kwargs: Any) -> gr.ImageEditor:
    """A `gr.ImageEditor(**kwargs)` that refuses images over `max_pixels` and reduces them to `max_side` on arrival.

    The editor's own `convert_and_format_image` (the step of its preprocessing that decodes each
    layer) is wrapped on this instance only. (A subclass would do, but Gradio writes a `.pyi` stub
    beside the module of every Component subclass it meets.)
    """
    editor = gr.ImageEditor(**kwargs)
    convert = editor.convert_and_format_image

    def bounded_convert(file: FileData | None | bytes, flatten_on_white: bool = False) -> Any:
        if file is None:
            return None
        source = file.path if isinstance(file, FileData) else BytesIO(file)
        image = bounded_open(source, max_pixels, max_side)  # InputError: the handler is told (`refuse_in_handler`)
        # The image (any mode: 16-bit, CMYK, ...) as 8-bit RGB, or a brush layer as RGBA, reduced, handed
        # to Gradio's own conversion (mode, alpha, type).
        image = image_to_rgb(image) if flatten_on_white else image.convert("RGBA")
        buffer = BytesIO()
        image.save(buffer, format="PNG")
        return convert(buffer.getvalue(), flatten_on_white)

    editor.convert_and_format_image = bounded_convert
    return refuse_in_handler(editor)


def figure(label: str, **kwargs: Any) -> gr.Image:
    """A picture of results (heatmap, head maps, bars): read-only, sent and downloaded as PNG (Gradio's
    default, lossy WebP, smears the small numbers on the figures), with a download and a fullscreen button."""
    kwargs.setdefault("buttons", ["download", "fullscreen"])
    return gr.Image(label=label, interactive=False, format="png", **kwargs)
