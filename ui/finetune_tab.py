"""The Fine-tune tab: LoRA on chosen language-model layers of the Explorer's model (a private copy, so the
Explorer's cached model never carries LoRA and keeps serving), with live progress and a Cancel button;
the held-out records captioned (task `caption`) or their questions answered (task `vqa`: answer
accuracy) before and after; the adapter as a zip, and the tuned model back in the Explorer.

This module lays the tab out and wires its events; `finetune_handlers` answers them and `finetune_views` draws
what they show."""

from __future__ import annotations

import threading

import gradio as gr

from hi_core.tuning.finetune import MAX_SEED, FinetuneConfig
from hi_core.tuning.finetune_presets import DEFAULT_PRESET, DEMO_RATES, finetune_preset

from .components import BoundedTextbox, Figure
from .context import AppContext
from .explorer_parts import ModelControls
from .finetune_handlers import EVAL_LIMIT, FinetuneHandlers
from .finetune_run import RankingCache
from .jobs import Jobs
from .sources import DEMO_SET, SYNTHETIC, SYNTHETIC_SCENES, UPLOADED_ZIP

MAX_LAYER_LIST_CHARS = 1000  # the "these:" layer list: far more than any model has layers
STRATEGIES = [
    ("top-k by HI", "top"),
    ("bottom-k by HI", "bottom"),
    ("random k", "random"),
    ("all", "all"),
    ("these:", "list"),
]
TASKS = [("captioning", "caption"), ("closed-form VQA", "vqa")]  # the values of finetune.Task


PRESET_CHOICES = [
    ("quick: 30 steps of 8, 16 held-out records", "quick"),
    ("full: 100 steps of 16, up to 200 held-out records, METEOR (the experiment pages' run)", "full"),
]


def limit_note(limit: int | None) -> str | None:
    """A control's note of the deployment's limit (None: no limit, no note)."""
    return None if limit is None else f"at most {limit} here"


