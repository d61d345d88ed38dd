"""The Explorer tab's events: which action of a person (or API call) runs which handler
(`explorer_handlers`), on which components of the layout (`explorer`), and what marks the results stale."""

from __future__ import annotations

import functools
import itertools

from .explorer_handlers import ExplorerHandlers

# After Analyze: the results' top comes into view (unless the message beside Analyze says it failed).
SCROLL_TO_RESULTS = """() => setTimeout(() => {
  const failed = document.querySelector('#analyze-message')?.innerText.trim();
  if (!failed) document.querySelector('#results')?.scrollIntoView({behavior: 'smooth', block: 'start'});
}, 150)"""


class ExplorerEvents(ExplorerHandlers):
    """`ExplorerTab._wire`: mixed into `ExplorerTab`, whose layout builds the components wired here (declared in
    `ExplorerParts`) to the handlers of `ExplorerHandlers`."""

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
                api_visibility="private",
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
            self.preview_mask,
            [self.editor, self.uploaded_mask],
            [self.mask_view, self.message],
            api_visibility="private",
        )
        # the mask preview follows the brush as it paints; a new image gets a brush that stands out on it
        self.editor.input(
            self.preview_painted,
            [self.editor, self.uploaded_mask, self.message],
            [self.mask_view, self.message],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )
        self.editor.upload(
            self.image_uploaded,
            [self.editor, self.brush_colour],
            [self.editor, self.brush_colour, self.mask_view],
            api_visibility="private",
            show_progress="hidden",
        )
        # What a person does (not `.change`: the editor also changes when an event uploads its layers). An edit
        # marks the results stale when it came after Analyze was pressed and the inputs differ from those analyzed:
        # the editor sends `input` once it has redrawn, which can be after an Analyze that already had the stroke.
        self.edit_inputs = {
            "image": [self.editor, self.uploaded_mask],
            "text": [self.text, self.generate, self.key_phrase],
            "model": [model.name, model.device, model.lora],
            "options": [options.prompt, options.queries, self.view],
        }
        edit_events = {
            "image": [
                self.editor.input,
                self.editor.upload,
                self.editor.clear,
                self.uploaded_mask.upload,
                self.uploaded_mask.clear,
            ],
            "text": [self.text.input, self.generate.input, self.key_phrase.input],
            "model": [model.name.change, model.device.change, model.lora.change],
            "options": [options.prompt.input, options.queries.input, self.view.input],
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
                self.view,
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
            api_visibility="private",
            show_progress="hidden",
        ).then(None, js=SCROLL_TO_RESULTS, api_visibility="private")
        shown = [self.state, self.top_n, self.layer, self.top_k]
        self.heatmap.select(self.select_cell, shown, full, api_visibility="private")
        select = dict(
            fn=self.select_head,
            inputs=[self.state, self.selected_layer, self.selected_head, self.top_n, self.layer, self.top_k],
            outputs=full,
        )
        self.show_head.click(**select, api_name="select_head")
        for box in (self.selected_layer, self.selected_head):
            box.submit(**select, api_visibility="private")
        for option in options.scoring:
            option.change(
                self.rescore,
                [self.state, *options.scoring, *shown[1:]],
                [*full, *self.compare.views, *self.ablation.views],
                api_visibility="private",
            )
        # ticks in quick succession: the last one's choice is drawn, not each in turn
        self.tokens.input(
            self.choose_tokens,
            [self.state, self.tokens, *shown[1:]],
            full,
            show_progress="minimal",
            api_name="choose_tokens",
            trigger_mode="always_last",
        )
        self.key_tokens_button.click(
            self.key_phrase_tokens, shown, full, show_progress="minimal", api_name="key_phrase_tokens"
        )
        self.all_tokens_button.click(self.every_token, shown, full, show_progress="minimal", api_name="all_tokens")
        self.compare.wire(model.name, model.device, model.lora, self.tuned_state)
        self.ablation.wire(model.name, model.device, model.lora, self.tuned_state)
        self.top_n.change(
            self.redraw_top,
            [self.state, self.top_n],
            [self.top_view, self.top_n, self.message],
            api_visibility="private",
        )
        self.layer.change(
            self.redraw_layer,
            [self.state, self.layer],
            [self.layer_view, self.layer, self.message],
            api_visibility="private",
        )
        self.top_k.change(
            self.redraw_bars, [self.state, self.top_k], [self.bars, self.top_k, self.message], api_visibility="private"
        )
