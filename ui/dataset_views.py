"""What the Dataset tab shows of one session's scores: the session itself (`DatasetSession`, in `gr.State`), the
summary, the skipped records, the ranking rows and the selected head's line of numbers. Every number comes from
`hi_core`; this module only lays them out."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hi_core.data.dataset_analysis import DatasetAnalysis
from hi_core.data.datasets import Record
from hi_core.model.loading import LoadConfig

from . import explorer_views as views

GALLERY_SIZE = 4  # images shown where the selected head scores best, and worst
SKIPPED_SHOWN = 20  # skipped records listed in the page (all of them are in the JSON)


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
