"""The Explorer's before/after view: while a LoRA adapter is set, the last analysis's image, mask, text and
options scored by the base model (the same model without the adapter) and by the tuned one; ΔHI = tuned -
base of every head as a clickable L x H heatmap (red-blue, centred on 0; the HI heatmap's geometry), and
the selected head's two maps side by side. Models come from the shared cache (`AppContext.get_model`: one
load at a time; in public the base is the allow-listed model), the model's work through `context.work`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import gradio as gr
import numpy as np

from hi_core.base.errors import InputError
from hi_core.figures.heatmap import HeatmapLayout, draw_heatmap
from hi_core.figures.overlays import overlay_panels
from hi_core.method.analysis import ImageAnalysis, hi_difference
from hi_core.method.scoring import ScoringConfig
from hi_core.model.loading import Device

from . import explorer_views as views
from .components import Figure
from .context import AppContext
from .explorer_views import Session
from .feedback import reports_input_errors


@dataclass
class BeforeAfter:
    """One image, mask and text scored twice: by the base model and by its tuned copy (the LoRA set in the
    Explorer), or (the ablation view) by the model with every head and without some; `names` says which."""

    base: ImageAnalysis
    tuned: ImageAnalysis
    selected: tuple[int, int]
    names: tuple[str, str] = ("base", "tuned")
    removed: tuple[tuple[int, int], ...] = ()  # the ablation view's heads removed, crossed out on the ΔHI heatmap

    @property
    def difference(self) -> np.ndarray:
        return hi_difference(self.base, self.tuned)  # (layers, heads): tuned - base

    def rescored(self, scoring: ScoringConfig) -> BeforeAfter:
        return replace(self, base=self.base.rescored(scoring), tuned=self.tuned.rescored(scoring))


def largest_change(difference: np.ndarray) -> tuple[int, int]:
    """The head whose HI changed most (among the scored: a hybrid model's other layers are NaN)."""
    largest = np.unravel_index(np.argmax(np.nan_to_num(np.abs(difference), nan=-1.0)), difference.shape)
    return int(largest[0]), int(largest[1])


def difference_heatmap(compare: BeforeAfter) -> np.ndarray:
    """ΔHI = tuned - base per head, on a red-blue scale symmetric around 0 (the HI heatmap's cell geometry)."""
    difference = compare.difference
    reach = float(np.nanmax(np.abs(difference))) or 1e-3  # NaN: layers not scored (no softmax attention)
    missing = views.NOT_SCORED if not np.isfinite(difference).all() else None
    crossed = "; × removed" if compare.removed else ""
    layers, heads = difference.shape
    return draw_heatmap(
        difference,
        compare.selected,
        HeatmapLayout.fit(layers, heads, legend=missing is not None),
        title=f"ΔHI = {compare.names[1]} − {compare.names[0]}: click a cell{crossed}",
        label="ΔHI",
        vmin=-reach,
        vmax=reach,
        missing=missing,
        marked=compare.removed,
    )


def before_after_figure(session: Session, compare: BeforeAfter) -> np.ndarray:
    """The selected head's map in the two analyses (base | tuned), side by side."""
    layer, head = compare.selected
    return overlay_panels(
        [session.image, session.image],
        [compare.base.maps[layer, head], compare.tuned.maps[layer, head]],
        [session.mask, session.mask],
        [
            f"{name}: layer {layer} head {head}, HI {analysis.hi[layer, head]:.3f}"
            for name, analysis in zip(compare.names, (compare.base, compare.tuned))
        ],
        columns=2,
    )


def before_after_info(compare: BeforeAfter, models: bool = True) -> str:
    """The selected head's HI and mass in both analyses, the largest rise and fall; `models`: name the two models."""
    (base, tuned), (layer, head) = compare.names, compare.selected
    difference = compare.difference
    rise = np.unravel_index(np.argmax(difference), difference.shape)
    fall = np.unravel_index(np.argmin(difference), difference.shape)
    if np.any(difference):
        changes = (
            f"Largest rise: layer {rise[0]}, head {rise[1]} ({difference[rise]:+.3f}) · largest fall: layer {fall[0]}, "
            f"head {fall[1]} ({difference[fall]:+.3f}) · mean ΔHI {difference.mean():+.4f}"
        )
    else:
        changes = "No head's HI changed (the maps may still move within the binarization: see the masses)"
    scored = f"Scored on: {compare.base.text} ({compare.base.response_tokens} token rows)"
    if models:
        scored += f" · {base} `{compare.base.model}` · {tuned} `{compare.tuned.model}`"
    return (
        f"**Layer {layer}, head {head}** · HI {base} **{compare.base.hi[layer, head]:.3f}** → {tuned} "
        f"**{compare.tuned.hi[layer, head]:.3f}** (ΔHI **{difference[layer, head]:+.3f}**) · "
        f"attention mass on the object "
        f"{compare.base.mass[layer, head]:.3f} → {compare.tuned.mass[layer, head]:.3f}  \n"
        f"{changes}  \n{scored}"
    )


def pair_views(names: tuple[str, str], prefix: str) -> tuple[gr.Image, gr.Image, gr.Markdown]:
    """The ΔHI heatmap, the selected head's two maps and its numbers, in a row (elem_ids `{prefix}-heatmap`,
    `{prefix}-head`, `{prefix}-info`), for a pair of analyses named `names`."""
    first, second = names
    with gr.Row():
        heatmap = Figure(
            label=f"ΔHI ({second} − {first}) per head; click a cell",
            download_name=f"{prefix}-delta-hi-heatmap",
            elem_id=f"{prefix}-heatmap",
            height=280,
        )
        with gr.Column():
            head_view = Figure(
                label=f"The selected head: {first} | {second}",
                download_name=f"{prefix}-selected-head",
                elem_id=f"{prefix}-head",
                height=220,
            )
            info = gr.Markdown("", label=f"The selected head: {first} and {second}", elem_id=f"{prefix}-info")
    return heatmap, head_view, info


def clicked_pair(pair: BeforeAfter | None, event: gr.SelectData) -> BeforeAfter | None:
    """The pair with the head of the clicked ΔHI cell selected; None for a click off the grid (the numbers,
    the colour bar), on a layer that is not scored, or before any pair was scored."""
    if pair is None:
        return None
    clicked = views.clicked_head(event.index, pair.base.hi)
    if clicked is None or not np.isfinite(pair.base.hi[clicked]):
        return None
    return replace(pair, selected=clicked)


class BeforeAfterTab:
    """The "Before / after" result tab (built in the current Tabs context, hidden until a LoRA is set) and its
    handlers."""

    def __init__(self, context: AppContext, state: gr.State) -> None:
        self.context, self.state = context, state  # the Explorer's session
        with gr.Tab("Before / after", id="before-after", visible=False, elem_id="before-after-tab") as self.tab:
            gr.Markdown(
                "The same image, mask and text (the last analysis's) scored by the base model and by the "
                "tuned one (the LoRA adapter above): the change of every head's HI, and a head's two maps."
            )
            self.button = gr.Button("Score with the base and the tuned model", elem_id="compare")
            self.message = gr.Markdown("", label="Before/after message", elem_id="compare-message")
            self.heatmap, self.head_view, self.info = pair_views(("base", "tuned"), "diff")

    @property
    def views(self) -> list[gr.components.Component]:
        return [self.heatmap, self.head_view, self.info, self.message]

    def wire(
        self, model_name: gr.components.Component, device: gr.Dropdown, lora: gr.Textbox, tuned_state: gr.State
    ) -> None:
        lora.change(self.lora_changed, [lora], [self.tab], api_visibility="private", show_progress="hidden")
        self.button.click(
            self.before_after,
            [self.state, model_name, device, lora, tuned_state],
            [self.state, *self.views],
            api_name="before_after",
        )
        self.heatmap.select(self.select_cell, [self.state], [self.state, *self.views], api_visibility="private")

    def lora_changed(self, lora: str):
        return {self.tab: gr.Tab(visible=bool((lora or "").strip()))}

    @reports_input_errors("message")
    def before_after(
        self, session: Session | None, model_name: str, device: Device, lora: str, tuned=None, progress=gr.Progress()
    ):
        """The last analysis's image, mask, text and options scored by the base model and by the tuned one."""
        if not (lora or "").strip():
            raise InputError("set a LoRA adapter first (the Fine-tune tab's 'Use the tuned model')")
        if session is None:
            raise InputError("run an analysis first: the base and the tuned model score its image, mask and text")
        context, scored = self.context, {}
        for step, (which, adapter) in enumerate((("base", ""), ("tuned", lora))):
            load_config = context.model_config(model_name, device, adapter, tuned)
            context.get_model(load_config, progress)
            progress(0.3 + 0.35 * step, desc=f"scoring with the {which} model")
            analysis = context.work.analyze(
                load_config, session.image, session.mask, session.whole.text, session.config
            )
            scored[which] = dataclasses.replace(analysis, model=context.shown(analysis.model))
        selected = largest_change(hi_difference(scored["base"], scored["tuned"]))
        session.compare = BeforeAfter(base=scored["base"], tuned=scored["tuned"], selected=selected)
        return self.render(session)

    def select_cell(self, session: Session | None, event: gr.SelectData):
        if session is None:
            return gr.skip()
        pair = clicked_pair(session.compare, event)
        if pair is None:
            return gr.skip()
        session.compare = pair
        return self.render(session)

    def render(self, session: Session) -> dict:
        """The session's comparison shown (it has one: the Explorer renders only then)."""
        compare = session.compare
        if compare is None:
            raise ValueError("render needs a session with a comparison (session.compare is None)")
        return {
            self.state: session,
            self.message: "",
            self.heatmap: difference_heatmap(compare),
            self.head_view: before_after_figure(session, compare),
            self.info: before_after_info(compare),
        }

    def cleared(self) -> dict:
        """A new analysis: the comparison of the previous one goes."""
        return {self.heatmap: None, self.head_view: None, self.info: "", self.message: ""}
