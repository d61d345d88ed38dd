"""The Explorer tab: one image, its key object's mask and a description; every head of the language
model scored by HI, a clicked head's map, the top heads, one layer's heads, the ranking, the layer bars.

Left column: the model, the image (examples, painting, GrabCut or an uploaded mask), the text, Analyze
and its message. Right column: the results, under a banner when they no longer match the inputs: the
summary, the description's tokens (tick some to see every view on those rows alone: the per-token view),
the heatmap and the selected head, and `result_tabs` (top heads, one layer, ranking, layer bars, and,
while a LoRA adapter is set, the before/after view: the base and the tuned model on the same inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.figures.overlays import BRUSH_COLOURS, contrasting_colour
from hi_core.method.masks import grabcut_mask, painted_mask
from hi_core.model.model_memory import describe

from . import explorer_views as views
from .ablation_view import AblationTab
from .before_after import BeforeAfterTab
from .budget import forget, token_maps_note
from .components import BoundedImageEditor, BoundedTextbox, Figure, Picture, file_name, refuse_in_handler
from .context import MAX_NAME_CHARS, AppContext
from .editor import NO_MASK, background, brush, editor_value, hex_colour, mask_from_inputs, mask_preview
from .explorer_views import Session
from .feedback import EditCount, Refused, notice, reports_input_errors
from .options import (
    ScoringControls,
    analysis_config,
    check_texts,
    scoring_config,
    top_k_for,
    top_k_slider,
    top_k_update,
)
from .settings import LARGE_VIEW_MODELS

# After Analyze: the results' top comes into view (unless the message beside Analyze says it failed).
SCROLL_TO_RESULTS = """() => setTimeout(() => {
  const failed = document.querySelector('#analyze-message')?.innerText.trim();
  if (!failed) document.querySelector('#results')?.scrollIntoView({behavior: 'smooth', block: 'start'});
}, 150)"""
STALE = {
    "image": "The image or the mask changed",
    "text": "The description changed",
    "model": "The model changed",
    "options": "The prompt or the query rows changed",
}


def named(session: Session, pixels: np.ndarray, what: str) -> Picture:
    """A figure of the session's analysis, downloaded as `{what}-{model}.png`."""
    return Picture(pixels, file_name(what, session.analysis.model))


@dataclass
class ModelControls:
    """The model every tab uses, chosen in the Explorer: name, device, LoRA adapter, and its status line."""

    name: gr.Textbox | gr.Dropdown
    device: gr.Dropdown
    lora: gr.Textbox
    status: gr.Markdown
    lora_options: gr.Accordion  # holds `lora`; opened when a tuned model is set