class FinetuneTab(FinetuneHandlers):
    """The tab's components (built in the current Blocks context) and their events; its handlers
    (`FinetuneHandlers`) are mixed in."""

    def __init__(
        self, context: AppContext, model: ModelControls, dataset_state: gr.State, tabs: gr.Tabs, state: gr.State
    ) -> None:
        """`state`: this session's last finished run (a `FinetuneSession`), which the other tabs read."""
        self.context, self.model, self.dataset_state, self.tabs, self.state = context, model, dataset_state, tabs, state
        self.jobs = Jobs()
        self.rankings = RankingCache()  # layer rankings of the app's own datasets, reused by later runs
        self.rates = {"demo": DEMO_RATES}  # model name -> RunRates measured by its last run here (demo: the bench's)
        self._rates_lock = threading.Lock()
        gr.Markdown(
            "Tune LoRA on chosen language-model layers of the model named in the Explorer tab (without its adapter), "
            "then caption the held-out records (a hashed 20% of the dataset) before and after, or, for the VQA task, "
            "answer their questions (each record's `prompt`; its `text` is the answer) and report answer accuracy "
            "(normalized exact match). "
            "`top`/`bottom` take the layers by Dataset HI: the Dataset tab's scores if you scored the same dataset "
            "there with the same model, else one made for an earlier run on the same data, else scored when the run "
            "starts. "
            "The presets suit the demo model (6 layers): the synthetic scenes are captioned in reading order, a shift "
            "LoRA teaches it; **quick** is a first look, **full** the run of the project's experiment pages. "
            "Training uses a private copy of the model; the explorer keeps serving meanwhile."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                self._controls()
            with gr.Column(scale=3):
                self._results()
        self._wire()

    def _controls(self) -> None:
        examples = len(self.context.examples)
        self.source = gr.Radio(
            [
                (
                    f"synthetic scenes (N={SYNTHETIC_SCENES}: reading-order captions, or one question each for VQA)",
                    SYNTHETIC,
                ),
                (f"demo set ({examples} scenes)", DEMO_SET),
                ("uploaded .zip", UPLOADED_ZIP),
            ],
            value=SYNTHETIC,
            label="Dataset",
            elem_id="ft-source",
        )
        self.archive = gr.File(label="Dataset .zip", file_types=[".zip"], type="filepath", height=120, elem_id="ft-zip")
        self.task = gr.Radio(
            TASKS,
            value=FinetuneConfig().data.task,
            label="Task",
            elem_id="ft-task",
            info="VQA needs a dataset whose records have a `prompt` (the question) and a one-word or "
            "templated answer as `text`: the synthetic scenes (generated with questions), or an uploaded .zip",
        )
        self.strategy = gr.Radio(STRATEGIES, value="top", label="Layers to tune", elem_id="ft-strategy")
        self.layer_list = BoundedTextbox(
            "", max_chars=MAX_LAYER_LIST_CHARS, label="Layers for 'these:' (indices like 0,2)", elem_id="ft-layer-list"
        )
        settings = self.context.settings
        self.preset = gr.Radio(
            PRESET_CHOICES, value=DEFAULT_PRESET, label="Preset (fills the settings below)", elem_id="ft-preset"
        )
        start = finetune_preset(DEFAULT_PRESET)
        with gr.Row():
            self.k = gr.Number(start.k, precision=0, minimum=1, label="k (layers)", min_width=90, elem_id="ft-k")
            self.rank = gr.Number(
                start.rank,
                precision=0,
                minimum=1,
                label="LoRA rank",
                min_width=90,
                elem_id="ft-rank",
                info=limit_note(settings.max_lora_rank),
            )
            self.steps = gr.Number(
                start.steps,
                precision=0,
                minimum=1,
                label="Steps",
                min_width=90,
                elem_id="ft-steps",
                info=limit_note(settings.max_finetune_steps),
            )
        with gr.Row():
            self.lr = gr.Number(start.lr, label="Learning rate", min_width=90, elem_id="ft-lr")
            self.batch_size = gr.Number(
                start.batch_size,
                precision=0,
                minimum=1,
                label="Batch size",
                min_width=90,
                elem_id="ft-batch-size",
                info=limit_note(settings.max_batch_size),
            )
            self.seed = gr.Number(
                start.seed, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", min_width=90, elem_id="ft-seed"
            )
        with gr.Row():
            self.eval_limit = gr.Number(
                start.data.eval_limit,
                precision=0,
                minimum=1,
                maximum=EVAL_LIMIT,
                min_width=90,
                label=f"Held-out records captioned (at most {EVAL_LIMIT})",
                elem_id="ft-eval-limit",
            )
            self.meteor = gr.Checkbox(
                start.data.meteor, label="METEOR too (needs Java; ~5 s per evaluation)", elem_id="ft-meteor"
            )

    def _results(self) -> None:
        # the action, what it will cost and how it goes, at the top, beside the loss plot
        with gr.Row():
            self.launch = gr.Button("Launch fine-tune", variant="primary", elem_id="ft-launch")
            self.cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
        self.estimate = gr.Markdown("", label="How long the run will take", elem_id="ft-estimate")
        self.status = gr.Markdown("Progress appears here.", label="Fine-tune status", elem_id="ft-status")
        # no fixed height: with one, Gradio 6.31 cuts the step axis's labels and title off; the title is the chart's own
        self.loss = gr.LinePlot(
            x="step", y="loss", title="Training loss", label="Training loss", show_label=False, elem_id="ft-loss"
        )
        self.summary = gr.Markdown(label="Fine-tune summary", elem_id="ft-summary")
        self.metrics = gr.Dataframe(
            headers=["metric", "before", "after", "change"],
            interactive=False,
            label="Held-out metrics (captions, or VQA answer accuracy)",
            elem_id="ft-metrics",
        )
        self.samples = gr.Dataframe(
            headers=["id", "reference", "before", "after"],
            interactive=False,
            wrap=True,
            column_widths=["16%", "28%", "28%", "28%"],
            label="Sample captions",
            elem_id="ft-samples",
        )
        self.layers = Figure(
            label="Adapted layers", download_name="finetune-adapted-layers", height=200, elem_id="ft-layers"
        )
        with gr.Row():
            self.download = gr.File(label="The adapter (peft) with run.json, zipped", elem_id="ft-download")
            self.use = gr.Button("Use the tuned model in the Explorer", interactive=False, elem_id="ft-use")

    def _wire(self) -> None:
        model = self.model
        self.archive.upload(lambda: UPLOADED_ZIP, None, self.source, api_visibility="private")
        self.archive.clear(lambda: SYNTHETIC, None, self.source, api_visibility="private")
        self.layer_list.input(lambda: "list", None, self.strategy, api_visibility="private")
        filled = [self.k, self.rank, self.steps, self.lr, self.batch_size, self.eval_limit, self.meteor]
        self.preset.input(self.apply_preset, [self.preset], filled, api_visibility="private")
        costs = [
            model.name,
            model.device,
            self.source,
            self.strategy,
            self.preset,
            self.steps,
            self.batch_size,
            self.eval_limit,
            self.task,
        ]
        for control in costs:
            control.change(self.show_estimate, costs, [self.estimate], api_visibility="private", show_progress="hidden")
        self.tabs.select(self.show_estimate, costs, [self.estimate], api_visibility="private", show_progress="hidden")
        self.launch.click(
            self.finetune,
            [
                self.state,
                self.dataset_state,
                model.name,
                model.device,
                self.source,
                self.archive,
                self.strategy,
                self.layer_list,
                self.k,
                self.rank,
                self.steps,
                self.lr,
                self.batch_size,
                self.seed,
                self.meteor,
                self.task,
                self.eval_limit,
                self.preset,
            ],
            [
                self.state,
                self.status,
                self.loss,
                self.metrics,
                self.summary,
                self.layers,
                self.samples,
                self.download,
                self.use,
                self.estimate,
            ],
            api_name="finetune",
            concurrency_limit=1,  # one run at a time (each holds a private copy of the model)
            show_progress_on=[self.status],
        )
        self.cancel.click(self.cancel_finetune, None, None, api_name="cancel_finetune")
        self.use.click(
            self.use_tuned_model,
            [self.state],
            [model.name, model.device, model.lora, model.status, model.lora_options, self.tabs, self.status],
            api_name="use_tuned_model",
        )
