"""HI Explorer in the browser: load a model, mark the key object, see where every head looks.

UI only: every number shown is computed by `hi_core`. `build_demo()` returns the Blocks (tests import
it without serving); `main()` parses the flags and serves it. The tabs, each laid out in one module (its handlers
and views beside it): the single-image Explorer (`ui.explorer`), the Dataset tab (`ui.dataset_tab`), the Fine-tune
tab (`ui.finetune_tab`) and the Validate tab (`ui.validate_tab`), each built from the shared `AppContext`
(`ui.context`). On a ZeroGPU Space the model runs under `spaces.GPU`; without that package it runs as is.
"""

from __future__ import annotations

import argparse
from typing import Any

import gradio as gr

from hi_core.base.errors import InputError
from hi_core.model.model_cache import ModelCache

from .budget import forget, upload_cache_lifespan
from .components import refuse_in_handler
from .context import AppContext
from .dataset_tab import DatasetTab
from .explorer import ExplorerTab
from .finetune_tab import FinetuneTab
from .request_limit import request_body_limit
from .settings import Settings
from .validate_tab import ValidateTab

INTRO = """# HI Explorer
Which attention heads of a multimodal LM look at the object a description names? Each head is scored by
**Head Impact**: the IoU of its binarized attention map over the image with the object's mask. **Dataset** scores
every head over a dataset, **Fine-tune** tunes LoRA on the top-HI layers, **Validate** removes heads to test HI."""


def build_demo(
    default_model: str = "demo", cache: ModelCache | None = None, settings: Settings | None = None
) -> gr.Blocks:
    """The explorer's UI; `cache` holds loaded models across sessions; `settings` says what a visitor may
    do (default: open, as for a local user)."""
    settings = settings or Settings()
    context = AppContext(settings=settings, cache=cache or ModelCache(budget=settings.model_memory))
    # Gradio's upload cache (uploads, and copies of the files handlers return) is swept of old files (and, by
    # `launch_options`, of the oldest beyond its size).
    ttl = context.settings.cache_ttl_s
    with gr.Blocks(title="HI Explorer", delete_cache=(ttl, ttl)) as demo:
        # the Fine-tune tab's last run, read by the other tabs; freed like the tabs' results (its files go with it)
        tuned_state = gr.State(None, time_to_live=context.settings.session_idle_s, delete_callback=forget)
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Explorer", id="explorer"):
                explorer = ExplorerTab(context, tuned_state, default_model)
            with gr.Tab("Dataset", id="dataset"):
                dataset = DatasetTab(context, explorer.model, tuned_state)
            with gr.Tab("Fine-tune", id="finetune"):
                FinetuneTab(context, explorer.model, dataset.state, tabs, tuned_state)
            with gr.Tab("Validate", id="validate"):
                ValidateTab(context, explorer.model)
    for block in demo.blocks.values():  # Gradio's own range / choice checks: reported in the page, not as a traceback
        if isinstance(block, (gr.Number, gr.Slider, gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
            refuse_in_handler(block)
    demo.queue(max_size=context.settings.queue_size, default_concurrency_limit=context.settings.concurrency)
    return demo


THEME = gr.themes.Soft()
# Gradio's gallery keeps thumbnails at least ~100 px wide: the examples fit one row of the Explorer's left
# column only with square cells of the column's width / 8.
CSS = """
#examples .grid-wrap { overflow: hidden !important; }
#examples .grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
                            grid-auto-rows: auto !important; }
#examples .thumbnail-item { min-width: 0 !important; width: 100% !important; height: auto !important; \
aspect-ratio: 1 / 1; }
.hi-figure .image-container { padding-top: 30px; box-sizing: border-box; }
"""  # figures: their download / fullscreen buttons sit in a band above the picture, not over its title


def launch_options(settings: Settings) -> dict:
    """What `launch()` gets besides where to serve: the theme, the style rules, the upload limit, the upload cache's
    size sweep (`budget.upload_cache_lifespan`) and the bound on request bodies (`request_limit`). `python app.py`
    and the tests that drive the page in a browser use this one dict, so the tests see what visitors see."""
    options: dict[str, Any] = {"theme": THEME, "css": CSS, "max_file_size": settings.max_file_size}
    app_kwargs: dict[str, Any] = {}  # FastAPI's own arguments
    if settings.max_upload_cache_mb is not None:
        app_kwargs["lifespan"] = upload_cache_lifespan(int(settings.max_upload_cache_mb * 1024 * 1024))
    if settings.max_request_kb is not None:
        app_kwargs["middleware"] = [request_body_limit(int(settings.max_request_kb * 1024))]
    return options | ({"app_kwargs": app_kwargs} if app_kwargs else {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve HI Explorer.")
    parser.add_argument(
        "--host",
        help="address to bind (default: $GRADIO_SERVER_NAME, else loopback only; "
        "0.0.0.0 serves the network; a Space sets it)",
    )
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument("--model", default="demo", help="the model selected at start (default: demo)")
    parser.add_argument(
        "--public",
        action="store_true",
        help="apply the public deployment policy (automatic on a "
        "Space): allow-listed models only, limits on uploads and runs",
    )
    parser.add_argument(
        "--allow-model", action="append", metavar="MODEL", help="add a model to the public allow-list (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args)
        demo = build_demo(args.model, settings=settings)
    except InputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    # server_name/port None: Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0:7860)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(settings))


if __name__ == "__main__":
    main()