class ExplorerTab:
    """The tab's components (built in the current Blocks context) and its handlers."""

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
                    ["auto", "cpu", "cuda"], value="auto", label="Device", scale=1, min_width=90, elem_id="device"
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
            self.generate = refuse_in_handler(
                gr.Checkbox(label="Let the model describe it instead", scale=2, elem_id="generate")
            )
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
        with gr.Accordion("Analysis options: prompt, query rows, view", open=False, elem_id="analysis-options"):
            self.options.prompt.render()
            self.options.queries.render()
            self.options.view.render()

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

    # --- events ---------------------------------------------------------------------------------

    def _wire(self) -> None:
        model, options = self.model, self.options
        marks_stale = functools.partial(self.edits.marks_stale, state=self.state, stale=self.stale)
        self.load_button.click(
            self.load, [model.name, model.device, model.lora, self.tuned_state], [model.status], api_name="load_model"
        )
        if self.gallery is not None:
            # Progress shows on the description, not the editor: Gradio 6.31 updates an editor's progress only
            # after reading its value, which can hang while a new image loads (a blank editor, "processing" forever).
            self.gallery.select(
                self.pick_example,
                None,
                [
                    self.editor,
                    self.brush_colour,
                    self.text,
                    self.key_phrase,
                    self.uploaded_mask,
                    self.mask_view,
                    self.message,
                ],
                api_name=False,
                show_progress_on=[self.text],
            )
            marks_stale([self.gallery.select], self.example_picked)
        self.grabcut_button.click(
            self.propose_mask,
            [self.editor],
            [self.editor, self.mask_view, self.message],
            api_name="propose_mask",
            show_progress_on=[self.mask_view],
        )
        self.uploaded_mask.change(
            self.preview_mask, [self.editor, self.uploaded_mask], [self.mask_view, self.message], api_name=False
        )
        # the mask preview follows the brush as it paints; a new image gets a brush that stands out on it
        self.editor.input(
            self.preview_painted,
            [self.editor, self.uploaded_mask, self.message],
            [self.mask_view, self.message],
            api_name=False,
            show_progress="hidden",
            trigger_mode="always_last",
        )
        self.editor.upload(
            self.image_uploaded,
            [self.editor, self.brush_colour],
            [self.editor, self.brush_colour, self.mask_view],
            api_name=False,
            show_progress="hidden",
        )
        # What a person does (not `.change`: the editor also changes when an event uploads its layers). An edit
        # marks the results stale when it came after Analyze was pressed and the inputs differ from those analyzed:
        # the editor sends `input` once it has redrawn, which can be after an Analyze that already had the stroke.
        self.edit_inputs = {
            "image": [self.editor, self.uploaded_mask],
            "text": [self.text, self.generate, self.key_phrase],
            "model": [model.name, model.device, model.lora],
            "options": [options.prompt, options.queries, options.view],
        }
        edit_events = {
            "image": [
                self.editor.input,
                self.editor.upload,
                self.editor.clear,
                self.uploaded_mask.upload,
                self.uploaded_mask.clear,
            ],
            "text": [box.input for box in self.edit_inputs["text"]],
            "model": [box.change for box in self.edit_inputs["model"]],
            "options": [box.input for box in self.edit_inputs["options"]],
        }
        for what, events in edit_events.items():
            # the editor also sends `input` after redrawing a value it was sent (late, even after Analyze): a message
            # about the mask goes only once a mask is there (`preview_painted`)
            marks_stale(
                events,
                functools.partial(self.inputs_changed, what),
                inputs=self.edit_inputs[what],
                clears=None if what == "image" else self.message,
            )

        full = [
            self.state,
            self.stale,
            self.summary,
            self.heatmap,
            self.head_view,
            self.head_info,
            self.selected_layer,
            self.selected_head,
            self.top_view,
            self.layer_view,
            self.ranking,
            self.bars,
            self.downloads,
            self.message,
            self.tokens,
            self.key_tokens_button,
            self.all_tokens_button,
            self.token_message,
        ]
        self.analyze_button.click(
            self.analyze,
            [
                model.name,
                model.device,
                self.editor,
                self.uploaded_mask,
                self.text,
                self.generate,
                self.key_phrase,
                options.prompt,
                options.queries,
                options.view,
                *options.scoring,
                self.top_n,
                self.layer,
                self.top_k,
                model.lora,
                self.state,
                self.tuned_state,
                self.edits.count,
            ],
            [*full, self.mask_view, self.top_k, model.status, self.text, *self.compare.views, *self.ablation.views],
            api_name="analyze",
        ).then(
            self.changed_during_analysis,
            [self.state, self.edits.count, *itertools.chain(*self.edit_inputs.values())],
            [self.stale],
            api_name=False,
            show_progress="hidden",
        ).then(None, js=SCROLL_TO_RESULTS, api_name=False)
        shown = [self.state, self.top_n, self.layer, self.top_k]
        self.heatmap.select(self.select_cell, shown, full, api_name=False)
        select = dict(
            fn=self.select_head,
            inputs=[self.state, self.selected_layer, self.selected_head, self.top_n, self.layer, self.top_k],
            outputs=full,
        )
        self.show_head.click(**select, api_name="select_head")
        for box in (self.selected_layer, self.selected_head):
            box.submit(**select, api_name=False)
        for option in options.scoring:
            option.change(
                self.rescore,
                [self.state, *options.scoring, *shown[1:]],
                [*full, *self.compare.views, *self.ablation.views],
                api_name=False,
            )
        shown_tokens = dict(outputs=full, show_progress="minimal")
        # ticks in quick succession: the last one's choice is drawn, not each in turn
        self.tokens.input(
            self.choose_tokens,
            [self.state, self.tokens, *shown[1:]],
            **shown_tokens,
            api_name="choose_tokens",
            trigger_mode="always_last",
        )
        self.key_tokens_button.click(self.key_phrase_tokens, shown, **shown_tokens, api_name="key_phrase_tokens")
        self.all_tokens_button.click(self.every_token, shown, **shown_tokens, api_name="all_tokens")
        self.compare.wire(model.name, model.device, model.lora, self.tuned_state)
        self.ablation.wire(model.name, model.device, model.lora, self.tuned_state)
        self.top_n.change(
            self.redraw_top, [self.state, self.top_n], [self.top_view, self.top_n, self.message], api_name=False
        )
        self.layer.change(
            self.redraw_layer, [self.state, self.layer], [self.layer_view, self.layer, self.message], api_name=False
        )
        self.top_k.change(
            self.redraw_bars, [self.state, self.top_k], [self.bars, self.top_k, self.message], api_name=False
        )

    # --- handlers -------------------------------------------------------------------------------

    @reports_input_errors("model_status")
    def load(self, model_name: str, device: str, lora: str = "", tuned=None, progress=gr.Progress()):
        context = self.context
        loaded = context.get_model(context.model_config(model_name, device, lora, tuned), progress)
        return {self.model.status: context.loaded_message(loaded)}

    @property
    def model_status(self) -> gr.Markdown:
        return self.model.status

    def pick_example(self, event: gr.SelectData):
        """The example's image with its mask as a brush layer (to erase or add to), its text and key phrase."""
        example = self.context.examples[event.index]
        colour = contrasting_colour(example.image)  # the mask layer's and the brush's
        return {
            self.editor: gr.ImageEditor(editor_value(example.image, example.mask, colour), brush=brush(colour)),
            self.brush_colour: hex_colour(colour),
            self.text: example.text,
            self.key_phrase: example.key_phrase,
            self.uploaded_mask: None,
            self.mask_view: mask_preview(example.image, example.mask),
            self.message: "",
        }

    def image_uploaded(self, editor: dict | None, current: str | None):
        """A new image: a brush that stands out on it, and no mask yet.

        The editor also says `upload` when it redraws a value it was sent (an example, and again when an event
        reads it). An image whose brush would not change is left alone: an editor update makes Gradio 6.31's
        editor reload its value and send its layers again (~1 s of requests before the next event, Analyze's)."""
        if isinstance(editor, Refused) or not editor or editor.get("background") is None:
            return gr.skip()
        colour = contrasting_colour(background(editor))
        if hex_colour(colour) == current:
            return gr.skip()
        return {
            self.editor: gr.ImageEditor(brush=brush(colour)),
            self.brush_colour: hex_colour(colour),
            self.mask_view: None,
        }

    @reports_input_errors("message")
    def preview_painted(self, editor: dict | None, uploaded_mask: str | None, message: str = ""):
        """The mask as painted so far, over the image (nothing while nothing is painted); a message that asked for
        a mask goes once there is one."""
        image, mask = mask_from_inputs(editor, uploaded_mask, self.context.settings.max_image_pixels, check=False)
        if not mask.any():
            return {self.mask_view: None}
        return {self.mask_view: mask_preview(image, mask), **({self.message: ""} if NO_MASK in (message or "") else {})}

    @reports_input_errors("message")
    def propose_mask(self, editor: dict | None):
        image = background(editor)
        hint = painted_mask(list(editor.get("layers") or []), (image.shape[1], image.shape[0]))
        proposal = grabcut_mask(Image.fromarray(image), hint)
        return {
            self.editor: editor_value(image, proposal),
            self.mask_view: mask_preview(image, proposal),
            self.message: "",
        }

    @reports_input_errors("message")
    def preview_mask(self, editor: dict | None, uploaded_mask: str | None):
        if not uploaded_mask:
            return {self.mask_view: None}
        image, mask = mask_from_inputs(editor, uploaded_mask, self.context.settings.max_image_pixels)
        return {self.mask_view: mask_preview(image, mask), self.message: ""}

    def _banner(self, what: str) -> dict:
        return {
            self.stale: notice(
                f"<b>{STALE[what]}: the results below are for the previous inputs.</b> "
                "Press <b>Analyze</b> to update them."
            )
        }

    def _differs(self, what: str, session: Session, values: Sequence) -> bool:
        """Whether the inputs of kind `what` (`edit_inputs[what]`'s values) are not those `session` analyzed."""
        if what != "image":
            return tuple(values) != session.inputs[what]
        editor, uploaded_mask = values
        if isinstance(editor, Refused) or isinstance(uploaded_mask, Refused):
            return True
        try:
            image, mask = mask_from_inputs(editor, uploaded_mask, self.context.settings.max_image_pixels, check=False)
        except InputError:
            return True
        return not (np.array_equal(image, session.image) and np.array_equal(mask, session.mask))

    def inputs_changed(self, what: str, session: Session | None, edits: float | None, *values):
        if EditCount.edited_since(session, edits) and self._differs(what, session, values):
            return self._banner(what)
        return gr.skip()

    def example_picked(self, session: Session | None, edits: float | None):
        return self._banner("image") if EditCount.edited_since(session, edits) else gr.skip()

    def changed_during_analysis(self, session: Session | None, edits: float | None, *values):
        """After Analyze (whose results clear the banner, and which may have failed): the banner again if the
        inputs changed after it was pressed, naming the first kind that differs."""
        if not EditCount.edited_since(session, edits):
            return gr.skip()
        values = iter(values)
        grouped = {what: [next(values) for _ in boxes] for what, boxes in self.edit_inputs.items()}
        changed = [what for what, group in grouped.items() if self._differs(what, session, group)]
        return self._banner(changed[0]) if changed else gr.skip()

    @reports_input_errors("message")
    def analyze(
        self,
        model_name: str,
        device: str,
        editor: dict | None,
        uploaded_mask: str | None,
        text: str,
        generate: bool,
        key_phrase: str,
        prompt: str,
        queries: str,
        view: str,
        binarize: str,
        quantile: float,
        layer_score: str,
        top_n: int,
        layer: int,
        top_k: int,
        lora: str = "",
        previous: Session | None = None,
        tuned=None,
        edits: float | None = 0,
        progress=gr.Progress(),
    ):
        context = self.context
        check_texts(
            context.settings.max_text_chars, description=text, key_phrase=key_phrase, prompt=prompt
        )  # before any tokenizer
        inputs = {
            "text": (text, generate, key_phrase),
            "model": (model_name, device, lora),
            "options": (prompt, queries, view),
        }
        load_config = context.model_config(model_name, device, lora, tuned)
        image, mask = mask_from_inputs(editor, uploaded_mask, context.settings.max_image_pixels)
        config = analysis_config(prompt, queries, binarize, quantile, layer_score, key_phrase, view)
        if not generate and not (text or "").strip():
            raise InputError("type the description to score, or tick 'generate'")
        loaded = context.get_model(load_config, progress)
        text = None if generate else text
        token_note = token_maps_note(loaded, text, config, context.settings.max_token_maps)
        progress(0.5, desc="capturing attention")
        analysis = context.work.analyze(load_config, image, mask, text, config, per_token=not token_note)
        if previous is not None:  # its maps make room for these (its folder is reused)
            previous.release_token_maps()
        whole, held = context.token_maps.hold(dataclasses.replace(analysis, model=context.shown(analysis.model)))
        if generate:  # the box shows the text that was scored, and the session counts it as what was analyzed
            inputs["text"] = (analysis.text, generate, key_phrase)
        folder = previous.folder if previous is not None else context.storage.new_session_folder()
        session = Session(
            whole=whole,
            image=image,
            mask=mask,
            config=config,
            folder=folder,
            token_note=token_note,
            edits=int(edits or 0),
            inputs=inputs,
            held=held,
        )
        return {
            **self._render(session, top_n, layer, top_k),
            self.mask_view: mask_preview(image, mask),
            self.top_k: top_k_update(len(analysis.scored_layers), top_k),
            self.model.status: context.loaded_message(loaded),
            **({self.text: analysis.text} if generate else {}),
            **self.compare.cleared(),
            **self.ablation.cleared(),
        }

    @reports_input_errors("message")
    def select_cell(self, session: Session | None, top_n: int, layer: int, top_k: int, event: gr.SelectData):
        if session is None:
            raise InputError("run an analysis first")
        clicked = views.clicked_head(event.index, session.analysis.hi)
        if clicked is None:  # the numbers or the colour bar, not a cell
            return gr.skip()
        session.selected = views.scored_head(session.analysis.hi, clicked)
        return self._render_head(session)

    @reports_input_errors("message")
    def select_head(
        self, session: Session | None, selected_layer: int, selected_head: int, top_n: int, layer: int, top_k: int
    ):
        if session is None:
            raise InputError("run an analysis first")
        session.selected = views.scored_head(
            session.analysis.hi, views.clip_head(session.analysis.hi, selected_layer, selected_head)
        )
        return self._render_head(session)

    @reports_input_errors("message")
    def rescore(
        self,
        session: Session | None,
        binarize: str,
        quantile: float,
        layer_score: str,
        top_n: int,
        layer: int,
        top_k: int,
    ):
        if session is None:  # options changed before any analysis: nothing to redraw
            return gr.skip()
        session.show(scoring=scoring_config(binarize, quantile, layer_score))
        update = self._render(session, top_n, layer, top_k)
        if session.compare is not None:
            update |= self.compare.render(session)
        if session.ablation is not None:
            update |= self.ablation.render(session)
        return update

    @reports_input_errors("message")
    def redraw_top(self, session: Session | None, top_n: int):
        if session is None:
            return gr.skip()
        return {self.top_view: self._top_figure(session, top_n), self.top_n: views.shown_top_n(session, top_n)}

    # The redraws put the value drawn back in its control, so a clamped value (layer 9 of 6) does not stay in the box.
    @reports_input_errors("message")
    def redraw_layer(self, session: Session | None, layer: int):
        if session is None:
            return gr.skip()
        return {self.layer_view: self._layer_figure(session, layer), self.layer: views.shown_layer(session, layer)}

    @reports_input_errors("message")
    def redraw_bars(self, session: Session | None, top_k: int):
        if session is None:
            return gr.skip()
        return {
            self.bars: self._bars_figure(session, top_k),
            self.top_k: top_k_for(len(session.analysis.scored_layers), top_k),
        }

    # --- the per-token view ---------------------------------------------------------------------

    @reports_input_errors("token_message")
    def choose_tokens(self, session: Session | None, tokens: list[int], top_n: int, layer: int, top_k: int):
        """Every view on the ticked tokens' rows alone (no forward pass)."""
        if session is None:
            raise InputError("run an analysis first")
        if not session.per_token:
            raise InputError(f"this analysis kept no per-token maps ({session.token_note})")
        session.show(tokens or [])
        update = self._render(session, top_n, layer, top_k)
        del update[self.tokens]  # the boxes show what was ticked, and may show a newer choice by now: never reset them
        return update

    def key_phrase_tokens(self, session: Session | None, top_n: int, layer: int, top_k: int):
        return self._choose_by_button(session, list(session.whole.key_tokens) if session else [], top_n, layer, top_k)

    def every_token(self, session: Session | None, top_n: int, layer: int, top_k: int):
        return self._choose_by_button(
            session, list(range(len(session.whole.tokens))) if session else [], top_n, layer, top_k
        )

    def _choose_by_button(self, session: Session | None, tokens: list[int], top_n: int, layer: int, top_k: int):
        """A button's choice: the views and the boxes, which show it."""
        update = self.choose_tokens(session, tokens, top_n, layer, top_k)
        return update | self._token_controls(session) if self.state in update else update  # else: the error alone

    # --- drawing --------------------------------------------------------------------------------

    def _render(self, session: Session, top_n: int, layer: int, top_k: int) -> dict:
        """Every result view of the session (and the state, cleared messages and stale banner)."""
        analysis = session.analysis
        return {
            **self._render_head(session),
            self.stale: "",
            self.token_message: "",
            self.summary: views.summary(session),
            **self._token_controls(session),
            self.top_view: self._top_figure(session, top_n),
            self.layer_view: self._layer_figure(session, layer),
            self.ranking: views.ranking_rows(analysis),
            self.bars: self._bars_figure(session, top_k),
            self.downloads: views.save_downloads(session),
        }

    # The figures a redraw and a full render share, each downloaded under what it shows (`named`).
    def _top_figure(self, session: Session, top_n: int) -> Picture:
        return named(session, views.top_figure(session, top_n), f"top-{views.shown_top_n(session, top_n)}-heads")

    def _layer_figure(self, session: Session, layer: int) -> Picture:
        return named(session, views.layer_figure(session, layer), f"layer-{views.shown_layer(session, layer)}-heads")

    def _bars_figure(self, session: Session, top_k: int) -> Picture:
        return named(session, views.bars_figure(session.analysis, top_k), "layer-scores")

    def _render_head(self, session: Session) -> dict:
        """The selection: the heatmap's marker and the selected head (a click redraws nothing else)."""
        return {
            self.state: session,
            self.message: "",
            self.heatmap: named(session, views.heatmap_image(session.analysis.hi, session.selected), "hi-heatmap"),
            self.head_view: named(session, views.head_figure(session), "layer-{}-head-{}".format(*session.selected)),
            self.head_info: views.head_info(session.analysis, session.selected),
            self.selected_layer: session.selected[0],
            self.selected_head: session.selected[1],
        }

    def _token_controls(self, session: Session) -> dict:
        shown = session.per_token
        return {
            self.tokens: gr.CheckboxGroup(
                choices=views.token_choices(session), value=list(session.chosen), visible=shown
            ),
            self.key_tokens_button: gr.Button(visible=shown),
            self.all_tokens_button: gr.Button(visible=shown),
        }
