"""The Explorer tab's handlers: load the model, pick an example, propose or preview the mask, mark the results
stale, Analyze, select a head, rescore, redraw, choose tokens, and the result views each returns (drawn by
`explorer_views`). Each returns `{component: value}` updates for the components `explorer` lays out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import gradio as gr
import numpy as np
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.figures.overlays import contrasting_colour
from hi_core.method.image_scoring import View
from hi_core.method.masks import grabcut_mask, painted_mask
from hi_core.method.scoring import Binarization, LayerScore
from hi_core.model.inputs import Queries
from hi_core.model.loading import Device

from . import explorer_views as views
from .budget import token_maps_note
from .components import Picture, file_name
from .editor import NO_MASK, background, brush, editor_value, hex_colour, mask_from_inputs, mask_preview
from .explorer_parts import ExplorerParts
from .explorer_views import Session
from .feedback import EditCount, Refused, notice, reports_input_errors
from .options import analysis_config, check_texts, scoring_config, top_k_for, top_k_update

STALE = {
    "image": "The image or the mask changed",
    "text": "The description changed",
    "model": "The model changed",
    "options": "The prompt or the query rows changed",
}


def named(session: Session, pixels: np.ndarray, what: str) -> Picture:
    """A figure of the session's analysis, downloaded as `{what}-{model}.png`."""
    return Picture(pixels, file_name(what, session.analysis.model))


class ExplorerHandlers(ExplorerParts):
    """The handlers of `ExplorerTab` (mixed into it): they read `context`, `state` and the components its layout
    builds, and `edit_inputs` from its events (`ExplorerEvents`), all declared in `ExplorerParts`."""

    # --- handlers -------------------------------------------------------------------------------

    @reports_input_errors("model_status")
    def load(self, model_name: str, device: Device, lora: str = "", tuned=None, progress=gr.Progress()):
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
        image = background(editor)  # refuses a missing image
        layers = editor.get("layers") if editor is not None else None
        hint = painted_mask(list(layers or []), (image.shape[1], image.shape[0]))
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
        if session is not None and EditCount.edited_since(session, edits) and self._differs(what, session, values):
            return self._banner(what)
        return gr.skip()

    def example_picked(self, session: Session | None, edits: float | None):
        return self._banner("image") if EditCount.edited_since(session, edits) else gr.skip()

    def changed_during_analysis(self, session: Session | None, edits: float | None, *values):
        """After Analyze (whose results clear the banner, and which may have failed): the banner again if the
        inputs changed after it was pressed, naming the first kind that differs."""
        if session is None or not EditCount.edited_since(session, edits):
            return gr.skip()
        remaining = iter(values)
        grouped = {what: [next(remaining) for _ in boxes] for what, boxes in self.edit_inputs.items()}
        changed = [what for what, group in grouped.items() if self._differs(what, session, group)]
        return self._banner(changed[0]) if changed else gr.skip()

    @reports_input_errors("message")
    def analyze(
        self,
        model_name: str,
        device: Device,
        editor: dict | None,
        uploaded_mask: str | None,
        text: str,
        generate: bool,
        key_phrase: str,
        prompt: str,
        queries: Queries,
        view: View,
        binarize: Binarization,
        quantile: float,
        layer_score: LayerScore,
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
        work, token_maps, storage = context.work, context.token_maps, context.storage
        if work is None or token_maps is None or storage is None:
            raise RuntimeError("AppContext.__post_init__ sets work, token_maps and storage; one is None")
        loaded = context.get_model(load_config, progress)
        scored_text = None if generate else text  # None: the model describes the image
        token_note = token_maps_note(loaded, scored_text, config, context.settings.max_token_maps)
        progress(0.5, desc="capturing attention")
        analysis = work.analyze(load_config, image, mask, scored_text, config, per_token=not token_note)
        if previous is not None:  # its maps make room for these (its folder is reused)
            previous.release_token_maps()
        whole, held = token_maps.hold(dataclasses.replace(analysis, model=context.shown(analysis.model)))
        if generate:  # the box shows the text that was scored, and the session counts it as what was analyzed
            inputs["text"] = (analysis.text, generate, key_phrase)
        folder = previous.folder if previous is not None else storage.new_session_folder()
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
        binarize: Binarization,
        quantile: float,
        layer_score: LayerScore,
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
        if session is None or self.state not in update:  # the error alone
            return update
        return update | self._token_controls(session)

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
