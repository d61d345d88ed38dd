"""The datasets the Dataset and Fine-tune tabs work on: the bundled demo set, an uploaded .zip (unpacked
and checked into the run's folder), or generated scenes (Fine-tune only): captioned in reading order for the
captioning task, one closed-form question each for the VQA task."""

from __future__ import annotations

import threading
from pathlib import Path

from hi_core.archives import check_record_paths, extract_dataset_zip
from hi_core.datasets import INDEX, write_synthetic
from hi_core.synth_vqa import write_synthetic_vqa

from .context import EXAMPLES_DIR, UNPACKED

DEMO_SET, UPLOADED_ZIP, SYNTHETIC = "demo", "zip", "synthetic"
SYNTHETIC_SCENES = 200  # scenes captioned in reading order: a shift the demo model learns (docs/compare-demo.md)
_synthetic_lock = threading.Lock()


def synthetic_set(task: str = "caption") -> Path:
    """The generated scenes of `task` (same seed, same files), written once and shared by sessions: captioned in
    reading order, or one closed-form question each (`vqa`)."""
    folder = UNPACKED / (f"synthetic-vqa-{SYNTHETIC_SCENES}" if task == "vqa" else f"synthetic-reading-{SYNTHETIC_SCENES}")
    with _synthetic_lock:
        if not (folder / INDEX).is_file():  # data.jsonl is written last
            if task == "vqa":
                write_synthetic_vqa(folder, SYNTHETIC_SCENES, seed=1)
            else:
                write_synthetic(folder, SYNTHETIC_SCENES, seed=1, order="reading")
    return folder


def dataset_folder(source: str, archive: str | None, run_folder: Path, task: str = "caption") -> tuple[Path, str]:
    """The folder of the chosen dataset (an upload is unpacked and checked into `run_folder`; generated scenes
    for `task`) and its name in the page."""
    if source == UPLOADED_ZIP:
        folder = extract_dataset_zip(archive, run_folder / "dataset")
        check_record_paths(folder)
        return folder, f"`{Path(archive).name}`"
    if source == SYNTHETIC and task == "vqa":
        return synthetic_set("vqa"), f"the synthetic scenes ({SYNTHETIC_SCENES}, one question each)"
    if source == SYNTHETIC:
        return synthetic_set(), f"the synthetic scenes ({SYNTHETIC_SCENES}, reading order)"
    return EXAMPLES_DIR, "the demo set"
