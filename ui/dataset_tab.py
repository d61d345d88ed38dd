"""The Dataset tab: every head scored over a dataset (the demo set, or a .zip of your own) with the
Explorer's model: mean HI with intervals, the layer bars, and the images where a chosen head scores
best and worst (its attention drawn over each, by running the model on those few images again).

Scoring holds to the deployment's budget (`sources`): an upload unpacks only into reserved run storage, its
data.jsonl is bounded before it is scanned, records are decoded as the editor decodes an image, and the session's
Cancel stops it between batches (the last finished scores stay on the page; nothing of the cancelled run is kept).
Skipped records are listed without the server's paths, in the page and in the JSON."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np

from hi_core.base.errors import InputError
from hi_core.data.dataset_scoring import DatasetAnalysis, DatasetConfig
from hi_core.data.datasets import INDEX, Cancelled, Record, read_dataset
from hi_core.figures.overlays import map_overlay
from hi_core.model.loading import LoadConfig

from . import explorer_views as views
from .components import Figure
from .context import AppContext
from .explorer import ModelControls, forget
from .feedback import EditCount, notice, reports_input_errors
from .jobs import Jobs
from .options import ScoringControls, analysis_config, top_k_slider, top_k_update
from .settings import scrub_paths
from .sources import DEMO_SET, UPLOADED_ZIP, dataset_folder, record_limits

GALLERY_SIZE = 4  # images shown where the selected head scores best, and worst
SHOWN_KEPT = 64  # gallery images (and their maps) a session keeps for the next head it selects
SKIPPED_SHOWN = 20  # skipped records listed in the page (all of them are in the JSON)


class _AllBut:
    """Every id except `wanted`: as read_dataset's `skip_ids`, it reads only the wanted records."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted

    def __contains__(self, record_id: object) -> bool:
        return record_id not in self.wanted


@dataclass
class DatasetSession:
    """One browser session's scored dataset (in `gr.State`); `run_folder` is removed with it."""

    analysis: DatasetAnalysis
    name: str  # what was scored: the demo set or the zip's file name
    folder: Path  # the dataset folder (the demo set, or the unpacked upload in run_folder)
    run_folder: Path  # this run's unpacked upload and downloads
    load: LoadConfig  # the model that scored it (the gallery's overlays run it again)
    selected: tuple[int, int]
    shown: dict[str, tuple[Record, np.ndarray | None]] = field(default_factory=dict)  # id -> (record, maps)
    edits: int = 0  # the browser's count of input edits when Score was pressed (feedback.EditCount)

    def remove_files(self) -> None:
        shutil.rmtree(self.run_folder, ignore_errors=True)


def summary(session: DatasetSession) -> str:
    analysis = session.analysis
    best_layer, best_head = analysis.ranked_heads()[0]
    chance = analysis.mean_chance
    best = analysis.hi[best_layer, best_head]
    return (
        f"**{len(analysis.images)} images scored** from {session.name}"
        f"{f' ({len(analysis.skipped)} skipped)' if analysis.skipped else ''} · **model** `{analysis.model}` "
        f"({analysis.family}, {analysis.queries} rows) · **mean chance IoU** {chance:.3f}  \n"
        f"**Best head:** layer {best_layer}, head {best_head}: mean HI {best:.3f} "
        f"({round(analysis.config.confidence * 100)}% interval {analysis.hi_low[best_layer, best_head]:.3f}–"
        f"{analysis.hi_high[best_layer, best_head]:.3f}), {best / max(chance, 1e-9):.1f}× chance"
        + (f"  \n**Layers:** {note}" if (note := views.not_scored_note(analysis.hi)) else "")
    )


def skipped_list(analysis: DatasetAnalysis) -> str:
    if not analysis.skipped:
        return ""
    lines = [f"- line {line} ({rid or 'no id'}): {reason}" for line, rid, reason in analysis.skipped[:SKIPPED_SHOWN]]
    if len(analysis.skipped) > SKIPPED_SHOWN:
        lines.append(f"- ... and {len(analysis.skipped) - SKIPPED_SHOWN} more (all in the JSON)")
    return f"**{len(analysis.skipped)} record(s) skipped:**\n" + "\n".join(lines)


def ranking_rows(analysis: DatasetAnalysis) -> list[list]:
    return [
        [
            layer,
            h,
            *(
                round(float(values[layer, h]), 4)
                for values in (analysis.hi, analysis.hi_low, analysis.hi_high, analysis.mass)
            ),
        ]
        for layer, h in analysis.ranked_heads()
    ]


