"""The Dataset tab's handlers: score a dataset, cancel it, select a head (its best and worst images, the head's
attention drawn over each by running the model on those few images again), redraw the bars, mark the scores stale.
Each returns `{component: value}` updates for the components `dataset_tab` lays out.

Scoring holds to the deployment's budget (`sources`): an upload unpacks only into reserved run storage, its
data.jsonl is bounded before it is scanned, records are decoded as the editor decodes an image, and the session's
Cancel stops it between batches (the last finished scores stay on the page; nothing of the cancelled run is kept).
Skipped records are listed without the server's paths, in the page and in the JSON."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable

import gradio as gr
import numpy as np

from hi_core.base.errors import InputError
from hi_core.data.dataset_analysis import DatasetConfig
from hi_core.data.datasets import INDEX, Cancelled, Record, read_dataset
from hi_core.figures.overlays import map_overlay
from hi_core.method.scoring import Binarization, LayerScore
from hi_core.model.inputs import Queries
from hi_core.model.loading import Device, LoadConfig

from . import explorer_views as views
from .budget import forget
from .components import Figure
from .context import AppContext
from .dataset_views import GALLERY_SIZE, DatasetSession, head_line, ranking_rows, skipped_list, summary
from .feedback import EditCount, notice, reports_input_errors
from .jobs import Jobs, session_key
from .options import analysis_config, top_k_update
from .settings import scrub_paths
from .sources import UPLOADED_ZIP, dataset_folder, record_limits

SHOWN_KEPT = 64  # gallery images (and their maps) a session keeps for the next head it selects


class _AllBut:
    """Every id except `wanted`: as read_dataset's `skip_ids`, it reads only the wanted records."""

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted

    def __contains__(self, record_id: object) -> bool:
        return record_id not in self.wanted


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


class DatasetParts:
    """What `DatasetTab` builds (annotations only: the tab assigns each) and its handlers use."""

    context: AppContext
    jobs: Jobs  # each session's running score, for its Cancel
    state: gr.State  # this session's last scores (a `DatasetSession`)
    message: gr.Markdown  # beside Score dataset
    stale: gr.Markdown
    summary: gr.Markdown
    skipped: gr.Markdown
    heatmap: Figure
    top_k: gr.Slider
    bars: Figure
    layer: gr.Number
    head: gr.Number
    head_summary: gr.Markdown
    best: gr.Gallery
    worst: gr.Gallery
    ranking: gr.Dataframe
    downloads: gr.File


class DatasetHandlers(DatasetParts):
    """The handlers of `DatasetTab` (mixed into it): they read `context`, `jobs` and the components its layout
    builds, all declared in `DatasetParts`."""

    @reports_input_errors("message")
    def score(
        self,
        previous: DatasetSession | None,
        model_name: str,
        device: Device,
        source: str,
        archive: str | None,
        batch_size: int,
        limit: int,
        prompt: str,
        queries: Queries,
        binarize: Binarization,
        quantile: float,
        layer_score: LayerScore,
        use_key_phrases: bool,
        top_k: int,
        overlay: bool,
        lora: str = "",
        tuned=None,
        edits: float | None = 0,
        progress=gr.Progress(),
        request: gr.Request | None = None,
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
            with context.storage.run() as run_folder, self.jobs.flag(session_key(request)) as stop:
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
        if not self.jobs.cancel(session_key(request)):
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
            head_map = None
            if overlay:
                if maps is None:
                    maps = self._record_maps(session.load, record, session.analysis.config.record_analysis(record))
                    session.shown[image.id] = (record, maps)
                head_map = maps[layer, head]
            picture = map_overlay(np.asarray(record.image.convert("RGB")), head_map, record.mask, min_side=192)
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
