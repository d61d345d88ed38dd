"""The Explorer tab: one image, its key object's mask and a description; every head of the language
model scored by HI, a clicked head's map, the top heads, one layer's heads, the ranking, the layer bars.

Left column: the model, the image (examples, painting, GrabCut or an uploaded mask), the text, Analyze
and its message. Right column: the results, under a banner when they no longer match the inputs: the
summary, the description's tokens (tick some to see every view on those rows alone: the per-token view),
the heatmap and the selected head, and `result_tabs` (top heads, one layer, ranking, layer bars, and,
while a LoRA adapter is set, the before/after view: the base and the tuned model on the same inputs).

This module lays the tab out (`explorer_parts` declares the parts its mixins use); `explorer_events` wires its events
and `explorer_handlers` answers them.
"""

from __future__ import annotations

from typing import get_args

import gradio as gr

from hi_core.figures.overlays import BRUSH_COLOURS
from hi_core.model.loading import Device, LoadConfig
from hi_core.model.model_memory import describe

from .ablation_view import AblationTab
from .before_after import BeforeAfterTab
from .budget import forget
from .components import BoundedImageEditor, BoundedTextbox, Figure, refuse_in_handler
from .context import MAX_NAME_CHARS, AppContext
from .editor import brush, hex_colour
from .explorer_events import ExplorerEvents
from .explorer_parts import ModelControls
from .feedback import EditCount
from .options import ScoringControls, top_k_slider
from .settings import LARGE_VIEW_MODELS