def head_line(session: DatasetSession, overlay: bool) -> str:
    analysis, (layer, head) = session.analysis, session.selected
    per_image = analysis.image_hi[:, layer, head]  # (images,)
    return (
        f"**Layer {layer}, head {head}:** mean HI {analysis.hi[layer, head]:.3f} "
        f"(interval {analysis.hi_low[layer, head]:.3f}–{analysis.hi_high[layer, head]:.3f}), "
        f"mass {analysis.mass[layer, head]:.3f}; "
        f"HI {per_image.min():.2f}–{per_image.max():.2f} over the images"
        + (
            " (the head's attention over each image, the key object outlined)"
            if overlay
            else " (the key object outlined)"
        )
    )


def _records(session: DatasetSession, ids: list[str]) -> None:
    """Reads the records of `ids` not yet in `session.shown` (and forgets the oldest beyond SHOWN_KEPT)."""
    missing = set(ids) - session.shown.keys()
    if not missing:
        return
    if not (session.folder / INDEX).is_file():
        raise InputError("this dataset's files were cleaned up after a long idle time; score it again")
    config = session.analysis.config
    for record in read_dataset(
        session.folder, limit=config.limit, skip_ids=_AllBut(missing), limits=config.image_limits
    ):
        if record.id in missing:  # a duplicate id was scored once: its first record
            session.shown[record.id] = (record, None)
            missing.discard(record.id)
    for old in list(session.shown)[: max(0, len(session.shown) - SHOWN_KEPT)]:
        if old not in ids:
            del session.shown[old]


