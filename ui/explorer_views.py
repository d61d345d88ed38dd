"""What the Explorer's results show, drawn from one session's analysis: the summary, the clickable HI
heatmap, the selected head (figure and a line of numbers), the top heads, one layer's heads, the ranking,
the layer bars and the downloads. Every number comes from `hi_core`; this module only lays them out."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hi_core.analysis import ImageAnalysis
from hi_core.heatmap import HeatmapLayout, draw_heatmap
from hi_core.overlays import overlay_panels
from hi_core.plots import figure_to_array, layer_bars

from .options import top_k_for


def heatmap_image(hi: np.ndarray, selected: tuple[int, int], title: str = "Head Impact: click a cell",
                  label: str = "HI") -> np.ndarray:
    """The (layers, heads) values as a clickable heatmap (numbers, colour bar, the selected head marked)."""
    return draw_heatmap(hi, selected, HeatmapLayout.fit(*hi.shape), title=title, label=label)


def clicked_head(index: tuple[int, int], hi: np.ndarray) -> tuple[int, int] | None:
    """The (layer, head) of the heatmap cell a click at pixel `index` = (x, y) landed on; None off the grid."""
    return HeatmapLayout.fit(*hi.shape).cell_at(*index)


def clip_head(hi: np.ndarray, layer: float | None, head: float | None) -> tuple[int, int]:
    layers, heads = hi.shape
    return int(np.clip(layer or 0, 0, layers - 1)), int(np.clip(head or 0, 0, heads - 1))


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


def summary(analysis: ImageAnalysis) -> str:
    best_layer, best_head = analysis.ranked_heads()[0]
    best = analysis.hi[best_layer, best_head]
    return (
        f"**Scored text:** {analysis.text}  \n"
        f"**Model:** `{analysis.model}` ({analysis.family}, {analysis.view}) · **grid** {analysis.grid[0]}×{analysis.grid[1]} · "
        f"**object patches** {int(analysis.mask.object_patches.sum())} · **chance IoU** {analysis.chance:.3f} · "
        f"**response tokens** {analysis.response_tokens} ({analysis.queries} rows)  \n"
        f"**Best head:** layer {best_layer}, head {best_head}, HI {best:.3f} ({best / max(analysis.chance, 1e-9):.1f}× chance)"
    )


def head_info(analysis: ImageAnalysis, selected: tuple[int, int]) -> str:
    """The selected head in words, beside its figure."""
    layer, head = selected
    hi = analysis.hi[layer, head]
    rank = analysis.ranked_heads().index(selected) + 1
    return (f"**Layer {layer}, head {head}** · HI **{hi:.3f}** ({hi / max(analysis.chance, 1e-9):.1f}× chance "
            f"{analysis.chance:.3f}) · attention mass on the object **{analysis.mass[layer, head]:.3f}** · "
            f"rank {rank} of {analysis.hi.size}")


def head_figure(session: Session) -> np.ndarray:
    analysis, (layer, head) = session.analysis, session.selected
    return overlay_panels(
        [session.image, session.image],
        [analysis.maps[layer, head], analysis.mask.object_patches.astype(float)],
        [session.mask, session.mask],
        [f"layer {layer} head {head}: HI {analysis.hi[layer, head]:.3f}", "object patches on the grid"],
        columns=2,
    )


def top_figure(session: Session, top_n: int) -> np.ndarray:
    analysis = session.analysis
    top = analysis.ranked_heads()[: max(1, int(top_n or 1))]
    return overlay_panels(
        [session.image] * len(top), [analysis.maps[l, h] for l, h in top], [session.mask] * len(top),
        [f"L{l} H{h}: {analysis.hi[l, h]:.2f}" for l, h in top], title=f"top {len(top)} heads by HI",
    )


def layer_figure(session: Session, layer: int) -> np.ndarray:
    analysis = session.analysis
    layers, heads = analysis.hi.shape
    layer = int(np.clip(layer or 0, 0, layers - 1))
    return overlay_panels(
        [session.image] * heads, [analysis.maps[layer, h] for h in range(heads)], [session.mask] * heads,
        [f"H{h}: {analysis.hi[layer, h]:.2f}" for h in range(heads)], title=f"layer {layer}",
    )


def bars_figure(analysis: ImageAnalysis, top_k: int) -> np.ndarray:
    return figure_to_array(layer_bars(analysis.layer_scores, top_k=top_k_for(analysis.hi.shape[0], top_k)))


def ranking_rows(analysis: ImageAnalysis) -> list[list]:
    return [[l, h, round(float(analysis.hi[l, h]), 4), round(float(analysis.mass[l, h]), 4)] for l, h in analysis.ranked_heads()]


def save_downloads(session: Session, figures: dict[str, np.ndarray]) -> list[str]:
    """Scores (JSON, CSV) and the given figures (name -> PNG pixels) in the session's folder; every file there,
    listed (Gradio serves copies of them)."""
    folder = session.folder
    (folder / "scores.json").write_text(json.dumps(session.analysis.to_json(), indent=2))
    (folder / "heads.csv").write_text(session.analysis.to_csv())
    for name, pixels in figures.items():
        Image.fromarray(pixels).save(folder / name)
    return [str(path) for path in sorted(folder.iterdir()) if path.suffix in (".json", ".csv", ".png")]
