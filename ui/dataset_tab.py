"""The Dataset tab: every head scored over a dataset (the demo set, or a .zip of your own) with the
Explorer's model: mean HI with intervals, the layer bars, and the images where a chosen head scores
best and worst (its attention drawn over each, by running the model on those few images again).

This module lays the tab out and wires its events; `dataset_handlers` answers them (within the deployment's
budget) and `dataset_views` draws what they show."""

from __future__ import annotations

import gradio as gr

from hi_core.data.dataset_analysis import DatasetConfig

from .budget import forget
from .components import Figure
from .context import AppContext
from .dataset_handlers import DatasetHandlers
from .dataset_views import GALLERY_SIZE
from .explorer_parts import ModelControls
from .feedback import EditCount
from .jobs import Jobs
from .options import ScoringControls, top_k_slider
from .sources import DEMO_SET, UPLOADED_ZIP


class DatasetTab(DatasetHandlers):
    """The tab's components (built in the current Blocks context) and their events; its handlers
    (`DatasetHandlers`) are mixed in."""

    def __init__(self, context: AppContext, model: ModelControls, tuned_state: gr.State) -> None:
        self.context, self.model, self.tuned_state = context, model, tuned_state
        self.jobs = Jobs()  # each session's running score, for its Cancel
        self.state = gr.State(None, time_to_live=context.settings.session_idle_s, delete_callback=forget)
        gr.Markdown(
            "Score every head over a dataset: mean HI with its interval over the images, the layer scores, and "
            "the images where a chosen head scores best and worst. The model is the one chosen in the Explorer tab. "
            'A dataset .zip holds `data.jsonl` (one `{"id", "image", "mask", "text", "key_phrase"}` '
            "per line, paths relative to it) with its images and mask PNGs, at its root or in one top folder."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self._controls()
            with gr.Column(scale=3):
                self._results()
        self._wire()

    def _controls(self) -> None:
        settings = self.context.settings
        self.source = gr.Radio(
            [(f"demo set ({len(self.context.examples)} scenes)", DEMO_SET), ("uploaded .zip", UPLOADED_ZIP)],
            value=DEMO_SET,
            label="Dataset",
            elem_id="ds-source",
        )
        self.archive = gr.File(label="Dataset .zip", file_types=[".zip"], type="filepath", elem_id="ds-zip")
        with gr.Accordion("Options", open=False):
            batch_cap = settings.max_batch_size
            self.batch_size = gr.Slider(
                1,
                32,
                value=DatasetConfig.batch_size,
                step=1,
                elem_id="ds-batch-size",
                label=f"Batch size (images per forward pass{f'; at most {batch_cap} here' if batch_cap else ''})",
            )
            cap = settings.max_dataset_images
            self.limit = gr.Number(
                cap or 0,
                precision=0,
                minimum=0,
                elem_id="ds-limit",
                label=f"Max images (0: all{f'; at most {cap} here' if cap else ''})",
            )
            self.use_key_phrases = gr.Checkbox(
                DatasetConfig.use_key_phrases,
                elem_id="ds-key-phrases",
                label="Score each record's key-phrase tokens (else every token)",
            )
            self.options = ScoringControls.build("ds-", max_chars=settings.max_text_chars)
        self.overlay = gr.Checkbox(
            True, label="Show the head's attention on the gallery images (runs the model on them)", elem_id="ds-overlay"
        )
        with gr.Row():
            self.score_button = gr.Button("Score dataset", variant="primary", elem_id="ds-score")
            self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="ds-cancel")
        self.message = gr.Markdown("", label="Dataset message", elem_id="ds-message")

    def _results(self) -> None:
        self.stale = gr.Markdown("", label="Stale scores", elem_id="ds-stale")
        self.edits = EditCount("ds-edits")
        self.summary = gr.Markdown("Scores appear here.", label="Dataset summary", elem_id="ds-summary")
        self.skipped = gr.Markdown(label="Skipped records", elem_id="ds-skipped")
        with gr.Row():
            self.heatmap = Figure(
                label="Mean HI: rows are layers, columns heads; click a cell",
                download_name="dataset-hi-heatmap",
                elem_id="ds-heatmap",
                height=280,
            )
            with gr.Column():
                self.top_k = top_k_slider("ds-top-k")
                self.bars = Figure(
                    label="Layer scores", download_name="dataset-layer-scores", elem_id="ds-layer-bars", height=220
                )
        with gr.Row():
            self.layer = gr.Number(label="Selected layer", precision=0, value=0, minimum=0, elem_id="ds-layer")
            self.head = gr.Number(label="Selected head", precision=0, value=0, minimum=0, elem_id="ds-head-number")
            self.show_head = gr.Button("Show head", size="sm", elem_id="ds-show-head")
        self.head_summary = gr.Markdown(label="Selected head in numbers", elem_id="ds-head")
        self.best = gr.Gallery(
            label=f"Best {GALLERY_SIZE} images for the head (highest HI first)",
            columns=GALLERY_SIZE,
            rows=1,
            height=240,
            elem_id="ds-best",
        )
        self.worst = gr.Gallery(
            label=f"Worst {GALLERY_SIZE} images for the head (lowest HI first)",
            columns=GALLERY_SIZE,
            rows=1,
            height=240,
            elem_id="ds-worst",
        )
        self.ranking = gr.Dataframe(
            headers=["layer", "head", "mean HI", "HI low", "HI high", "mass"],
            interactive=False,
            label="Dataset ranking",
            elem_id="ds-ranking",
            max_height=400,
        )
        self.downloads = gr.File(
            label="Downloads: dataset scores (JSON), per-image HI (CSV)", file_count="multiple", elem_id="ds-downloads"
        )

    def _wire(self) -> None:
        model, options = self.model, self.options
        self.archive.upload(lambda: UPLOADED_ZIP, None, self.source, api_visibility="private")
        self.archive.clear(lambda: DEMO_SET, None, self.source, api_visibility="private")
        head_views = [
            self.state,
            self.heatmap,
            self.head_summary,
            self.layer,
            self.head,
            self.best,
            self.worst,
            self.message,
        ]
        self.score_button.click(
            self.score,
            [
                self.state,
                model.name,
                model.device,
                self.source,
                self.archive,
                self.batch_size,
                self.limit,
                options.prompt,
                options.queries,
                *options.scoring,
                self.use_key_phrases,
                self.top_k,
                self.overlay,
                model.lora,
                self.tuned_state,
                self.edits.count,
            ],
            [*head_views, self.stale, self.summary, self.ranking, self.bars, self.skipped, self.downloads, self.top_k],
            api_name="score_dataset",
            concurrency_limit=1,  # one dataset at a time; the explorer keeps the other worker
        ).then(
            self.inputs_changed,
            [self.state, self.edits.count],
            [self.stale],
            api_visibility="private",
            show_progress="hidden",
        )
        self.cancel_button.click(self.cancel, None, None, api_name="cancel_dataset")
        self.heatmap.select(self.select_cell, [self.state, self.overlay], head_views, api_visibility="private")
        select = dict(fn=self.select_head, inputs=[self.state, self.layer, self.head, self.overlay], outputs=head_views)
        self.show_head.click(**select, api_name="select_dataset_head")
        for box in (self.layer, self.head):
            box.submit(**select, api_visibility="private")
        self.overlay.change(**select, api_visibility="private")
        self.top_k.change(
            self.redraw_bars, [self.state, self.top_k], [self.bars, self.message], api_visibility="private"
        )
        self.edits.marks_stale(
            [box.change for box in (model.name, model.device, model.lora, self.source)],
            self.inputs_changed,
            self.state,
            self.stale,
        )
