"""The datasets the Dataset and Fine-tune tabs work on: the bundled demo set, an uploaded .zip (unpacked
and checked into the run's folder), or generated scenes captioned in reading order (Fine-tune only)."""

from __future__ import annotations

import threading
from pathlib import Path

from hi_core.archives import check_record_paths, extract_dataset_zip
from hi_core.datasets import INDEX, write_synthetic

from .context import EXAMPLES_DIR, UNPACKED

DEMO_SET, UPLOADED_ZIP, SYNTHETIC = "demo", "zip", "synthetic"
SYNTHETIC_SCENES = 200  # scenes captioned in reading order: a shift the demo model learns (docs/compare-demo.md)
_synthetic_lock = threading.Lock()


def synthetic_set() -> Path:
    """The generated reading-order scenes (same seed, same files), written once and shared by sessions."""
    folder = UNPACKED / f"synthetic-reading-{SYNTHETIC_SCENES}"
    with _synthetic_lock:
        if not (folder / INDEX).is_file():  # data.jsonl is written last
            write_synthetic(folder, SYNTHETIC_SCENES, seed=1, order="reading")
    return folder


def dataset_folder(source: str, archive: str | None, run_folder: Path) -> tuple[Path, str]:
    """The folder of the chosen dataset (an upload is unpacked and checked into `run_folder`) and its name in the page."""
    if source == UPLOADED_ZIP:
        folder = extract_dataset_zip(archive, run_folder / "dataset")
        check_record_paths(folder)
        return folder, f"`{Path(archive).name}`"
    if source == SYNTHETIC:
        return synthetic_set(), f"the synthetic scenes ({SYNTHETIC_SCENES}, reading order)"
    return EXAMPLES_DIR, "the demo set"
