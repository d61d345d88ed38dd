"""HI Explorer in the browser: load a model, mark the key object, see where every head looks.

UI only: every number shown is computed by `hi_core`. `build_demo()` returns the Blocks (tests
import it without serving); `python app.py [--host H] [--port P] [--share] [--model M]` serves it.
Three tabs: the single-image explorer, "Dataset" (score a dataset's every head: mean HI with
intervals, layer bars, the images where a chosen head scores best and worst), and "Fine-tune" (LoRA
on chosen layers with a live loss plot and a cancel button; held-out captions before and after; the
adapter as a zip, and the tuned model back in the explorer). On a ZeroGPU Space the model runs under
`spaces.GPU`; without that package it runs as is.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import inspect
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from hi_core.archives import check_record_paths, extract_dataset_zip
from hi_core.analysis import AnalysisConfig, ImageAnalysis, analyze_image
from hi_core.compare import METRICS
from hi_core.dataset_scoring import DatasetAnalysis, DatasetConfig, score_dataset
from hi_core.datasets import INDEX, Record, read_dataset, write_synthetic
from hi_core.errors import InputError
from hi_core.finetune import DataConfig, FinetuneConfig, TrainCallbacks, TrainingCancelled, split_dataset
from hi_core.layer_selection import Ranking, needs_ranking, select_layers
from hi_core.loading import ASSETS_DIR, LoadConfig, LoadedModel, ModelCache, load_model
from hi_core.masks import check_mask, grabcut_mask, load_mask, painted_mask
from hi_core.plots import figure_to_array, hi_cells, layer_bars, layer_choices, map_overlay, mask_overlay, overlay_grid
from hi_core.runs import RunRecord, dataset_ranking, run_finetune, run_pretrained
from hi_core.scoring import ScoringConfig

from .components import bounded_image_editor
from .settings import Settings, scrub_paths
from .storage import RunStorage

try:  # Hugging Face ZeroGPU Spaces: the GPU is attached only inside functions decorated with spaces.GPU
    import spaces
except ImportError:
    spaces = None

# ZeroGPU runs a decorated function in a forked child process: whatever it changes in Python objects
# stays there. So only the model's work is decorated (it takes inputs and returns arrays); loading,
# the model cache, run folders and cancel flags stay in the server's process. A free visitor's daily
# GPU quota is a few minutes: the durations below are what a call may reserve, not what it uses.
GPU_SECONDS = 30  # one analysis, or the gallery's few images
GPU_SECONDS_DATASET = 120  # a dataset of at most Settings.max_dataset_images images


def on_gpu(duration: int):
    """`spaces.GPU(duration=...)` on a ZeroGPU Space; elsewhere the function as it is."""
    return spaces.GPU(duration=duration) if spaces is not None else (lambda function: function)


EXAMPLES_DIR = ASSETS_DIR / "examples"

# The Dataset and Fine-tune tabs' sources (the generated scenes: Fine-tune only).
DEMO_SET, UPLOADED_ZIP, SYNTHETIC = "demo", "zip", "synthetic"
GALLERY_SIZE = 4  # images shown where the selected head scores best, and worst
SHOWN_KEPT = 64  # gallery images (and their maps) a session keeps for the next head it selects
# Every file the app writes lies below this (ui/storage.py): run folders, sessions' downloads, the synthetic set.
UNPACKED = Path(tempfile.gettempdir()) / "hi-explorer-datasets"
UNPACKED_TTL_S = 6 * 3600  # a run's folder older than this is removed when a new run starts


def heatmap_cell_px(layers: int, heads: int) -> int:
    """Side of one head's square in the clickable HI heatmap: as large as fits ~320 x 260 px."""
    return int(np.clip(min(320 // heads, 260 // layers), 8, 48))


INTRO = """# HI Explorer
Which attention heads of a multimodal LM look at the object a description names? Mark the key
object, run the analysis, and every head of the language model is scored by **Head Impact** (IoU
of its binarized attention map over the image with the object's mask).
Click a cell of the heatmap (rows: layers, columns: heads) to see that head's map. The **Dataset** tab
scores every head over a whole dataset (the demo set, or a .zip of your own); **Fine-tune** tunes LoRA
on the layers with the highest HI (or others, to compare) and shows the captions before and after."""


@dataclass
class Session:
    """What one browser session has analyzed (kept in `gr.State`, never shared between tabs)."""

    analysis: ImageAnalysis
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    selected: tuple[int, int]
    folder: Path  # this session's downloads, rewritten by each analysis; removed with the session

    def remove_files(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _input_error(function):
    """Show `InputError`s as a visible message in the page (no server path in it); the app keeps serving."""

    if inspect.isgeneratorfunction(function):  # a handler that streams updates

        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except InputError as error:
                raise gr.Error(scrub_paths(str(error))) from None

        return generator

    @functools.wraps(function)  # keeps the signature: gradio reads gr.Progress / gr.SelectData from it
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as error:
            raise gr.Error(scrub_paths(str(error))) from None

    return wrapper


def _background(editor: dict | None) -> np.ndarray:
    if not editor or editor.get("background") is None:
        raise InputError("upload an image or pick an example first")
    return np.asarray(editor["background"])[..., :3].astype(np.uint8)


def _mask_from_inputs(editor: dict | None, uploaded_mask: str | None, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): the uploaded mask file (at most `max_pixels`) if given, else the painted strokes."""
    image = _background(editor)
    size = (image.shape[1], image.shape[0])
    if uploaded_mask:  # a mask of the uploaded image's size, reduced like the image if the editor reduced it
        mask = painted_mask([load_mask(uploaded_mask, max_pixels=max_pixels)], size)
    else:
        mask = painted_mask(list(editor.get("layers") or []), size)
    return image, check_mask(mask, Image.fromarray(image))


def _examples() -> list[dict[str, Any]]:
    if not (EXAMPLES_DIR / "data.jsonl").is_file():
        return []
    return [
        {"image": np.asarray(r.image), "mask": r.mask, "text": r.text, "key_phrase": r.key_phrase or "", "id": r.id}
        for r in read_dataset(EXAMPLES_DIR)
    ]


def _views(session: Session, top_n: int, layer: int, top_k: int) -> tuple:
    """Everything the results column shows, from the session's analysis."""
    analysis = session.analysis
    layers, heads = analysis.hi.shape
    selected_layer, selected_head = session.selected
    best_layer, best_head = analysis.ranked_heads()[0]
    summary = (
        f"**Scored text:** {analysis.text}  \n"
        f"**Model:** `{analysis.model}` ({analysis.family}, {analysis.view}) · **grid** {analysis.grid[0]}×{analysis.grid[1]} · "
        f"**object patches** {int(analysis.mask.object_patches.sum())} · **chance IoU** {analysis.chance:.3f} · "
        f"**response tokens** {analysis.response_tokens} ({analysis.queries} rows)  \n"
        f"**Best head:** layer {best_layer}, head {best_head}, HI {analysis.hi[best_layer, best_head]:.3f} "
        f"({analysis.hi[best_layer, best_head] / max(analysis.chance, 1e-9):.1f}× chance)"
    )
    head_view = figure_to_array(
        overlay_grid(
            [session.image, session.image],
            [analysis.maps[selected_layer, selected_head], analysis.mask.object_patches.astype(float)],
            [session.mask, session.mask],
            [
                f"layer {selected_layer} head {selected_head}: HI {analysis.hi[selected_layer, selected_head]:.3f}, "
                f"mass {analysis.mass[selected_layer, selected_head]:.3f}",
                "object patches on the grid",
            ],
            columns=2,
        )
    )
    top = analysis.ranked_heads()[:top_n]
    top_view = figure_to_array(
        overlay_grid(
            [session.image] * len(top),
            [analysis.maps[l, h] for l, h in top],
            [session.mask] * len(top),
            [f"L{l} H{h}: {analysis.hi[l, h]:.2f}" for l, h in top],
            suptitle=f"top {len(top)} heads by HI",
        )
    )
    layer = int(np.clip(layer, 0, layers - 1))
    layer_view = figure_to_array(
        overlay_grid(
            [session.image] * heads,
            [analysis.maps[layer, h] for h in range(heads)],
            [session.mask] * heads,
            [f"H{h}: {analysis.hi[layer, h]:.2f}" for h in range(heads)],
            suptitle=f"layer {layer}",
        )
    )
    ranking = [[l, h, round(float(analysis.hi[l, h]), 4), round(float(analysis.mass[l, h]), 4)] for l, h in analysis.ranked_heads()]
    bars = figure_to_array(layer_bars(analysis.layer_scores, top_k=min(top_k, layers)))
    return (
        summary,
        hi_cells(analysis.hi, heatmap_cell_px(layers, heads), session.selected),
        head_view,
        top_view,
        layer_view,
        ranking,
        bars,
        selected_layer,
        selected_head,
    )


def _downloads(session: Session, views: tuple) -> list[str]:
    """Scores (JSON, CSV) and the figures (PNG) in the session's folder (Gradio serves copies of them)."""
    folder = session.folder
    analysis = session.analysis
    (folder / "scores.json").write_text(json.dumps(analysis.to_json(), indent=2))
    (folder / "heads.csv").write_text(analysis.to_csv())
    for name, array in (("head.png", views[2]), ("top_heads.png", views[3]), ("layer_scores.png", views[6])):
        Image.fromarray(array).save(folder / name)
    return [str(folder / name) for name in ("scores.json", "heads.csv", "head.png", "top_heads.png", "layer_scores.png")]


# --- the Dataset tab ----------------------------------------------------------------------------


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

    def remove_files(self) -> None:
        shutil.rmtree(self.run_folder, ignore_errors=True)


def _forget(session: DatasetSession | None) -> None:
    """gr.State's delete callback: a closed session's files go with it."""
    if session is not None:
        session.remove_files()


def _dataset_views(session: DatasetSession, top_k: int) -> tuple:
    """The summary, the ranking table (every head), the layer bars and the skipped records."""
    analysis = session.analysis
    layers = analysis.hi.shape[0]
    best_layer, best_head = analysis.ranked_heads()[0]
    chance = float(np.mean([image.chance for image in analysis.images]))
    confidence = round(analysis.config.confidence * 100)
    summary = (
        f"**{len(analysis.images)} images scored** from {session.name}"
        f"{f' ({len(analysis.skipped)} skipped)' if analysis.skipped else ''} · **model** `{analysis.model}` "
        f"({analysis.family}, {analysis.queries} rows) · **mean chance IoU** {chance:.3f}  \n"
        f"**Best head:** layer {best_layer}, head {best_head}: mean HI {analysis.hi[best_layer, best_head]:.3f} "
        f"({confidence}% interval {analysis.hi_low[best_layer, best_head]:.3f}–{analysis.hi_high[best_layer, best_head]:.3f}), "
        f"{analysis.hi[best_layer, best_head] / max(chance, 1e-9):.1f}× chance"
    )
    ranking = [
        [l, h, *(round(float(values[l, h]), 4) for values in (analysis.hi, analysis.hi_low, analysis.hi_high, analysis.mass))]
        for l, h in analysis.ranked_heads()
    ]
    bars = figure_to_array(layer_bars(analysis.layer_scores, top_k=min(top_k, layers)))
    skipped = ""
    if analysis.skipped:
        lines = [f"- line {line} ({rid or 'no id'}): {reason}" for line, rid, reason in analysis.skipped[:20]]
        more = [f"- ... and {len(analysis.skipped) - 20} more (all in the JSON)"] if len(analysis.skipped) > 20 else []
        skipped = f"**{len(analysis.skipped)} record(s) skipped:**\n" + "\n".join(lines + more)
    return summary, ranking, bars, skipped


def _gallery(session: DatasetSession, order: np.ndarray, record_maps, overlay: bool) -> list[tuple[np.ndarray, str]]:
    """(image, caption) of the images at `order`: the selected head's map over each (when `overlay`;
    `record_maps(record, config)` runs the model again on the images not yet shown) and the key object's outline."""
    layer, head = session.selected
    images = [session.analysis.images[i] for i in order]
    missing = {image.id for image in images} - session.shown.keys()
    if missing:
        if not (session.folder / INDEX).is_file():
            raise InputError("this dataset's files were cleaned up after a long idle time; score it again")
        for record in read_dataset(session.folder, limit=session.analysis.config.limit, skip_ids=_AllBut(missing)):
            if record.id in missing:  # a duplicate id was scored once: its first record
                session.shown[record.id] = (record, None)
                missing.discard(record.id)
        for stale in list(session.shown)[: max(0, len(session.shown) - SHOWN_KEPT)]:
            if stale not in {image.id for image in images}:
                del session.shown[stale]
    items = []
    for image in images:
        record, maps = session.shown[image.id]
        if overlay and maps is None:
            maps = record_maps(record, session.analysis.config.record_analysis(record))  # exactly as it was scored
            session.shown[image.id] = (record, maps)
        head_map = maps[layer, head] if overlay else None
        picture = map_overlay(np.asarray(record.image.convert("RGB")), head_map, record.mask, min_side=192)
        items.append((picture, f"HI {image.hi[layer, head]:.2f} · {image.id}"))
    return items


def _head_views(session: DatasetSession, overlay: bool, record_maps) -> tuple:
    """The heatmap with the selected head outlined, its line of numbers, and its best/worst images."""
    analysis = session.analysis
    layers, heads = analysis.hi.shape
    layer, head = session.selected
    per_image = analysis.image_hi[:, layer, head]  # (images,)
    best = np.argsort(-per_image, kind="stable")[:GALLERY_SIZE]
    worst = np.argsort(per_image, kind="stable")[:GALLERY_SIZE]
    described = (
        f"**Layer {layer}, head {head}:** mean HI {analysis.hi[layer, head]:.3f} "
        f"(interval {analysis.hi_low[layer, head]:.3f}–{analysis.hi_high[layer, head]:.3f}), mass {analysis.mass[layer, head]:.3f}; "
        f"HI {per_image.min():.2f}–{per_image.max():.2f} over the images"
        + (" (the head's attention over each image, the key object outlined)" if overlay else " (the key object outlined)")
    )
    return (
        hi_cells(analysis.hi, heatmap_cell_px(layers, heads), session.selected),
        described,
        layer,
        head,
        _gallery(session, best, record_maps, overlay),
        _gallery(session, worst, record_maps, overlay),
    )


def _dataset_downloads(session: DatasetSession) -> list[str]:
    analysis = session.analysis
    analysis.save_json(session.run_folder / "dataset_scores.json")
    analysis.save_csv(session.run_folder / "images.csv")
    return [str(session.run_folder / "dataset_scores.json"), str(session.run_folder / "images.csv")]


def _clicked_head(event: gr.SelectData, hi: np.ndarray) -> tuple[int, int]:
    """The (layer, head) of the heatmap cell a click landed on (the image `hi_cells` drew)."""
    x, y = event.index
    layers, heads = hi.shape
    cell = heatmap_cell_px(layers, heads)
    return min(int(y) // cell, layers - 1), min(int(x) // cell, heads - 1)


def _dataset_folder(source: str, archive: str | None, run_folder: Path) -> tuple[Path, str]:
    """The folder of the chosen dataset (an upload is unpacked and checked into `run_folder`) and its name in the page."""
    if source == UPLOADED_ZIP:
        folder = extract_dataset_zip(archive, run_folder / "dataset")
        check_record_paths(folder)
        return folder, f"`{Path(archive).name}`"
    if source == SYNTHETIC:
        return _synthetic_set(), f"the synthetic scenes ({SYNTHETIC_SCENES}, reading order)"
    return EXAMPLES_DIR, "the demo set"


# --- the Fine-tune tab ----------------------------------------------------------------------------

SYNTHETIC_SCENES = 200  # scenes captioned in reading order: a shift the demo model learns (docs/compare-demo.md)
RANKING_LIMIT = 200  # records scored when a run ranks the layers itself
EVAL_LIMIT = 200  # held-out records captioned before and after tuning
LIVE_REFRESH_S = 0.5  # how often a running fine-tune updates the page
LOSS_POINTS = 1000  # at most this many points (+ the last) in the loss plot; run.json keeps every step
_synthetic_lock = threading.Lock()


def _synthetic_set() -> Path:
    """The generated reading-order scenes (same seed, same files), written once and shared by sessions."""
    folder = UNPACKED / f"synthetic-reading-{SYNTHETIC_SCENES}"
    with _synthetic_lock:
        if not (folder / INDEX).is_file():  # data.jsonl is written last
            write_synthetic(folder, SYNTHETIC_SCENES, seed=1, order="reading")
    return folder


def _layer_ranking(scored: DatasetSession | None, load: LoadConfig, folder: Path, name: str, loaded: LoadedModel) -> Ranking:
    """Layers by dataset HI: the Dataset tab's scores when this session scored the same records (the same
    data.jsonl) with the same model there; else scored now (default options, at most RANKING_LIMIT records)."""
    try:
        same = scored is not None and scored.load == load and (scored.folder / INDEX).read_bytes() == (folder / INDEX).read_bytes()
    except OSError:  # the Dataset tab's files were cleaned up
        same = False
    if same:
        return Ranking.from_scores(scored.analysis.layer_scores,
                                   f"the Dataset tab's scores of {scored.name} ({len(scored.analysis.images)} images)")
    ranking = dataset_ranking(loaded, folder, limit=RANKING_LIMIT)
    return dataclasses.replace(ranking, source=f"dataset HI of {name}, scored for this run (default options, at most {RANKING_LIMIT} records)")


@dataclass
class FinetuneSession:
    """One browser session's last finished fine-tune (in `gr.State`); `run_folder` is removed with it."""

    load: LoadConfig  # the base model
    dataset: str  # the dataset's name in the page
    ranking: Ranking | None  # what top/bottom chose from
    before: RunRecord  # the model as it is, on the held-out records
    after: RunRecord  # the tuned model, on the same records
    run_folder: Path  # adapter/ (peft adapter, run.json, captions), its zip, pretrained/, an unpacked upload

    @property
    def adapter(self) -> Path:
        return self.run_folder / "adapter"

    @property
    def archive(self) -> Path:
        return self.run_folder / "lora-adapter.zip"

    def remove_files(self) -> None:
        shutil.rmtree(self.run_folder, ignore_errors=True)


@dataclass
class _Live:
    """A running fine-tune as the page shows it: written by the worker thread, read by the page's loop."""

    steps: int
    stage: str = "starting"
    losses: list[float] = field(default_factory=list)  # (steps done,)
    started: float = field(default_factory=time.monotonic)


def _finetune_job(load: LoadConfig, config: FinetuneConfig, source: str, archive: str | None, run_folder: Path,
                  scored: DatasetSession | None, live: _Live, stop: threading.Event) -> FinetuneSession:
    """One run (in a worker thread): the dataset, a private copy of the model (so the explorer's cached
    model never carries LoRA, and keeps serving), the ranking, the untuned baseline, LoRA, the zip."""

    def stage(text: str) -> None:
        if stop.is_set():
            raise TrainingCancelled("cancelled before training started")
        live.stage = text

    def on_step(step: int, loss: float) -> None:
        live.losses.append(loss)
        if step == config.steps:
            live.stage = "captioning the held-out records with the tuned model"

    stage("unpacking the zip" if source == UPLOADED_ZIP else "preparing the dataset")
    folder, name = _dataset_folder(source, archive, run_folder)
    stage("loading a private copy of the model")
    loaded = load_model(load)
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    # a bad k or layer list fails now, before the slow steps (any ranking of the right size checks them)
    select_layers(config.layers, layers, config.k, Ranking.from_scores(np.zeros(layers), "check"), config.seed)
    ranking = None
    if needs_ranking(config.layers):
        stage("ranking the layers by dataset HI")
        ranking = _layer_ranking(scored, load, folder, name, loaded)
    split = split_dataset(folder, config.data)
    stage(f"captioning the {len(split.held_out)} held-out record(s) with the model as it is")
    before = run_pretrained(loaded, folder, run_folder / "pretrained", config.data, split=split)
    stage("training")
    after = run_finetune(loaded, folder, run_folder / "adapter", config, ranking, callbacks=TrainCallbacks(on_step, stop.is_set), split=split)
    session = FinetuneSession(load, name, ranking, before, after, run_folder)
    shutil.make_archive(str(session.archive.with_suffix("")), "zip", root_dir=session.adapter)
    return session


def _progress(done: int, steps: int) -> str:
    return f'\n\n<progress value="{done}" max="{steps}" style="width: 100%"></progress>'


def _live_status(live: _Live, stop: threading.Event) -> str:
    done = len(live.losses)
    line = f"**{'Cancelling' if stop.is_set() else live.stage.capitalize()}...**"
    if done:
        line += f" · step {done} of {live.steps} · loss {live.losses[-1]:.3f}"
    return f"{line} · {time.monotonic() - live.started:.0f} s" + _progress(done, live.steps)


def _loss_frame(losses: list[float]) -> pd.DataFrame:
    """(step, loss) rows for the live plot: every step, or every n-th and the last beyond LOSS_POINTS steps."""
    steps = np.arange(1, len(losses) + 1)
    if len(losses) > LOSS_POINTS:
        steps = np.unique(np.append(steps[:: -(-len(losses) // LOSS_POINTS)], len(losses)))
    return pd.DataFrame({"step": steps, "loss": np.asarray(losses, dtype=float)[steps - 1]})


def _tuned_views(session: FinetuneSession) -> tuple:
    """The status line, the metrics table, the summary, the adapted layers, sample captions, the zip."""
    before, after, ranking = session.before, session.after, session.ranking
    config = after.settings["config"]
    status = (f"**Finished:** {len(after.losses)} steps, final loss {after.losses[-1]:.3f}, "
              f"{after.timings['train_seconds']:.1f} s of training" + _progress(len(after.losses), len(after.losses)))
    metrics = [[label, *(round(value, 4) for value in (before.metrics[key], after.metrics[key], after.metrics[key] - before.metrics[key]))]
               for key, label in METRICS.items() if key in before.metrics and key in after.metrics]
    how = {"top": f"the top {config['k']} by HI", "bottom": f"the bottom {config['k']} by HI", "all": "every layer",
           "random": f"{config['k']} drawn at random, seed {config['seed']}", "list": "chosen by hand"}[after.strategy]
    summary = (
        f"**Tuned** `{session.load.model}` on {session.dataset}: LoRA rank {config['rank']} on layer(s) "
        f"{', '.join(map(str, after.layers))} of {after.num_layers} ({how}) · **trainable parameters** "
        f"{after.trainable_parameters:,} of {after.total_parameters:,} ({100 * after.trainable_share:.3g}%)  \n"
        + (f"**Ranking:** {ranking.source}  \n" if ranking is not None else "")
        + f"**Captioned before and after:** {after.split['held_out']} held-out record(s); trained on {after.split['train']}. "
        + " ".join(note.rstrip(".") + "." for note in after.metric_notes)
    )
    selected = np.zeros((1, after.num_layers), bool)  # (runs, layers)
    selected[0, after.layers] = True
    scores = None
    if ranking is not None:
        scores = np.zeros(after.num_layers)
        scores[list(ranking.layers)] = ranking.scores
    layers = figure_to_array(layer_choices(selected, [after.strategy], scores, title="Adapted layers (bars: layer scores)"))
    untuned = {caption["id"]: caption["generated"] for caption in before.samples}
    samples = [[c["id"], c["reference"], untuned.get(c["id"], ""), c["generated"]] for c in after.samples]
    return status, metrics, summary, layers, samples, str(session.archive)


TUNED = "fine-tune: "  # the LoRA box's value for this session's tuned adapter (the run's name, never its path)


def build_demo(default_model: str = "demo", cache: ModelCache | None = None, settings: Settings | None = None) -> gr.Blocks:
    """The explorer's UI; `cache` holds loaded models across sessions; `settings` says what a visitor may
    do (default: open, as for a local user)."""
    cache = cache or ModelCache()
    settings = settings or Settings()
    storage = RunStorage(UNPACKED, settings.max_run_storage_mb, UNPACKED_TTL_S)
    examples = _examples()

    def model_config(model_name: str, device: str, lora: str | None = "", tuned: FinetuneSession | None = None) -> LoadConfig:
        """The model to load, as the deployment allows: the allow-list when public; a LoRA adapter is this
        session's fine-tune (`TUNED` + its run name) or, locally, any adapter folder."""
        lora = (lora or "").strip()
        if lora.startswith(TUNED):
            if tuned is None or lora != TUNED + tuned.run_folder.name or not tuned.adapter.is_dir():
                raise InputError("that tuned model is not this session's latest fine-tune (or its files were cleaned up)")
            lora = str(tuned.adapter)
        elif lora and settings.public:
            raise InputError("this deployment applies only the adapter of this session's fine-tune (its 'Use the tuned model')")
        return LoadConfig(model=settings.check_model(model_name), device=device, lora=lora or None)

    def get_model(config: LoadConfig, progress: gr.Progress | None = None) -> LoadedModel:
        """A loaded model from the cache (in this process, never in a GPU worker); a load waits its turn."""
        def waiting(position: int) -> None:
            if progress is not None:
                progress(0.05, desc=f"waiting for {position} other model load(s) to finish")
        if progress is not None and config not in cache:
            progress(0.1, desc=f"loading {config.model}")
        return cache.get(config, on_wait=waiting)

    @on_gpu(GPU_SECONDS)
    def gpu_analyze(config: LoadConfig, image: np.ndarray, mask: np.ndarray, text: str | None,
                    analysis_config: AnalysisConfig) -> ImageAnalysis:
        """The model's work for one image (on a ZeroGPU Space: in the GPU worker; the model was loaded before)."""
        return analyze_image(cache.get(config), Image.fromarray(image), mask, text, analysis_config)

    def record_maps(config: LoadConfig):
        """The gallery's model run: one dataset record's head maps, (layers, heads, gh, gw)."""
        def maps(record: Record, analysis_config: AnalysisConfig) -> np.ndarray:
            get_model(config)
            return gpu_analyze(config, np.asarray(record.image), record.mask, record.text, analysis_config).maps
        return maps

    @on_gpu(GPU_SECONDS_DATASET)
    def gpu_score_dataset(config: LoadConfig, folder: Path, dataset_config: DatasetConfig, progress) -> DatasetAnalysis:
        return score_dataset(cache.get(config), folder, dataset_config, progress=progress)

    def scoring(binarize: str, quantile: float, layer_score: str) -> ScoringConfig:
        return ScoringConfig(binarize=binarize, quantile=float(quantile), layer_score=layer_score)

    def shown(name: str) -> str:
        """A model's name as the page shows it: in public, without the server's paths (a tuned model's adapter)."""
        return scrub_paths(name) if settings.public else name

    def loaded_message(loaded: LoadedModel) -> str:
        return f"Loaded `{shown(loaded.name)}`: {loaded.family}, {len(loaded.adapter.decoder_layers(loaded.model))} language-model layers."

    @_input_error
    def load(model_name: str, device: str, lora: str = "", tuned: FinetuneSession | None = None, progress=gr.Progress()):
        return loaded_message(get_model(model_config(model_name, device, lora, tuned), progress))

    def pick_example(event: gr.SelectData):
        example = examples[event.index]
        layer = np.zeros(example["image"].shape[:2] + (4,), np.uint8)
        return {"background": example["image"], "layers": [layer], "composite": example["image"]}, example["text"], example["key_phrase"], None

    @_input_error
    def propose_mask(editor: dict | None):
        image = _background(editor)
        hint = painted_mask(list(editor.get("layers") or []), (image.shape[1], image.shape[0]))
        proposal = grabcut_mask(Image.fromarray(image), hint)
        layer = np.zeros(image.shape[:2] + (4,), np.uint8)
        layer[proposal] = (255, 0, 0, 255)
        return {"background": image, "layers": [layer], "composite": image}, mask_overlay(image, proposal)

    @_input_error
    def preview_mask(editor: dict | None, uploaded_mask: str | None):
        image, mask = _mask_from_inputs(editor, uploaded_mask, settings.max_image_pixels)
        return mask_overlay(image, mask)

    @_input_error
    def analyze(model_name, device, editor, uploaded_mask, text, generate, key_phrase, prompt, queries,
                binarize, quantile, layer_score, top_n, layer, top_k, lora="", previous: Session | None = None,
                tuned: FinetuneSession | None = None, progress=gr.Progress()):
        load_config = model_config(model_name, device, lora, tuned)
        image, mask = _mask_from_inputs(editor, uploaded_mask, settings.max_image_pixels)
        config = AnalysisConfig(
            prompt=prompt or "Describe the image.",
            key_phrase=key_phrase or None,
            queries=queries,
            scoring=scoring(binarize, quantile, layer_score),
        )
        if not generate and not (text or "").strip():
            raise InputError("type the description to score, or tick 'generate'")
        get_model(load_config, progress)
        progress(0.5, desc="capturing attention")
        analysis = gpu_analyze(load_config, image, mask, None if generate else text, config)
        analysis = dataclasses.replace(analysis, model=shown(analysis.model))
        folder = previous.folder if previous is not None else storage.new_session_folder()
        session = Session(analysis=analysis, image=image, mask=mask, selected=analysis.ranked_heads()[0], folder=folder)
        views = _views(session, int(top_n), int(layer), int(top_k))
        return (session, mask_overlay(image, mask), *views, _downloads(session, views))

    @_input_error
    def select_cell(session: Session | None, top_n, layer, top_k, event: gr.SelectData):
        if session is None:
            raise InputError("run an analysis first")
        session.selected = _clicked_head(event, session.analysis.hi)
        return (session, *_views(session, int(top_n), int(layer), int(top_k)))

    @_input_error
    def select_head(session: Session | None, selected_layer, selected_head, top_n, layer, top_k):
        if session is None:
            raise InputError("run an analysis first")
        layers, heads = session.analysis.hi.shape
        session.selected = (int(np.clip(selected_layer, 0, layers - 1)), int(np.clip(selected_head, 0, heads - 1)))
        return (session, *_views(session, int(top_n), int(layer), int(top_k)))

    @_input_error
    def rescore(session: Session | None, binarize, quantile, layer_score, top_n, layer, top_k):
        if session is None:  # options changed before any analysis: nothing to redraw
            return tuple(gr.skip() for _ in range(11))
        session.analysis = session.analysis.rescored(scoring(binarize, quantile, layer_score))
        views = _views(session, int(top_n), int(layer), int(top_k))
        return (session, *views, _downloads(session, views))

    @_input_error
    def score_set(session: DatasetSession | None, model_name, device, source, archive, batch_size, limit, prompt, queries,
                  binarize, quantile, layer_score, use_key_phrases, top_k, overlay, lora="",
                  tuned: FinetuneSession | None = None, progress=gr.Progress()):
        load_config = model_config(model_name, device, lora, tuned)
        limit = settings.dataset_limit(int(limit or 0) or None)
        settings.check_batch_size(int(batch_size))
        config = DatasetConfig(
            analysis=AnalysisConfig(prompt=prompt or "Describe the image.", queries=queries,
                                    scoring=scoring(binarize, quantile, layer_score)),
            use_key_phrases=bool(use_key_phrases), batch_size=int(batch_size), limit=limit,
        )
        if source == UPLOADED_ZIP and not archive:
            raise InputError("upload a dataset .zip first, or choose the demo set")
        with storage.run() as run_folder:
            try:
                progress(0, desc="unpacking the zip" if source == UPLOADED_ZIP else "reading the dataset")
                folder, name = _dataset_folder(source, archive, run_folder)
                get_model(load_config, progress)
                analysis = gpu_score_dataset(load_config, folder, config,
                                             lambda done, total: progress((done, total), desc="scoring", unit="images"))
                analysis = dataclasses.replace(analysis, model=shown(analysis.model), dataset=shown(analysis.dataset))
                fresh = DatasetSession(analysis, name, folder, run_folder, load_config, selected=analysis.ranked_heads()[0])
                views = (*_dataset_views(fresh, int(top_k)), *_head_views(fresh, bool(overlay), record_maps(load_config)))
            except BaseException:
                shutil.rmtree(run_folder, ignore_errors=True)
                raise
        _forget(session)  # the previous run's files, now that this one stands
        return (fresh, *views, _dataset_downloads(fresh))

    @_input_error
    def select_dataset_cell(session: DatasetSession | None, overlay, event: gr.SelectData):
        if session is None:
            raise InputError("score a dataset first")
        session.selected = _clicked_head(event, session.analysis.hi)
        return (session, *_head_views(session, bool(overlay), record_maps(session.load)))

    @_input_error
    def select_dataset_head(session: DatasetSession | None, selected_layer, selected_head, overlay):
        if session is None:
            raise InputError("score a dataset first")
        layers, heads = session.analysis.hi.shape
        session.selected = (int(np.clip(selected_layer, 0, layers - 1)), int(np.clip(selected_head, 0, heads - 1)))
        return (session, *_head_views(session, bool(overlay), record_maps(session.load)))

    def redraw_bars(session: DatasetSession | None, top_k):
        return gr.skip() if session is None else _dataset_views(session, int(top_k))[2]

    stops: dict[str, threading.Event] = {}  # session -> the stop flag of its running fine-tune

    @_input_error  # not on a ZeroGPU worker: training outlasts a free visitor's GPU quota; it runs on this machine
    def finetune(previous: FinetuneSession | None, scored: DatasetSession | None, model_name, device, source, archive,
                 strategy, layer_list, k, rank, steps, lr, batch_size, seed, meteor=True, request: gr.Request = None):
        if strategy == "list" and not (layer_list or "").strip():
            raise InputError("type the layers to tune, e.g. 0,2")
        config = FinetuneConfig(layers=layer_list if strategy == "list" else strategy, k=int(k or 0), rank=int(rank or 0),
                                steps=int(steps or 0), lr=float(lr or 0), batch_size=int(batch_size or 0), seed=int(seed or 0),
                                data=DataConfig(eval_limit=EVAL_LIMIT, meteor=bool(meteor)))
        settings.check_finetune(config)
        if source == UPLOADED_ZIP and not archive:
            raise InputError("upload a dataset .zip first, or choose another dataset")
        load = model_config(model_name, device)
        stop = stops[request.session_hash] = threading.Event()
        live, fresh = _Live(config.steps), None
        with storage.run() as run_folder:
            worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="finetune")
            job = worker.submit(_finetune_job, load, config, source, archive, run_folder, scored, live, stop)
            try:
                while not job.done():
                    concurrent.futures.wait([job], timeout=LIVE_REFRESH_S)
                    yield gr.skip(), _live_status(live, stop), _loss_frame(live.losses), *(gr.skip(),) * 6
                fresh = job.result()  # re-raises the job's error
            except TrainingCancelled as cancelled:
                done = len(live.losses)
                kept = " (below: the last finished run)" if previous is not None else ""
                yield (gr.skip(), f"**{str(cancelled).capitalize()}**: nothing was saved{kept}." + _progress(done, config.steps),
                       _loss_frame(live.losses), *(gr.skip(),) * 6)
            finally:
                stop.set()  # the page was closed, or the job failed: training stops at its next step
                worker.shutdown(wait=True)
                if stops.get(request.session_hash) is stop:
                    del stops[request.session_hash]
                if fresh is None:
                    shutil.rmtree(run_folder, ignore_errors=True)
        if fresh is not None:
            _forget(previous)  # the previous run's files, now that this one stands
            status, *views = _tuned_views(fresh)
            yield fresh, status, _loss_frame(fresh.after.losses), *views, gr.Button(interactive=True)

    def cancel_finetune(request: gr.Request):
        stop = stops.get(request.session_hash)
        if stop is None:
            gr.Warning("Nothing is training in this session.")
        else:
            stop.set()  # read by the training loop before its next step

    @_input_error
    def use_tuned_model(session: FinetuneSession | None, progress=gr.Progress()):
        if session is None:
            raise InputError("fine-tune a model first")
        lora = TUNED + session.run_folder.name
        loaded = get_model(model_config(session.load.model, session.load.device, lora, session), progress)
        return session.load.model, session.load.device, lora, loaded_message(loaded), gr.Tabs(selected="explorer")

    # Gradio's upload cache (uploads, and copies of the files handlers return) is swept of old files.
    with gr.Blocks(title="HI Explorer", delete_cache=(settings.cache_ttl_s, settings.cache_ttl_s)) as demo:
        state = gr.State(None, delete_callback=_forget)
        dataset_state = gr.State(None, delete_callback=_forget)
        finetune_state = gr.State(None, delete_callback=_forget)
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Explorer", id="explorer"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=340):
                        with gr.Group():
                            with gr.Row():
                                if settings.public:  # a visitor picks from the allow-list; nothing else is loaded
                                    model_name = gr.Dropdown(list(settings.allowed_models), value=settings.check_model(default_model),
                                                             label="Model", scale=3, elem_id="model")
                                else:
                                    model_name = gr.Textbox(default_model, label="Model: demo, a Hub id or a local folder", scale=3,
                                                            elem_id="model")
                                device = gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="Device", scale=1, min_width=90)
                            lora_folder = gr.Textbox(
                                "", label="LoRA adapter: merged into the model" + (" (optional: a peft folder)" if not settings.public else ""),
                                placeholder="set by the Fine-tune tab's 'Use the tuned model'", elem_id="lora",
                                interactive=not settings.public)
                            load_button = gr.Button("Load model", size="sm")
                            model_status = gr.Markdown("The embedded `demo` model is loaded on first use.", elem_id="model-status")
                        editor = bounded_image_editor(
                            max_pixels=settings.max_image_pixels,
                            max_side=settings.max_image_side,
                            label="Image: upload one or pick an example, then paint the key object",
                            type="numpy",
                            sources=["upload", "clipboard"],
                            brush=gr.Brush(colors=["#ff0000"], default_size=6, color_mode="fixed"),
                            eraser=gr.Eraser(default_size=8),
                            transforms=(),
                            layers=False,
                            height=420,
                            elem_id="editor",
                        )
                        if examples:
                            gallery = gr.Gallery(
                                [e["image"] for e in examples], label="Examples (click one)", columns=8, height=110,
                                allow_preview=False, elem_id="examples",
                            )
                        with gr.Row():
                            grabcut_button = gr.Button("Propose mask from my box/scribble (GrabCut)", size="sm")
                            uploaded_mask = gr.File(label="...or upload a mask PNG", file_types=["image"], type="filepath", height=80)
                        mask_view = gr.Image(label="Key-object mask", interactive=False, height=160, elem_id="mask-view")
                        text = gr.Textbox(label="Description to score", lines=2, elem_id="description")
                        with gr.Row():
                            generate = gr.Checkbox(label="Generate the description with the model instead")
                            key_phrase = gr.Textbox(label="Key phrase (optional)", elem_id="key-phrase")
                        with gr.Accordion("Options", open=False):
                            prompt = gr.Textbox("Describe the image.", label="Prompt")
                            queries = gr.Radio(["producing", "reading"], value="producing", label="Query rows")
                            binarize = gr.Radio(["area", "quantile", "otsu"], value="area", label="Binarization")
                            quantile = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Quantile (for quantile binarization)")
                            layer_score = gr.Radio(["max", "mean", "topn"], value="max", label="Layer score")
                            top_k = gr.Slider(1, 16, value=4, step=1, label="Top-k layers to highlight (LoRA's k)")
                            top_n = gr.Slider(1, 32, value=8, step=1, label="Top-N heads to show")
                        analyze_button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                    with gr.Column(scale=3):
                        summary = gr.Markdown("Results appear here.", elem_id="summary")
                        with gr.Row():
                            heatmap = gr.Image(label="HI per head (rows: layers, columns: heads); click a cell", interactive=False,
                                               elem_id="heatmap", height=260, buttons=["download"])
                            head_view = gr.Image(label="Selected head over the image, and the object patches", interactive=False,
                                                 elem_id="head-view", height=260, buttons=["download"])
                        with gr.Row():
                            selected_layer = gr.Number(label="Layer", precision=0, value=0, minimum=0)
                            selected_head = gr.Number(label="Head", precision=0, value=0, minimum=0)
                            show_head = gr.Button("Show head", size="sm")
                        with gr.Tabs():
                            with gr.Tab("Top heads"):
                                top_view = gr.Image(interactive=False, show_label=False, elem_id="top-heads")
                            with gr.Tab("One layer"):
                                layer = gr.Number(label="Layer to show", precision=0, value=0, minimum=0)
                                layer_view = gr.Image(interactive=False, show_label=False, elem_id="layer-view")
                            with gr.Tab("Ranking"):
                                ranking = gr.Dataframe(headers=["layer", "head", "HI", "mass"], interactive=False, elem_id="ranking")
                            with gr.Tab("Layers"):
                                bars = gr.Image(interactive=False, show_label=False, elem_id="layer-bars")
                        downloads = gr.File(label="Downloads: scores (JSON, CSV) and figures (PNG)", file_count="multiple", elem_id="downloads")
            with gr.Tab("Dataset", id="dataset"):
                gr.Markdown(
                    "Score every head over a dataset: mean HI with its interval over the images, the layer scores, and "
                    "the images where a chosen head scores best and worst. The model is the one chosen in the Explorer tab. "
                    "A dataset .zip holds `data.jsonl` (one `{\"id\", \"image\", \"mask\", \"text\", \"key_phrase\"}` "
                    "per line, paths relative to it) with its images and mask PNGs, at its root or in one top folder."
                )
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        source = gr.Radio([(f"demo set ({len(examples)} scenes)", DEMO_SET), ("uploaded .zip", UPLOADED_ZIP)],
                                          value=DEMO_SET, label="Dataset", elem_id="ds-source")
                        archive = gr.File(label="Dataset .zip", file_types=[".zip"], type="filepath", elem_id="ds-zip")
                        with gr.Accordion("Options", open=False):
                            ds_batch_size = gr.Slider(1, 32, value=8, step=1, label="Batch size (images per forward pass)")
                            cap = settings.max_dataset_images
                            ds_limit = gr.Number(
                                cap or 0, precision=0, minimum=0,
                                label=f"Max images (0: all{f'; at most {cap} here' if cap else ''})",
                            )
                            ds_prompt = gr.Textbox("Describe the image.", label="Prompt")
                            ds_key_phrases = gr.Checkbox(True, label="Score each record's key-phrase tokens (else every token)")
                            ds_queries = gr.Radio(["producing", "reading"], value="producing", label="Query rows")
                            ds_binarize = gr.Radio(["area", "quantile", "otsu"], value="area", label="Binarization")
                            ds_quantile = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="Quantile (for quantile binarization)")
                            ds_layer_score = gr.Radio(["max", "mean", "topn"], value="max", label="Layer score")
                            ds_top_k = gr.Slider(1, 16, value=4, step=1, label="Top-k layers to highlight (LoRA's k)")
                        ds_overlay = gr.Checkbox(True, label="Show the head's attention on the gallery images (runs the model on them)")
                        score_button = gr.Button("Score dataset", variant="primary", elem_id="ds-score")
                    with gr.Column(scale=3):
                        ds_summary = gr.Markdown("Scores appear here.", elem_id="ds-summary")
                        ds_skipped = gr.Markdown(elem_id="ds-skipped")
                        with gr.Row():
                            ds_heatmap = gr.Image(label="Mean HI (rows: layers, columns: heads): click a cell",
                                                  interactive=False, elem_id="ds-heatmap", height=260, buttons=["download"])
                            ds_bars = gr.Image(label="Layer scores", show_label=False, interactive=False, elem_id="ds-layer-bars",
                                               height=260, buttons=["download"])
                        with gr.Row():
                            ds_layer = gr.Number(label="Selected layer", precision=0, value=0, minimum=0)
                            ds_head = gr.Number(label="Selected head", precision=0, value=0, minimum=0)
                            ds_show_head = gr.Button("Show head", size="sm")
                        ds_head_summary = gr.Markdown(elem_id="ds-head")
                        ds_best = gr.Gallery(label=f"Best {GALLERY_SIZE} images for the head (highest HI first)",
                                             columns=GALLERY_SIZE, rows=1, height=240, elem_id="ds-best")
                        ds_worst = gr.Gallery(label=f"Worst {GALLERY_SIZE} images for the head (lowest HI first)",
                                              columns=GALLERY_SIZE, rows=1, height=240, elem_id="ds-worst")
                        ds_ranking = gr.Dataframe(headers=["layer", "head", "mean HI", "HI low", "HI high", "mass"],
                                                  interactive=False, elem_id="ds-ranking", max_height=400)
                        ds_downloads = gr.File(label="Downloads: dataset scores (JSON), per-image HI (CSV)",
                                               file_count="multiple", elem_id="ds-downloads")
            with gr.Tab("Fine-tune", id="finetune"):
                gr.Markdown(
                    "Tune LoRA on chosen language-model layers of the model named in the Explorer tab (without its adapter), then "
                    "caption the held-out records (a hashed 20% of the dataset) before and after. `top`/`bottom` take the layers "
                    "by dataset HI: the Dataset tab's scores if you scored the same dataset there with the same model, else "
                    "scored when the run starts. The defaults suit the demo model (3 layers): the synthetic scenes are captioned "
                    "in reading order, which it learns in about 100 steps. Training uses a private copy of the model; the "
                    "explorer keeps serving meanwhile."
                )
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        ft_source = gr.Radio([(f"synthetic scenes (reading-order captions, N={SYNTHETIC_SCENES})", SYNTHETIC),
                                              (f"demo set ({len(examples)} scenes)", DEMO_SET), ("uploaded .zip", UPLOADED_ZIP)],
                                             value=SYNTHETIC, label="Dataset", elem_id="ft-source")
                        ft_archive = gr.File(label="Dataset .zip", file_types=[".zip"], type="filepath", height=120, elem_id="ft-zip")
                        ft_strategy = gr.Radio([("top-k by HI", "top"), ("bottom-k by HI", "bottom"), ("random k", "random"),
                                                ("all", "all"), ("these:", "list")], value="top", label="Layers to tune",
                                               elem_id="ft-strategy")
                        ft_layer_list = gr.Textbox(label="Layers for 'these:' (indices like 0,2)", elem_id="ft-layer-list")
                        with gr.Row():
                            ft_k = gr.Number(1, precision=0, minimum=1, label="k (layers)", min_width=90, elem_id="ft-k")
                            ft_rank = gr.Number(8, precision=0, minimum=1, label="LoRA rank", min_width=90, elem_id="ft-rank")
                            ft_steps = gr.Number(100, precision=0, minimum=1, label="Steps", min_width=90, elem_id="ft-steps")
                        with gr.Row():
                            ft_lr = gr.Number(2e-3, label="Learning rate", min_width=90, elem_id="ft-lr")
                            ft_batch_size = gr.Number(16, precision=0, minimum=1, label="Batch size", min_width=90, elem_id="ft-batch-size")
                            ft_seed = gr.Number(0, precision=0, minimum=0, label="Seed", min_width=90, elem_id="ft-seed")
                        ft_meteor = gr.Checkbox(True, label="METEOR too (needs Java; ~5 s per evaluation)", elem_id="ft-meteor")
                        with gr.Row():
                            ft_launch = gr.Button("Launch fine-tune", variant="primary", elem_id="ft-launch")
                            ft_cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
                    with gr.Column(scale=3):
                        ft_status = gr.Markdown("Progress appears here.", elem_id="ft-status")
                        ft_loss = gr.LinePlot(x="step", y="loss", title="Training loss", height=220, elem_id="ft-loss")
                        ft_summary = gr.Markdown(elem_id="ft-summary")
                        ft_metrics = gr.Dataframe(headers=["metric", "before", "after", "change"], interactive=False,
                                                  label="Held-out caption metrics", elem_id="ft-metrics")
                        ft_samples = gr.Dataframe(headers=["id", "reference", "before", "after"], interactive=False, wrap=True,
                                                  column_widths=["16%", "28%", "28%", "28%"],
                                                  label="Sample captions", elem_id="ft-samples")
                        ft_layers = gr.Image(label="Adapted layers", interactive=False, height=200, elem_id="ft-layers")
                        with gr.Row():
                            ft_download = gr.File(label="The adapter (peft) with run.json, zipped", elem_id="ft-download")
                            ft_use = gr.Button("Use the tuned model in the Explorer", interactive=False, elem_id="ft-use")

        views = [summary, heatmap, head_view, top_view, layer_view, ranking, bars, selected_layer, selected_head]
        load_button.click(load, [model_name, device, lora_folder, finetune_state], model_status, api_name="load_model")
        if examples:
            # Progress shows on the description, not the editor: Gradio 6.31 updates an editor's progress only
            # after reading its value, which can hang while a new image loads (a blank editor, "processing" forever).
            gallery.select(pick_example, None, [editor, text, key_phrase, uploaded_mask], api_name=False,
                           show_progress_on=[text])
        grabcut_button.click(propose_mask, editor, [editor, mask_view], api_name="propose_mask", show_progress_on=[mask_view])
        uploaded_mask.change(lambda e, m: preview_mask(e, m) if m else None, [editor, uploaded_mask], mask_view, api_name=False)
        analyze_button.click(
            analyze,
            [model_name, device, editor, uploaded_mask, text, generate, key_phrase, prompt, queries,
             binarize, quantile, layer_score, top_n, layer, top_k, lora_folder, state, finetune_state],
            [state, mask_view, *views, downloads],
            api_name="analyze",
        )
        heatmap.select(select_cell, [state, top_n, layer, top_k], [state, *views], api_name=False)
        show_head.click(select_head, [state, selected_layer, selected_head, top_n, layer, top_k], [state, *views], api_name="select_head")
        for box in (selected_layer, selected_head):
            box.submit(select_head, [state, selected_layer, selected_head, top_n, layer, top_k], [state, *views], api_name=False)
        layer.submit(select_head, [state, selected_layer, selected_head, top_n, layer, top_k], [state, *views], api_name=False)
        for option in (binarize, quantile, layer_score, top_k):
            option.change(rescore, [state, binarize, quantile, layer_score, top_n, layer, top_k], [state, *views, downloads], api_name=False)

        dataset_views = [ds_summary, ds_ranking, ds_bars, ds_skipped, ds_heatmap, ds_head_summary, ds_layer, ds_head, ds_best, ds_worst]
        head_views = dataset_views[4:]
        archive.upload(lambda: UPLOADED_ZIP, None, source, api_name=False)
        archive.clear(lambda: DEMO_SET, None, source, api_name=False)
        score_button.click(
            score_set,
            [dataset_state, model_name, device, source, archive, ds_batch_size, ds_limit, ds_prompt, ds_queries,
             ds_binarize, ds_quantile, ds_layer_score, ds_key_phrases, ds_top_k, ds_overlay, lora_folder, finetune_state],
            [dataset_state, *dataset_views, ds_downloads],
            api_name="score_dataset",
            concurrency_limit=1,  # one dataset at a time; the explorer keeps the other worker
        )
        ds_heatmap.select(select_dataset_cell, [dataset_state, ds_overlay], [dataset_state, *head_views], api_name=False)
        ds_show_head.click(select_dataset_head, [dataset_state, ds_layer, ds_head, ds_overlay], [dataset_state, *head_views],
                           api_name="select_dataset_head")
        for box in (ds_layer, ds_head):
            box.submit(select_dataset_head, [dataset_state, ds_layer, ds_head, ds_overlay], [dataset_state, *head_views], api_name=False)
        ds_overlay.change(select_dataset_head, [dataset_state, ds_layer, ds_head, ds_overlay], [dataset_state, *head_views], api_name=False)
        ds_top_k.change(redraw_bars, [dataset_state, ds_top_k], ds_bars, api_name=False)

        ft_archive.upload(lambda: UPLOADED_ZIP, None, ft_source, api_name=False)
        ft_archive.clear(lambda: SYNTHETIC, None, ft_source, api_name=False)
        ft_layer_list.input(lambda: "list", None, ft_strategy, api_name=False)
        ft_launch.click(
            finetune,
            [finetune_state, dataset_state, model_name, device, ft_source, ft_archive, ft_strategy, ft_layer_list, ft_k, ft_rank,
             ft_steps, ft_lr, ft_batch_size, ft_seed, ft_meteor],
            [finetune_state, ft_status, ft_loss, ft_metrics, ft_summary, ft_layers, ft_samples, ft_download, ft_use],
            api_name="finetune",
            concurrency_limit=1,  # one run at a time (each holds a private copy of the model)
            show_progress_on=[ft_status],
        )
        ft_cancel.click(cancel_finetune, None, None, api_name="cancel_finetune")
        ft_use.click(use_tuned_model, finetune_state, [model_name, device, lora_folder, model_status, tabs], api_name="use_tuned_model")
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve HI Explorer.")
    parser.add_argument("--host", help="address to bind (default: $GRADIO_SERVER_NAME, else loopback only; "
                                       "0.0.0.0 serves the network; a Space sets it)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument("--model", default="demo", help="the model selected at start (default: demo)")
    parser.add_argument("--public", action="store_true", help="apply the public deployment policy (automatic on a "
                                                              "Space): allow-listed models only, limits on uploads and runs")
    parser.add_argument("--allow-model", action="append", metavar="MODEL", help="add a model to the public allow-list (repeatable)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args)
        demo = build_demo(args.model, settings=settings)
    except InputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    # server_name/port None: Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0:7860)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=gr.themes.Soft(),
                max_file_size=settings.max_file_size)


if __name__ == "__main__":
    main()