class DatasetTab:
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
        self.archive.upload(lambda: UPLOADED_ZIP, None, self.source, api_name=False)
        self.archive.clear(lambda: DEMO_SET, None, self.source, api_name=False)
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
            self.inputs_changed, [self.state, self.edits.count], [self.stale], api_name=False, show_progress="hidden"
        )
        self.cancel_button.click(self.cancel, None, None, api_name="cancel_dataset")
        self.heatmap.select(self.select_cell, [self.state, self.overlay], head_views, api_name=False)
        select = dict(fn=self.select_head, inputs=[self.state, self.layer, self.head, self.overlay], outputs=head_views)
        self.show_head.click(**select, api_name="select_dataset_head")
        for box in (self.layer, self.head):
            box.submit(**select, api_name=False)
        self.overlay.change(**select, api_name=False)
        self.top_k.change(self.redraw_bars, [self.state, self.top_k], [self.bars, self.message], api_name=False)
        self.edits.marks_stale(
            [box.change for box in (model.name, model.device, model.lora, self.source)],
            self.inputs_changed,
            self.state,
            self.stale,
        )

    @reports_input_errors("message")
    def score(
        self,
        previous: DatasetSession | None,
        model_name: str,
        device: str,
        source: str,
        archive: str | None,
        batch_size: int,
        limit: int,
        prompt: str,
        queries: str,
        binarize: str,
        quantile: float,
        layer_score: str,
        use_key_phrases: bool,
        top_k: int,
        overlay: bool,
        lora: str = "",
        tuned=None,
        edits: float | None = 0,
        progress=gr.Progress(),
        request: gr.Request = None,
    ):
        context = self.context
        load = context.model_config(model_name, device, lora, tuned)
        context.settings.check_batch_size(int(batch_size))
        config = DatasetConfig(
            analysis=analysis_config(prompt, queries, binarize, quantile, layer_score),
            use_key_phrases=bool(use_key_phrases),
            batch_size=int(batch_size),
            limit=context.settings.dataset_limit(int(limit or 0) or None),
            image_limits=record_limits(context.settings),
        )
        if source == UPLOADED_ZIP and not archive:
            raise InputError("upload a dataset .zip first, or choose the demo set")
        try:
            with context.storage.run() as run_folder, self.jobs.flag(request.session_hash if request else "") as stop:
                try:
                    progress(0, desc="unpacking the zip" if source == UPLOADED_ZIP else "reading the dataset")
                    folder, name = dataset_folder(
                        source,
                        archive,
                        run_folder,
                        settings=context.settings,
                        storage=context.storage,
                        stop=stop.is_set,
                    )
                    context.get_model(load, progress)
                    if stop.is_set():
                        raise Cancelled("stopped before scoring")
                    analysis = context.work.score_dataset(load, folder, config, _reporting(progress, stop), stop.is_set)
                    progress(1.0, desc="scored: drawing the heatmap and each head's best and worst images")
                    analysis = dataclasses.replace(
                        analysis,
                        model=context.shown(analysis.model),
                        dataset=context.shown(analysis.dataset),
                        skipped=[(line, rid, scrub_paths(reason)) for line, rid, reason in analysis.skipped],
                    )
                    session = DatasetSession(
                        analysis,
                        name,
                        folder,
                        run_folder,
                        load,
                        selected=analysis.ranked_heads()[0],
                        edits=int(edits or 0),
                    )
                    shown = self._head_views(session, overlay)
                except BaseException:
                    shutil.rmtree(run_folder, ignore_errors=True)
                    raise
        except Cancelled:
            kept = " (below: the last finished scores)" if previous is not None else ""
            return {self.message: notice(f"<b>Scoring cancelled</b>: nothing of it was kept{kept}.")}
        forget(previous)  # the previous run's files, now that this one stands
        analysis.save_json(run_folder / "dataset_scores.json")
        analysis.save_csv(run_folder / "images.csv")
        return {
            **shown,
            self.stale: "",
            self.summary: summary(session),
            self.ranking: ranking_rows(analysis),
            self.bars: views.bars_figure(analysis, top_k),
            self.skipped: skipped_list(analysis),
            self.downloads: [str(run_folder / "dataset_scores.json"), str(run_folder / "images.csv")],
            self.top_k: top_k_update(len(analysis.scored_layers), top_k),
        }

    def cancel(self, request: gr.Request):
        """Stops this session's scoring at its next check (between batches, or while its data.jsonl is read)."""
        if not self.jobs.cancel(request.session_hash):
            gr.Warning("Nothing is being scored in this session.")

    @reports_input_errors("message")
    def select_cell(self, session: DatasetSession | None, overlay: bool, event: gr.SelectData):
        if session is None:
            raise InputError("score a dataset first")
        clicked = views.clicked_head(event.index, session.analysis.hi)
        if clicked is None:  # the numbers or the colour bar, not a cell
            return gr.skip()
        session.selected = views.scored_head(session.analysis.hi, clicked)
        return self._head_views(session, overlay)

    @reports_input_errors("message")
    def select_head(self, session: DatasetSession | None, selected_layer: int, selected_head: int, overlay: bool):
        if session is None:
            raise InputError("score a dataset first")
        session.selected = views.scored_head(
            session.analysis.hi, views.clip_head(session.analysis.hi, selected_layer, selected_head)
        )
        return self._head_views(session, overlay)

    @reports_input_errors("message")
    def redraw_bars(self, session: DatasetSession | None, top_k: int):
        return gr.skip() if session is None else {self.bars: views.bars_figure(session.analysis, top_k)}

    def inputs_changed(self, session: DatasetSession | None, edits: float | None):
        if not EditCount.edited_since(session, edits):
            return gr.skip()
        return {
            self.stale: notice(
                "<b>The model or the dataset changed: the scores below are for the previous ones.</b> "
                "Press <b>Score dataset</b> to update them."
            )
        }

    def _head_views(self, session: DatasetSession, overlay: bool) -> dict:
        """The heatmap with the selected head outlined, its line of numbers, and its best/worst images."""
        analysis, (layer, head) = session.analysis, session.selected
        best, worst = analysis.extremes(layer, head, GALLERY_SIZE)
        return {
            self.state: session,
            self.message: "",
            self.heatmap: views.heatmap_image(
                analysis.hi, session.selected, "Mean HI over the images: click a cell", "mean HI"
            ),
            self.head_summary: head_line(session, bool(overlay)),
            self.layer: layer,
            self.head: head,
            self.best: self._gallery(session, best, bool(overlay)),
            self.worst: self._gallery(session, worst, bool(overlay)),
        }

    def _gallery(self, session: DatasetSession, order: np.ndarray, overlay: bool) -> list[tuple[np.ndarray, str]]:
        """(image, caption) of the images at `order`: the selected head's map over each (when `overlay`: the model
        runs again on the images not yet shown, exactly as they were scored) and the key object's outline."""
        layer, head = session.selected
        images = [session.analysis.images[i] for i in order]
        _records(session, [image.id for image in images])
        items = []
        for image in images:
            record, maps = session.shown[image.id]
            if overlay and maps is None:
                maps = self._record_maps(session.load, record, session.analysis.config.record_analysis(record))
                session.shown[image.id] = (record, maps)
            picture = map_overlay(
                np.asarray(record.image.convert("RGB")),
                maps[layer, head] if overlay else None,
                record.mask,
                min_side=192,
            )
            items.append((picture, f"HI {image.hi[layer, head]:.2f} · {image.id}"))
        return items

    def _record_maps(self, load: LoadConfig, record: Record, config) -> np.ndarray:
        """One dataset record's head maps, (layers, heads, gh, gw)."""
        self.context.get_model(load)
        return self.context.work.analyze(load, np.asarray(record.image), record.mask, record.text, config).maps


def _reporting(progress: gr.Progress, stop) -> Callable[[int, int], None]:
    """`score_dataset`'s progress callback: the page's bar, and the session's Cancel (raised after a batch)."""

    def report(done: int, total: int) -> None:
        if stop.is_set():
            raise Cancelled(f"stopped after {done} of {total} records")
        progress((done, total), desc="scoring", unit="images")

    return report
