"""The datasets the Dataset and Fine-tune tabs work on: the bundled demo set, an uploaded .zip (unpacked
and checked into the run's folder), or generated scenes (Fine-tune only): captioned in reading order for the
captioning task, one closed-form question each for the VQA task.

An upload is held to the deployment's budget before anything reads it: unpacked only into room the run
storage reserves for it, its data.jsonl bounded in size and lines before it is scanned, and its records'
files decoded within the editor's limits (`record_limits`)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from pathlib import Path

from hi_core.base.errors import InputError
from hi_core.data.archives import check_record_paths, extract_dataset_zip
from hi_core.data.datasets import INDEX, check_index, write_synthetic
from hi_core.data.synth_vqa import write_synthetic_vqa
from hi_core.model.images import ImageLimits

from .context import EXAMPLES_DIR, UNPACKED
from .settings import Settings
from .storage import RunStorage

DEMO_SET, UPLOADED_ZIP, SYNTHETIC = "demo", "zip", "synthetic"
SYNTHETIC_SCENES = 200  # scenes captioned in reading order: a shift the demo model learns (docs/compare-demo.md)
_synthetic_lock = threading.Lock()


def synthetic_set(task: str = "caption") -> Path:
    """The generated scenes of `task` (same seed, same files), written once and shared by sessions: captioned in
    reading order, or one closed-form question each (`vqa`)."""
    folder = UNPACKED / (
        f"synthetic-vqa-{SYNTHETIC_SCENES}" if task == "vqa" else f"synthetic-reading-{SYNTHETIC_SCENES}"
    )
    with _synthetic_lock:
        if not (folder / INDEX).is_file():  # data.jsonl is written last
            if task == "vqa":
                write_synthetic_vqa(folder, SYNTHETIC_SCENES, seed=1)
            else:
                write_synthetic(folder, SYNTHETIC_SCENES, seed=1, order="reading")
    return folder


def record_limits(settings: Settings) -> ImageLimits:
    """How the app decodes a dataset record's files: as the image editor decodes an upload (the deployment's
    pixel cap, reduced to its side while decoding), so a batch of n records holds at most n x side^2 pixels."""
    return ImageLimits(max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)


def dataset_folder(
    source: str,
    archive: str | None,
    run_folder: Path,
    task: str = "caption",
    settings: Settings | None = None,
    storage: RunStorage | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Path, str]:
    """The folder of the chosen dataset (an upload is unpacked and checked into `run_folder`; generated scenes
    for `task`) and its name in the page. An upload is unpacked into room `storage` reserves in `run_folder`
    (the size its zip declares), and its data.jsonl checked against `settings`' size and line limits before it is
    scanned; `stop` is looked at while it is scanned (`Cancelled`)."""
    if source == UPLOADED_ZIP:
        if not archive:
            raise InputError("upload a dataset .zip first, or choose another dataset")
        settings = settings or Settings()
        reserve = None if storage is None else functools.partial(storage.reserve, run_folder)
        folder = extract_dataset_zip(archive, run_folder / "dataset", reserve)
        check_index(folder, settings.max_index_mb, settings.max_index_lines)
        check_record_paths(folder, stop)
        return folder, f"`{Path(archive).name}`"
    if source == SYNTHETIC and task == "vqa":
        return synthetic_set("vqa"), f"the synthetic scenes ({SYNTHETIC_SCENES}, one question each)"
    if source == SYNTHETIC:
        return synthetic_set(), f"the synthetic scenes ({SYNTHETIC_SCENES}, reading order)"
    return EXAMPLES_DIR, "the demo set"