class ExplorerTab(ExplorerEvents):
    """The tab's components (built in the current Blocks context; `ExplorerParts` declares those its mixins use); its
    events (`ExplorerEvents`) and, under them, its handlers (`ExplorerHandlers`) are mixed in."""

    def __init__(self, context: AppContext, tuned_state: gr.State, default_model: str) -> None:
        self.context = context
        self.tuned_state = tuned_state  # the Fine-tune tab's last run: its adapter may be the LoRA chosen here
        # freed when the session ends, or after the idle time without a new result (API sessions never "end")
        self.state = gr.State(None, time_to_live=context.settings.session_idle_s, delete_callback=forget)
        # the editor's brush colour (hex) as last sent: an image that keeps it gets no editor update (see
        # image_uploaded)
        self.brush_colour = gr.State(hex_colour(BRUSH_COLOURS[0]))
        with gr.Row():
            with gr.Column(scale=2, min_width=340):
                self.model = self._model_controls(default_model)
                self._input_controls()
            with gr.Column(scale=3, elem_id="results"):
                self._result_views()
        self._wire()

    # --- layout ---------------------------------------------------------------------------------

    def _model_controls(self, default_model: str) -> ModelControls:
        settings = self.context.settings
        name: gr.Textbox | gr.Dropdown
        with gr.Group():
            with gr.Row(equal_height=True):
                if settings.public:  # a visitor picks from the allow-list; nothing else is loaded
                    name = gr.Dropdown(
                        list(settings.allowed_models),
                        value=settings.check_model(default_model),
                        label="Model",
                        scale=3,
                        elem_id="model",
                    )
                else:
                    name = BoundedTextbox(
                        default_model,
                        max_chars=MAX_NAME_CHARS,
                        label="Model",
                        scale=3,
                        elem_id="model",
                        placeholder="demo, a Hub id or a local folder",
                    )
                device = gr.Dropdown(
                    list(get_args(Device)),
                    value=LoadConfig.device,
                    label="Device",
                    scale=1,
                    min_width=90,
                    elem_id="device",
                )
                self.load_button = gr.Button("Load model", size="sm", scale=1, min_width=90, elem_id="load-model")
            # one line (Analyze stays above the fold); once loaded it says the dtype and why
            status = gr.Markdown(
                f"`demo` loads on first use · model memory {describe(self.context.cache.budget)}",
                label="Model status",
                elem_id="model-status",
            )
        with gr.Accordion("LoRA adapter", open=False, elem_id="lora-options") as lora_options:
            lora = BoundedTextbox(
                "",
                max_chars=MAX_NAME_CHARS,
                label="LoRA adapter: merged into the model" + ("" if settings.public else " (optional: a peft folder)"),
                placeholder="set by the Fine-tune tab's 'Use the tuned model'",
                elem_id="lora",
                interactive=not settings.public,
            )
        return ModelControls(name, device, lora, status, lora_options)

    def _input_controls(self) -> None:
        settings, examples = self.context.settings, self.context.examples
        self.gallery = None
        if examples:  # every thumbnail in view, in one row (two for more than eight)
            columns = min(8, len(examples))
            self.gallery = gr.Gallery(
                [example.image for example in examples],
                label="Examples (click one)",
                show_label=False,
                columns=columns,
                height=12 + 56 * -(-len(examples) // columns),
                object_fit="cover",
                allow_preview=False,
                elem_id="examples",
            )
        limits = (
            f" Images over {settings.max_image_pixels / 1e6:g} Mpx are refused; larger sides are reduced to "
            f"{settings.max_image_side} px."
            if settings.public
            else ""
        )
        if settings.max_view_pixels:
            limits += (
                f" The model sees at most ~{settings.max_view_pixels / 1e6:.1f} Mpx of an image "
                "(view budget: fewer tiles"
            )
            large = settings.view_pixels(min(LARGE_VIEW_MODELS))
            limits += (
                f"; the ~2 B models ~{large / 1e6:.2f} Mpx)." if large and large < settings.max_view_pixels else ")."
            )
        gr.Markdown(
            "**Pick an example or upload an image, then paint the object you want scored.** The mask shows "
            "below as you paint; an example comes with its own, which painting replaces." + limits,
            elem_id="editor-help",
        )
        self.editor = BoundedImageEditor(
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            max_layers=settings.max_editor_layers,
            label="Image: upload one or pick an example, then paint the key object",
            show_label=False,
            type="numpy",
            sources=["upload", "clipboard"],
            brush=brush(BRUSH_COLOURS[0]),
            eraser=gr.Eraser(default_size=8),
            transforms=(),
            layers=False,
            height=250,
            elem_id="editor",
        )
        with gr.Row():
            self.text = BoundedTextbox(
                "",
                max_chars=settings.max_text_chars,
                label="Description to score",
                lines=2,
                scale=2,
                elem_id="description",
            )
            self.key_phrase = BoundedTextbox(
                "",
                max_chars=settings.max_text_chars,
                label="Key phrase",
                placeholder="optional",
                scale=1,
                elem_id="key-phrase",
            )
        with gr.Row(equal_height=True):
            self.generate = gr.Checkbox(label="Let the model describe it instead", scale=2, elem_id="generate")
            refuse_in_handler(self.generate)  # made a refusing Checkbox in place
            self.analyze_button = gr.Button("Analyze", variant="primary", scale=1, elem_id="analyze")
        self.message = gr.Markdown("", label="Analysis message", elem_id="analyze-message")
        with gr.Row(equal_height=True):
            with gr.Column(min_width=160):
                self.grabcut_button = gr.Button(
                    "Propose a mask from my box or scribble (GrabCut)", size="sm", elem_id="grabcut"
                )
                self.uploaded_mask = gr.File(
                    label="...or upload a mask PNG",
                    file_types=["image"],
                    type="filepath",
                    height=150,
                    elem_id="mask-upload",
                )
            with gr.Column(min_width=160):
                # no label over the picture: it would hide the top of the image (where an object may be)
                self.mask_view = gr.Image(
                    label="Key-object mask over the image",
                    show_label=False,
                    interactive=False,
                    height=240,
                    elem_id="mask-view",
                    buttons=[],
                )
                gr.Markdown("The key-object mask over the image", elem_id="mask-view-caption")
        self.options = ScoringControls.build(render=False, views=True, max_chars=settings.max_text_chars)
        if self.options.view is None:
            raise RuntimeError("ScoringControls.build(views=True) built no view control")
        self.view = self.options.view
        with gr.Accordion("Analysis options: prompt, query rows, view", open=False, elem_id="analysis-options"):
            self.options.prompt.render()
            self.options.queries.render()
            self.view.render()

    def _result_views(self) -> None:
        self.stale = gr.Markdown("", label="Stale results", elem_id="stale")
        self.edits = EditCount("edits")
        self.summary = gr.Markdown("Results appear here.", label="Summary", elem_id="summary")
        self.tokens = gr.CheckboxGroup(
            [],
            label="Tokens scored: tick a token or a span to see every head on those rows alone (★ the key phrase)",
            elem_id="tokens",
            visible=False,
        )
        with gr.Row():
            self.key_tokens_button = gr.Button(
                "Back to the key phrase", size="sm", elem_id="tokens-key", visible=False, scale=0
            )
            self.all_tokens_button = gr.Button("All tokens", size="sm", elem_id="tokens-all", visible=False, scale=0)
            self.token_message = gr.Markdown("", label="Token message", elem_id="tokens-message")
        with (
            gr.Accordion(
                "Scoring options: binarization, layer score (rescores the same maps, no new forward pass)",
                open=False,
                elem_id="scoring-options",
            ),
            gr.Row(),
        ):
            for control in self.options.scoring:
                control.render()
        with gr.Row():
            self.heatmap = Figure(
                label="HI per head: rows are layers, columns heads; click a cell",
                download_name="hi-heatmap",
                elem_id="heatmap",
                height=280,
            )
            with gr.Column():
                # no label over the picture: it would hide the panels' titles (the line below names the head)
                self.head_view = Figure(
                    label="Selected head over the image, and the object patches",
                    download_name="selected-head",
                    elem_id="head-view",
                    height=220,
                )
                self.head_info = gr.Markdown("", label="Selected head in numbers", elem_id="head-info")
        with gr.Row():
            self.selected_layer = gr.Number(label="Layer", precision=0, value=0, minimum=0, elem_id="selected-layer")
            self.selected_head = gr.Number(label="Head", precision=0, value=0, minimum=0, elem_id="selected-head")
            self.show_head = gr.Button("Show head", size="sm", elem_id="show-head")
        with gr.Tabs() as self.result_tabs:
            with gr.Tab("Top heads", id="top"):
                self.top_n = gr.Slider(1, 32, value=8, step=1, label="Top-N heads to show", elem_id="top-n")
                self.top_view = Figure(label="Top heads", download_name="top-heads", elem_id="top-heads")
            with gr.Tab("One layer", id="layer"):
                self.layer = gr.Number(label="Layer to show", precision=0, value=0, minimum=0, elem_id="layer")
                self.layer_view = Figure(label="One layer", download_name="layer-heads", elem_id="layer-view")
            with gr.Tab("Ranking", id="ranking"):
                self.ranking = gr.Dataframe(
                    headers=["layer", "head", "HI", "mass"], interactive=False, label="Ranking", elem_id="ranking"
                )
            with gr.Tab("Layers", id="layers"):
                self.top_k = top_k_slider("top-k")
                self.bars = Figure(label="Layer scores", download_name="layer-scores", elem_id="layer-bars")
            self.ablation = AblationTab(self.context, self.state)
            self.compare = BeforeAfterTab(self.context, self.state)  # shown while a LoRA adapter is set
        self.downloads = gr.File(
            label=(
                "Downloads: the scores shown (JSON with the tokens they are on, CSV); "
                "each figure has its own download button (PNG)"
            ),
            file_count="multiple",
            elem_id="downloads",
        )
