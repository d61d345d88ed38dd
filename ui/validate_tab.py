"""The Validate tab: does HI find the heads that matter, for the Explorer's model on a dataset? Every head (or a
sample) removed in turn, teacher-forced on held-out records, against HI and three other rankings; the dose-response
against random orders (`hi_core.causal.validation`). A background job with progress and Cancel; in public, a run is
refused when its estimated time (from its first pass) is over `Settings.max_validation_minutes`."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import gradio as gr

from hi_core.base.errors import InputError
from hi_core.causal.head_ablation import AblationMode
from hi_core.causal.validation import EXPLORER_HELD_OUT, EXPLORER_VALIDATION, ValidationConfig, validate
from hi_core.causal.validation_report import METRICS, RANKING_NAMES, write_validation_report
from hi_core.data.datasets import Cancelled
from hi_core.model.loading import Device, LoadConfig
from hi_core.tuning.finetune import Task

from .components import Figure
from .context import AppContext
from .explorer_parts import ModelControls
from .feedback import reports_input_errors
from .jobs import Jobs, Progress, duration, progress_bar, session_key
from .settings import scrub_paths
from .sources import DEMO_SET, SYNTHETIC, UPLOADED_ZIP, dataset_folder, record_limits

TASKS = [("captioning: the key phrase's tokens", "caption"), ("closed-form VQA: the answer's tokens", "vqa")]
SOURCES = [("the synthetic scenes", SYNTHETIC), ("the demo set", DEMO_SET), ("a .zip of your own", UPLOADED_ZIP)]
START = EXPLORER_VALIDATION  # the run the page starts from; its controls change these fields


@dataclass
class ValidateLive:
    """A running validation as the page shows it (written by the worker, read by the event's loop)."""

    progress: Progress = field(default_factory=lambda: Progress(total=1))
    estimate: str = ""

    def report(self, stop: threading.Event):
        def progress(stage: str, done: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled("cancelled")
            if stage == "estimate":
                self.estimate = f"about {duration(done)} for {total} passes over the held-out records"
                return
            if stage != self.progress.stage:
                self.progress = Progress(total=max(total, 1), stage=stage)
            self.progress.done = done

        return progress


def live_status(live: ValidateLive, stopping: bool) -> str:
    stage = "Cancelling" if stopping else live.progress.stage[:1].upper() + live.progress.stage[1:]
    line = f"**{stage}...** · {live.progress.done} of {live.progress.total} · {duration(live.progress.elapsed)}"
    if live.estimate:
        line += f" · in all: {live.estimate}"
    return line + progress_bar(live.progress.done, live.progress.total)


def summary(data: dict) -> str:
    """The headline: HI's and the baselines' Spearman with the loss effect (first mode), and the dose-response at the
    largest k against the random band."""
    mode = next(iter(data["correlations"]))
    rankings = data["correlations"][mode]["loss"]
    rows = ["| ranking | Spearman [95% over heads] | within-layer p | layer-partial rho |", "|---|---|---|---|"]
    for name, entry in rankings.items():
        low, high = entry["interval_heads"]
        partial = entry["layer_partial"]
        rows.append(
            f"| {RANKING_NAMES[name]} | {_n(entry['spearman'])} [{_n(low)}, {_n(high)}] | "
            f"{_n(entry['within_layers_p'])} | "
            f"{'n/a' if partial is None else _n(partial['rho'])} |"
        )
    dose = data["dose_response"]
    k = dose["ks"][-1]
    band = dose.get("random")
    curve = (
        f"With the top {k} heads by HI removed the loss is {_n(dose['hi']['loss'][-1])} (baseline "
        f"{_n(dose['hi']['loss'][0])}); {k} random heads: {_n(band['loss_mean'][-1])} "
        f"[{_n(band['loss_low'][-1])}, {_n(band['loss_high'][-1])}]."
        if band
        else ""
    )
    split = data["split"]
    return (
        f"**{len(data['heads_removed'])} heads removed one at a time** ({mode} ablation), teacher-forced on "
        f"{split['held_out']} held-out records; rankings from {split['ranking_records']} training records; "
        f"{data['seconds']:.0f} s. Effect: the {METRICS['loss']}.\n\n" + "\n".join(rows) + f"\n\n{curve}\n\n"
        "Few heads and few records make wide intervals: read them, not only the point estimates. Every number "
        "is in the downloads (validation.json, report.md)."
    )


def _n(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class ValidateTab:
    """The Validate tab, built inside a `gr.Tab` (the Explorer's model controls are shared)."""

    def __init__(self, context: AppContext, model: ModelControls) -> None:
        self.context, self.model, self.jobs = context, model, Jobs()
        settings = context.settings
        limit = (
            f" This deployment refuses a run estimated over {settings.max_validation_minutes:g} min."
            if settings.max_validation_minutes
            else ""
        )
        gr.Markdown(
            "Does HI find the heads the model needs? Each head of the Explorer's model is removed in turn and the "
            "held-out records are run teacher-forced (no generation): the rise in the loss of the scored tokens is "
            "the head's effect, correlated with HI and with three other rankings (attention mass on the object, "
            "localization heads, gradient importance), and heads are removed cumulatively in each order against "
            "random orders. The CLI's `validate` runs the same, at any size." + limit
        )
        with gr.Row():
            self.source = gr.Radio(SOURCES, value=SYNTHETIC, label="Dataset", elem_id="val-source")
            self.archive = gr.File(label="Dataset .zip", file_types=[".zip"], elem_id="val-archive")
            self.task = gr.Radio(TASKS, value=START.data.task, label="Task", elem_id="val-task")
        with gr.Row():
            self.heads = gr.Number(
                START.heads or 0,
                precision=0,
                minimum=0,
                label="Heads removed one by one (0: every head)",
                elem_id="val-heads",
            )
            self.orders = gr.Slider(
                5,
                ValidationConfig.orders,  # up to the CLI's default
                value=START.orders,
                step=5,
                label="Random orders (and as many layer-matched)",
                elem_id="val-orders",
            )
            self.held_out = gr.Slider(
                8, EXPLORER_HELD_OUT, value=EXPLORER_HELD_OUT, step=8, label="Held-out records", elem_id="val-held-out"
            )
            self.modes = gr.CheckboxGroup(
                list(get_args(AblationMode)), value=list(START.modes), label="Ablation", elem_id="val-modes"
            )
        with gr.Row():
            self.run = gr.Button("Validate", variant="primary", elem_id="val-run")
            self.cancel = gr.Button("Cancel", variant="stop", elem_id="val-cancel")
        self.status = gr.Markdown(elem_id="val-status")
        self.summary = gr.Markdown(elem_id="val-summary")
        with gr.Row():
            self.scatter = Figure("Effect of removing each head against its HI", "hi-validate-effect")
            self.curves = Figure("Dose-response", "hi-validate-dose")
        self.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="val-downloads")
        self.run.click(
            self.validate,
            [
                model.name,
                model.device,
                self.source,
                self.archive,
                self.task,
                self.heads,
                self.orders,
                self.held_out,
                self.modes,
            ],
            [self.status, self.summary, self.scatter, self.curves, self.downloads],
            api_name="validate",
            concurrency_limit=1,
            show_progress_on=[self.status],
        )
        self.cancel.click(self.cancel_validation, None, None, api_name="cancel_validation")

    @reports_input_errors("status")
    def validate(
        self,
        model_name: str,
        device: Device,
        source: str,
        archive: str | None,
        task: Task,
        heads: float,
        orders: float,
        held_out: float,
        modes: list[AblationMode],
        request: gr.Request | None = None,
    ):
        context = self.context
        if source == UPLOADED_ZIP and not archive:
            raise InputError("upload a dataset .zip first, or choose another dataset")
        cap = min(EXPLORER_HELD_OUT, context.settings.max_dataset_images or EXPLORER_HELD_OUT)
        held = max(2, min(int(held_out or EXPLORER_HELD_OUT), cap))
        config = replace(
            START,
            modes=tuple(modes or ()),
            heads=int(heads or 0) or None,
            orders=int(orders or START.orders),
            data=replace(START.data, task=task, eval_limit=held),
        )
        load = context.model_config(model_name, device)
        limit = (
            None if context.settings.max_validation_minutes is None else context.settings.max_validation_minutes * 60
        )
        live = ValidateLive()
        with context.storage.run() as run_folder:
            try:
                with self.jobs.start(
                    session_key(request),
                    lambda stop: self._work(load, source, archive, task, config, run_folder, live.report(stop), limit),
                ) as job:
                    for _ in job.ticks():
                        yield {self.status: live_status(live, job.stop.is_set())}
                    data = job.result()
            except Cancelled:
                shutil.rmtree(run_folder, ignore_errors=True)
                yield {self.status: "**Cancelled**: nothing of it was kept."}
                return
            except BaseException:
                shutil.rmtree(run_folder, ignore_errors=True)
                raise
        out = run_folder / "validation"
        yield {
            self.status: f"**Finished** in {duration(data['seconds'])}.",
            self.summary: summary(data),
            self.scatter: str(out / "effect_vs_hi.png"),
            self.curves: str(out / "dose_response.png"),
            self.downloads: [str(out / "validation.json"), str(out / "report.md")],
        }

    def _work(
        self,
        load: LoadConfig,
        source: str,
        archive: str | None,
        task: Task,
        config: ValidationConfig,
        run_folder: Path,
        progress,
        limit: float | None,
    ) -> dict:
        """In the worker thread: the dataset, the model (from the cache), the validation and its report."""
        progress("reading the dataset", 0, 1)
        folder, _ = dataset_folder(source, archive, run_folder, task, self.context.settings, self.context.storage)
        loaded = self.context.get_model(load)
        validation = validate(
            loaded,
            folder,
            config,
            progress=progress,
            time_limit_s=limit,
            image_limits=record_limits(self.context.settings),
        )
        validation = _shown(validation, self.context)
        return write_validation_report(validation, run_folder / "validation", resamples=1000, permutations=2000)

    def cancel_validation(self, request: gr.Request):
        if not self.jobs.cancel(session_key(request)):
            gr.Info("no validation is running in this session")


def _shown(validation, context: AppContext):
    """The validation as the page may show it: no server paths in its dataset or split description."""
    split = dict(validation.split, how=scrub_paths(str(validation.split["how"])))
    return replace(
        validation, model=context.shown(validation.model), dataset=scrub_paths(validation.dataset), split=split
    )
