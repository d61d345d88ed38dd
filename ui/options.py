"""The scoring-option controls, built once from the library's `Literal` types and its config defaults
(the Explorer and the Dataset tab show the same ones), and the configs built back from their values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import gradio as gr

from hi_core.method.analysis import AnalysisConfig
from hi_core.method.image_scoring import View
from hi_core.method.scoring import Binarization, LayerScore, ScoringConfig
from hi_core.model.inputs import Queries, check_text_length
from hi_core.tuning.finetune_presets import DEFAULT_PRESET, finetune_preset

from .components import BoundedTextbox

DEFAULTS = AnalysisConfig()
TOP_K_LAYERS = finetune_preset(DEFAULT_PRESET).k  # layers highlighted in the layer bars: the Fine-tune tab's k


@dataclass
class ScoringControls:
    """Prompt, query rows, binarization, quantile and layer score: one widget each."""

    prompt: gr.Textbox
    queries: gr.Radio
    binarize: gr.Radio
    quantile: gr.Slider
    layer_score: gr.Radio
    view: gr.Radio | None = None  # of a tiled model's image (`views=True`: the Explorer)

    @classmethod
    def build(
        cls, elem_prefix: str = "", render: bool = True, views: bool = False, max_chars: int | None = None
    ) -> ScoringControls:
        """The widgets, in the current layout context (e.g. inside an Accordion); with `render=False`, to be placed
        later (`.render()` each where it belongs: the Explorer puts the scoring ones beside the heatmap). A prompt
        longer than `max_chars` is refused before the handler reads it."""
        scoring = DEFAULTS.scoring
        return cls(
            prompt=BoundedTextbox(
                DEFAULTS.prompt, max_chars=max_chars, label="Prompt", elem_id=f"{elem_prefix}prompt", render=render
            ),
            queries=gr.Radio(
                list(get_args(Queries)),
                value=DEFAULTS.queries,
                label="Query rows",
                elem_id=f"{elem_prefix}queries",
                render=render,
            ),
            binarize=gr.Radio(
                list(get_args(Binarization)),
                value=scoring.binarize,
                label="Binarization",
                elem_id=f"{elem_prefix}binarize",
                render=render,
            ),
            quantile=gr.Slider(
                0.5,
                0.99,
                value=scoring.quantile,
                step=0.01,
                label="Quantile (for quantile binarization)",
                elem_id=f"{elem_prefix}quantile",
                render=render,
            ),
            layer_score=gr.Radio(
                list(get_args(LayerScore)),
                value=scoring.layer_score,
                label="Layer score",
                elem_id=f"{elem_prefix}layer-score",
                render=render,
            ),
            view=gr.Radio(
                list(get_args(View)),
                value=DEFAULTS.view,
                elem_id=f"{elem_prefix}view",
                render=render,
                label="View of a tiled image (tiles + a global view): every token on the stitched tiles "
                "(combined), the global view alone, or the tiles alone",
            )
            if views
            else None,
        )

    @property
    def scoring(self) -> list[gr.Radio | gr.Slider]:
        """The controls that change only the scores (a rescore, no new forward pass), in `scoring_config`'s order."""
        return [self.binarize, self.quantile, self.layer_score]


def scoring_config(binarize: Binarization, quantile: float, layer_score: LayerScore) -> ScoringConfig:
    return ScoringConfig(binarize=binarize, quantile=float(quantile), layer_score=layer_score)


def check_texts(limit: int | None, **texts: str | None) -> None:
    """Refuse (InputError) a text (named by its keyword: description=..., key_phrase=...) longer than `limit`
    characters, from its length alone: the handler's own check, before any tokenizer (the boxes refuse such a text
    too)."""
    for field, text in texts.items():
        check_text_length(field.replace("_", " "), text or "", limit)


def analysis_config(
    prompt: str,
    queries: Queries,
    binarize: Binarization,
    quantile: float,
    layer_score: LayerScore,
    key_phrase: str | None = None,
    view: View = DEFAULTS.view,
) -> AnalysisConfig:
    return AnalysisConfig(
        prompt=prompt or DEFAULTS.prompt,
        key_phrase=key_phrase or None,
        queries=queries,
        scoring=scoring_config(binarize, quantile, layer_score),
        view=view,
    )


def top_k_slider(elem_id: str) -> gr.Slider:
    """The number of layers the layer bars highlight; its range follows the model once results exist."""
    return gr.Slider(1, 16, value=TOP_K_LAYERS, step=1, label="Top-k layers to highlight (LoRA's k)", elem_id=elem_id)


def top_k_for(num_layers: int, asked: int) -> int:
    """The top-k the bars show for a model of `num_layers`: what was asked, but never every layer (of two or more)."""
    return int(max(1, min(int(asked), num_layers - 1 if num_layers > 1 else 1)))


def top_k_update(num_layers: int, asked: int) -> gr.Slider:
    """The slider once a model's results are shown: its value within the model's scored layers (those with softmax
    attention: all of them, except in a hybrid model), which its label names.
    (Its maximum stays: an API caller's default would fall outside a lowered one and be refused.)"""
    return gr.Slider(
        value=top_k_for(num_layers, asked),
        label=(
            f"Top-k layers to highlight (LoRA's k; at most {max(1, num_layers - 1)} of this model's "
            f"{num_layers} scored layers)"
        ),
    )
