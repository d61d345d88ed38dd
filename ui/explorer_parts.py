"""The Explorer tab's parts: the model controls every tab shares, and `ExplorerParts`, the components and state that
`explorer` lays out and its mixins (`explorer_events`, `explorer_handlers`) read. Declarations only, so the mixins
are type-checked against what the layout builds without importing it (which imports them)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .ablation_view import AblationTab
from .before_after import BeforeAfterTab
from .components import Figure
from .context import AppContext
from .feedback import EditCount
from .options import ScoringControls


@dataclass
class ModelControls:
    """The model every tab uses, chosen in the Explorer: name, device, LoRA adapter, and its status line."""

    name: gr.Textbox | gr.Dropdown
    device: gr.Dropdown
    lora: gr.Textbox
    status: gr.Markdown
    lora_options: gr.Accordion  # holds `lora`; opened when a tuned model is set


class ExplorerParts:
    """What `ExplorerTab` builds (annotations only: the layout assigns each) and its mixins use."""

    context: AppContext
    tuned_state: gr.State  # the Fine-tune tab's last run
    state: gr.State  # the analyzed `Session`, or None
    brush_colour: gr.State  # the editor's brush colour (hex) as last sent

    # inputs: the model, the image and its mask, the text, the options
    model: ModelControls
    load_button: gr.Button
    gallery: gr.Gallery | None  # the examples, if any
    editor: gr.ImageEditor
    grabcut_button: gr.Button
    uploaded_mask: gr.File
    mask_view: gr.Image
    text: gr.Textbox
    key_phrase: gr.Textbox
    generate: gr.Checkbox
    options: ScoringControls
    view: gr.Radio  # `options.view`, which the Explorer's options always have
    analyze_button: gr.Button
    message: gr.Markdown  # beside Analyze
    # each kind of input (image, text, model, options) and its components, set by `ExplorerEvents._wire`
    edit_inputs: dict[str, list[gr.components.Component]]

    # results
    stale: gr.Markdown
    edits: EditCount
    summary: gr.Markdown
    tokens: gr.CheckboxGroup
    key_tokens_button: gr.Button
    all_tokens_button: gr.Button
    token_message: gr.Markdown
    heatmap: Figure
    head_view: Figure
    head_info: gr.Markdown
    selected_layer: gr.Number
    selected_head: gr.Number
    show_head: gr.Button
    top_n: gr.Slider
    top_view: Figure
    layer: gr.Number
    layer_view: Figure
    ranking: gr.Dataframe
    top_k: gr.Slider
    bars: Figure
    ablation: AblationTab
    compare: BeforeAfterTab
    downloads: gr.File
