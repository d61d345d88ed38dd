"""The Explorer's ablation view: do the heads that look at the object matter? The last analysis's image is
described again by the model with every head and without chosen heads (the top-k by this analysis's HI, the
selected head, or a list), side by side, and the analyzed text is scored again without them: ΔHI = without
− with of every head as a clickable heatmap, and the selected head's two maps (`before_after`'s drawing).
Heads are removed by zeroing their slice of the attention output (`hi_core.causal.head_ablation.ablate_heads`); the
dataset-mean variant needs a dataset and lives in the CLI (`python -m hi_core ablate --mode mean`).
"""

from __future__ import annotations

import dataclasses
import html

import gradio as gr

from hi_core.base.errors import InputError
from hi_core.causal.ablation import AblationConfig
from hi_core.causal.head_ablation import ImageAblation
from hi_core.method.analysis import hi_difference
from hi_core.method.head_selection import Head, format_heads, parse_head_choice
from hi_core.model.loading import Device

from .before_after import (
    BeforeAfter,
    before_after_figure,
    before_after_info,
    clicked_pair,
    difference_heatmap,
    largest_change,
    pair_views,
)
from .components import BoundedTextbox, refuse_in_handler
from .context import AppContext
from .explorer_views import Session
from .feedback import reports_input_errors

WHICH = ("top-k heads by HI", "the selected head", "heads listed")
NAMES = ("every head", "heads removed")
MAX_K = 64  # at most this many heads removed at once from the explorer (the CLI takes any number)
MAX_LISTED_CHARS = 1_000  # the heads listed: MAX_K pairs like "27:13," fit many times over


def chosen_heads(session: Session, which: str, k: int, listed: str) -> tuple[Head, ...]:
    """The heads to remove: the top-k of the analysis shown, the selected head, or `layer:head` pairs."""
    if which == WHICH[0]:
        ranked = session.analysis.ranked_heads()
        if not 1 <= k <= min(len(ranked), MAX_K):
            raise InputError(f"k must be between 1 and {min(len(ranked), MAX_K)}, got {k}")
        return tuple(ranked[: int(k)])
    if which == WHICH[1]:
        return (session.selected,)
    choice = parse_head_choice(listed or "")
    if not isinstance(choice, tuple):
        raise InputError("list heads as layer:head pairs, e.g. 1:5,2:0 (or choose the top-k)")
    if len(choice) > MAX_K:
        raise InputError(f"list at most {MAX_K} heads, got {len(choice)}")
    return choice


def descriptions(result: ImageAblation) -> str:
    """The two descriptions side by side: an HTML table (Markdown leaves an HTML block as it is, so the model's words
    are never read as markup), escaped."""

    def cell(text: str) -> str:
        # on one line: a blank line would end Markdown's HTML block and the rest would be read as Markdown
        return html.escape(" ".join(text.split())) if text.strip() else "<i>(nothing: the model ended at once)</i>"

    removed = format_heads(result.heads).replace(",", ", ")
    return (
        f"<table><tr><th>With every head</th><th>Without heads {removed} ({result.mode})</th></tr>"
        f"<tr><td>{cell(result.intact_text)}</td><td>{cell(result.ablated_text)}</td></tr></table>"
    )


class AblationTab:
    """The "Ablation" result tab (built in the current Tabs context) and its handlers."""

    def __init__(self, context: AppContext, state: gr.State) -> None:
        self.context, self.state = context, state  # the Explorer's session
        with gr.Tab("Ablation", id="ablation", elem_id="ablation-tab"):
            gr.Markdown(
                "Remove heads (their slice of the attention output set to zero) and see what the model "
                "says without them, and how the other heads' maps change on the analyzed text. Do the "
                "heads that look at the object matter? Compare the top heads with a few others."
            )
            with gr.Row():
                self.which = refuse_in_handler(
                    gr.Radio(list(WHICH), value=WHICH[0], label="Heads to remove", elem_id="ablate-which")
                )
                self.k = refuse_in_handler(
                    gr.Number(
                        value=AblationConfig.k,  # as many as the CLI's `ablate` removes
                        minimum=1,
                        maximum=MAX_K,
                        precision=0,
                        label="k",
                        elem_id="ablate-k",
                    )
                )
                self.listed = BoundedTextbox(
                    "",
                    max_chars=MAX_LISTED_CHARS,
                    label="Heads listed (layer:head)",
                    placeholder="1:5,2:0",
                    elem_id="ablate-list",
                )
            self.button = gr.Button("Remove the heads and describe again", elem_id="ablate")
            self.message = gr.Markdown("", label="Ablation message", elem_id="ablate-message")
            self.texts = gr.Markdown("", label="Descriptions with and without the heads", elem_id="ablate-texts")
            self.heatmap, self.head_view, self.info = pair_views(NAMES, "ablate")

    @property
    def views(self) -> list[gr.components.Component]:
        return [self.texts, self.heatmap, self.head_view, self.info, self.message]

    def wire(
        self, model_name: gr.components.Component, device: gr.Dropdown, lora: gr.Textbox, tuned_state: gr.State
    ) -> None:
        self.button.click(
            self.ablate,
            [self.state, self.which, self.k, self.listed, model_name, device, lora, tuned_state],
            [self.state, *self.views],
            api_name="ablate",
        )
        self.heatmap.select(self.select_cell, [self.state], [self.state, *self.views], api_visibility="private")

    @reports_input_errors("message")
    def ablate(
        self,
        session: Session | None,
        which: str,
        k: int,
        listed: str,
        model_name: str,
        device: Device,
        lora: str = "",
        tuned=None,
        progress=gr.Progress(),
    ):
        """Describe the last analysis's image with and without the heads; score its text without them."""
        if session is None:
            raise InputError("run an analysis first: the heads are removed from the model on its image and text")
        heads = chosen_heads(session, which, int(k or 0), listed)
        load_config = self.context.model_config(model_name, device, lora, tuned)
        self.context.get_model(load_config, progress)
        progress(0.3, desc=f"describing and scoring without {len(heads)} head(s)")
        result = self.context.work.ablate(
            load_config, session.image, session.mask, session.whole.text, heads, session.config
        )
        ablated = dataclasses.replace(result.ablated, model=self.context.shown(result.ablated.model))
        intact = session.whole.rescored(session.config.scoring)
        pair = BeforeAfter(
            base=intact,
            tuned=ablated,
            selected=largest_change(hi_difference(intact, ablated)),
            names=NAMES,
            removed=tuple(result.heads),
        )
        session.ablation, session.ablation_texts = pair, descriptions(result)
        return self.render(session)

    def select_cell(self, session: Session | None, event: gr.SelectData):
        if session is None:
            return gr.skip()
        pair = clicked_pair(session.ablation, event)
        if pair is None:
            return gr.skip()
        session.ablation = pair
        return self.render(session)

    def render(self, session: Session) -> dict:
        """The session's ablation shown (it has one: the Explorer renders only then)."""
        pair = session.ablation
        if pair is None:
            raise ValueError("render needs a session with an ablation (session.ablation is None)")
        return {
            self.state: session,
            self.message: "",
            self.texts: session.ablation_texts,
            self.heatmap: difference_heatmap(pair),
            self.head_view: before_after_figure(session, pair),
            self.info: before_after_info(pair, models=False),
        }

    def cleared(self) -> dict:
        """A new analysis: the ablation of the previous one goes."""
        return {self.texts: "", self.heatmap: None, self.head_view: None, self.info: "", self.message: ""}
