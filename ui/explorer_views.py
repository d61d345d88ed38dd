"""What the Explorer's results show, drawn from one session's analysis: the summary, the scored tokens, the
clickable HI heatmap, the selected head (figure and a line of numbers), the top heads, one layer's heads,
the ranking, the layer bars and the downloads (the before/after view draws in `before_after`). Every number
comes from `hi_core`; this module only lays them out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hi_core.base.errors import InputError
from hi_core.figures.bars import draw_layer_bars
from hi_core.figures.heatmap import HeatmapLayout, draw_heatmap
from hi_core.figures.overlays import overlay_panels
from hi_core.method.analysis import AnalysisConfig, ImageAnalysis
from hi_core.method.scoring import ScoringConfig

from .options import top_k_for

if TYPE_CHECKING:
    from .before_after import BeforeAfter
    from .budget import HeldTokenMaps


#: What a NaN (grey) head of a heatmap means: its layer has no softmax attention, so it is not scored.
NOT_SCORED = "not scored (no softmax attention)"


def heatmap_image(
    hi: np.ndarray, selected: tuple[int, int], title: str = "Head Impact: click a cell", label: str = "HI"
) -> np.ndarray:
    """The (layers, heads) values as a clickable heatmap (numbers, colour bar, the selected head marked); the
    layers not scored (NaN: no softmax attention, in a hybrid model) are grey rows, with a legend line."""
    legend = NOT_SCORED if not np.isfinite(hi).all() else None
    layers, heads = hi.shape
    layout = HeatmapLayout.fit(layers, heads, legend=legend is not None)
    return draw_heatmap(hi, selected, layout, title=title, label=label, missing=legend)


def not_scored_note(hi: np.ndarray) -> str:
    """Which layers are scored, in words, when some are not (a hybrid model); "" otherwise."""
    scored = [int(layer) for layer in np.flatnonzero(np.isfinite(hi).any(axis=1))]
    if len(scored) == hi.shape[0]:
        return ""
    return (
        f"scored layers {', '.join(map(str, scored))} of {hi.shape[0]}: only layers with softmax attention are scored "
        "(the others, e.g. linear attention, are grey and never tuned)"
    )


def scored_head(hi: np.ndarray, head: tuple[int, int]) -> tuple[int, int]:
    """`head` if it was scored; an InputError naming the scored layers if its layer has no softmax attention."""
    layer, _ = head
    if not np.isfinite(hi[head]):
        scored = np.flatnonzero(np.isfinite(hi).any(axis=1))
        raise InputError(
            f"layer {layer} is not scored: it has no softmax attention (e.g. linear attention); "
            f"choose a head of layers {', '.join(map(str, scored))}"
        )
    return head


def clicked_head(index: tuple[int, int], hi: np.ndarray) -> tuple[int, int] | None:
    """The (layer, head) of the heatmap cell a click at pixel `index` = (x, y) landed on; None off the grid."""
    return HeatmapLayout.fit(*hi.shape).cell_at(*index)


def clip_head(hi: np.ndarray, layer: float | None, head: float | None) -> tuple[int, int]:
    layers, heads = hi.shape
    return int(np.clip(layer or 0, 0, layers - 1)), int(np.clip(head or 0, 0, heads - 1))


@dataclass
class Session:
    """What one browser session has analyzed (kept in `gr.State`, never shared between tabs).

    `whole` is the analysis as it came (the key phrase's rows; every token's maps when they were kept: its own, or
    `held` by the server's budget, `ui.budget`, which may drop them for newer analyses);
    `analysis` is what the page shows: `whole` on the chosen tokens, with the current scoring options."""

    whole: ImageAnalysis
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    config: AnalysisConfig  # what it was analyzed with (the before/after view scores the same); scoring: the current
    folder: Path  # this session's downloads, rewritten by each analysis; removed with the session
    token_note: str = ""  # why the per-token view is off, when it is
    edits: int = 0  # the browser's count of input edits when Analyze was pressed (feedback.EditCount)
    inputs: dict[str, tuple] = field(
        default_factory=dict
    )  # the controls' values analyzed, by kind (Explorer.edit_inputs)
    chosen: tuple[int, ...] = ()  # the tokens shown (indices into whole.tokens)
    selected: tuple[int, int] = (0, 0)
    analysis: ImageAnalysis = field(init=False)
    compare: BeforeAfter | None = None
    ablation: BeforeAfter | None = None  # every head vs chosen heads removed (the ablation view)
    ablation_texts: str = ""  # the two descriptions, as the ablation view shows them
    held: HeldTokenMaps | None = None  # the per-token maps, when the server's budget holds them (whole has none then)

    def __post_init__(self) -> None:
        self.chosen = self.chosen or self.whole.key_tokens
        self.analysis = self.whole
        self.selected = self.analysis.ranked_heads()[0]

    @property
    def generated(self) -> bool:
        """Whether the model wrote the scored text (the 'generate' box was ticked)."""
        return bool(self.inputs.get("text", (None, False))[1])

    @property
    def per_token(self) -> bool:
        """Whether the analysis kept every token's maps (they may have been dropped since: `every_token`)."""
        return self.held is not None or self.whole.token_maps is not None

    def every_token(self) -> ImageAnalysis:
        """`whole` with its per-token maps; an InputError (analyze again) when the server dropped them."""
        if self.held is None:
            return self.whole
        maps = self.held.get()
        if maps is None:
            raise InputError(self.held.dropped)
        return replace(self.whole, token_maps=maps.maps, token_view_sums=maps.view_sums)

    def show(self, tokens: Sequence[int] | None = None, scoring: ScoringConfig | None = None) -> None:
        """Show these tokens' rows (default: the same ones) scored with `scoring` (default: the current options);
        no forward pass. The selected head stays. The same rows are rescored from the maps shown (their mean
        already), so only a new choice of tokens needs the per-token maps."""
        scoring = scoring or self.config.scoring
        if tokens is None:
            self.analysis = self.analysis.rescored(scoring)
        else:
            chosen = tuple(sorted({int(i) for i in tokens}))
            self.analysis = (
                self.every_token().for_tokens(chosen, scoring) if self.per_token else self.whole.rescored(scoring)
            )
            self.chosen = chosen
        self.config = replace(self.config, scoring=scoring)
        if self.compare is not None:
            self.compare = self.compare.rescored(scoring)
        if self.ablation is not None:
            self.ablation = self.ablation.rescored(scoring)

    def release_token_maps(self) -> None:
        if self.held is not None:
            self.held.release()

    def remove_files(self) -> None:
        """What the server holds for this session goes (`budget.forget`): its downloads and its per-token maps."""
        self.release_token_maps()
        shutil.rmtree(self.folder, ignore_errors=True)


def token_label(index: int, token: str) -> str:
    shown = token.strip() or repr(token)
    return f"{index}: {shown}"


def token_choices(session: Session) -> list[tuple[str, int]]:
    """(label, index) of every response token; the key phrase's are starred."""
    key = set(session.whole.key_tokens)
    return [(token_label(i, token) + (" ★" if i in key else ""), i) for i, token in enumerate(session.whole.tokens)]


def scored_tokens(session: Session) -> str:
    """Which of the description's tokens the shown scores are on, in words."""
    whole = session.whole
    if not session.per_token:
        return f"the key phrase's {whole.response_tokens} token(s) (as analyzed; {session.token_note})"
    if session.chosen == whole.key_tokens:
        which = "all tokens" if len(whole.key_tokens) == len(whole.tokens) else "the key phrase"
    elif len(session.chosen) == len(whole.tokens):
        which = "all tokens"
    else:
        which = "chosen"
    return f"{', '.join(token_label(i, whole.tokens[i]) for i in session.chosen)} ({which})"


def summary(session: Session) -> str:
    analysis = session.analysis
    best_layer, best_head = analysis.ranked_heads()[0]
    best = analysis.hi[best_layer, best_head]
    return (
        f"**Scored text{' (generated by the model)' if session.generated else ''}:** {analysis.text}  \n"
        f"**Scored on tokens:** {scored_tokens(session)}  \n"
        f"**Model:** `{analysis.model}` ({analysis.family}, {analysis.view}) · "
        f"**grid** {analysis.grid[0]}×{analysis.grid[1]} · "
        f"**object patches** {int(analysis.mask.object_patches.sum())} · **chance IoU** {analysis.chance:.3f} · "
        f"**response tokens** {analysis.response_tokens} ({analysis.queries} rows)  \n"
        f"**Best head:** layer {best_layer}, head {best_head}, HI {best:.3f} "
        f"({best / max(analysis.chance, 1e-9):.1f}× chance)"
        + (f"  \n**Views of the image:** {views}" if (views := views_note(analysis)) else "")
        + (f"  \n**Layers:** {note}" if (note := not_scored_note(analysis.hi)) else "")
    )


def views_note(analysis: ImageAnalysis) -> str:
    """The views a tiled model wrote, with their grids and tokens ("" for an image written once)."""
    if len(analysis.views) < 2:
        return ""
    parts = [
        f"{view.name} {'×'.join(map(str, view.grid)) + ', ' if view.grid else ''}{view.tokens} tokens"
        for view in analysis.views
    ]
    return f"{'; '.join(parts)} (scored: {analysis.view})"


def view_shares_note(analysis: ImageAnalysis, selected: tuple[int, int]) -> str:
    """The selected head's share of its image attention on each view ("" for an image written once)."""
    if len(analysis.views) < 2 or analysis.view_shares is None:
        return ""
    shares = analysis.view_shares[selected]
    return " · its image attention: " + ", ".join(
        f"{view.name} **{share:.2f}**" for view, share in zip(analysis.views, shares)
    )


def head_info(analysis: ImageAnalysis, selected: tuple[int, int]) -> str:
    """The selected head in words, beside its figure."""
    layer, head = selected
    hi = analysis.hi[layer, head]
    if not np.isfinite(hi):
        return f"**Layer {layer}, head {head}** · {NOT_SCORED}"
    rank = analysis.ranked_heads().index(selected) + 1
    return (
        f"**Layer {layer}, head {head}** · HI **{hi:.3f}** ({hi / max(analysis.chance, 1e-9):.1f}× chance "
        f"{analysis.chance:.3f}) · attention mass on the object **{analysis.mass[layer, head]:.3f}** · "
        f"rank {rank} of {analysis.hi.size}{view_shares_note(analysis, selected)}"
    )


def _shown_map(analysis: ImageAnalysis, layer: int, head: int) -> np.ndarray | None:
    """A head's map to draw, or None (the image alone) for a head that was not scored (NaN)."""
    head_map = analysis.maps[layer, head]
    return head_map if np.isfinite(head_map).all() else None


def _hi_text(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if np.isfinite(value) else "not scored"


def head_figure(session: Session) -> np.ndarray:
    analysis, (layer, head) = session.analysis, session.selected
    return overlay_panels(
        [session.image, session.image],
        [_shown_map(analysis, layer, head), analysis.mask.object_patches.astype(float)],
        [session.mask, session.mask],
        [f"layer {layer} head {head}: HI {_hi_text(analysis.hi[layer, head], 3)}", "object patches on the grid"],
        columns=2,
    )


def top_figure(session: Session, top_n: int) -> np.ndarray:
    analysis = session.analysis
    top = analysis.ranked_heads()[: shown_top_n(session, top_n)]
    return overlay_panels(
        [session.image] * len(top),
        [analysis.maps[layer, h] for layer, h in top],
        [session.mask] * len(top),
        [f"L{layer} H{h}: {analysis.hi[layer, h]:.2f}" for layer, h in top],
        title=f"top {len(top)} heads by HI",
    )


def shown_layer(session: Session, layer: float | None) -> int:
    """The layer the one-layer view shows for the box's value: within the model's layers."""
    return int(np.clip(layer or 0, 0, session.analysis.hi.shape[0] - 1))


def shown_top_n(session: Session, top_n: float | None) -> int:
    """How many heads the top-heads view shows for the slider's value: at least one, at most every head."""
    return int(np.clip(top_n or 1, 1, session.analysis.hi.size))


def layer_figure(session: Session, layer: int) -> np.ndarray:
    analysis = session.analysis
    heads = analysis.hi.shape[1]
    layer = shown_layer(session, layer)
    scored = bool(np.isfinite(analysis.hi[layer]).any())
    return overlay_panels(
        [session.image] * heads,
        [_shown_map(analysis, layer, h) for h in range(heads)],
        [session.mask] * heads,
        [f"H{h}: {_hi_text(analysis.hi[layer, h], 2)}" for h in range(heads)],
        title=f"layer {layer}" if scored else f"layer {layer}: {NOT_SCORED}",
    )


def bars_figure(analysis, top_k: int) -> np.ndarray:
    """The layer bars of an analysis (one image's or a dataset's); layers not scored have no bar."""
    return draw_layer_bars(analysis.layer_scores, top_k=top_k_for(len(analysis.scored_layers), top_k))


def ranking_rows(analysis: ImageAnalysis) -> list[list]:
    return [
        [layer, h, round(float(analysis.hi[layer, h]), 4), round(float(analysis.mass[layer, h]), 4)]
        for layer, h in analysis.ranked_heads()
    ]


def save_downloads(session: Session) -> list[str]:
    """The shown scores (JSON with the tokens they are on, CSV) in the session's folder, listed (Gradio serves
    copies of them). Figures are not written here: each picture has its own download button (PNG)."""
    folder, analysis = session.folder, session.analysis
    tokens = [{"index": i, "token": session.whole.tokens[i]} for i in session.chosen] if session.per_token else None
    (folder / "scores.json").write_text(json.dumps({**analysis.to_json(), "scored_tokens": tokens}, indent=2))
    (folder / "heads.csv").write_text(analysis.to_csv())
    return [str(folder / "scores.json"), str(folder / "heads.csv")]
