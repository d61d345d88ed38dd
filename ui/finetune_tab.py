"""The Fine-tune tab: LoRA on chosen language-model layers of the Explorer's model (a private copy, so the
Explorer's cached model never carries LoRA and keeps serving), with live progress and a Cancel button;
the held-out records captioned (task `caption`) or their questions answered (task `vqa`: answer
accuracy) before and after; the adapter as a zip, and the tuned model back in the Explorer."""

from __future__ import annotations

import shutil
import threading

import gradio as gr
import numpy as np
import pandas as pd

from hi_core.base.errors import InputError
from hi_core.figures.plots import figure_to_array, layer_choices
from hi_core.method.layer_selection import needs_ranking
from hi_core.tuning.compare import METRICS
from hi_core.tuning.finetune import DataConfig, FinetuneConfig, TrainingCancelled
from hi_core.tuning.finetune_presets import DEMO_RATES, RANK_LIMIT, RunRates, finetune_preset
from hi_core.tuning.runs import RunRecord

from .components import BoundedTextbox, Figure
from .context import TUNED, AppContext
from .explorer import ModelControls, forget
from .feedback import reports_input_errors
from .finetune_run import FinetuneSession, Live, RankingCache, finetune_job, ranking_key
from .jobs import Jobs, duration, progress_bar
from .sources import DEMO_SET, SYNTHETIC, SYNTHETIC_SCENES, UPLOADED_ZIP

EVAL_LIMIT = 200  # held-out records captioned before and after tuning
MAX_LAYER_LIST_CHARS = 1000  # the "these:" layer list: far more than any model has layers
LOSS_POINTS = 1000  # at most this many points (+ the last) in the loss plot; run.json keeps every step
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
DEFAULT_PRESET = "quick"


def limit_note(limit: int | None) -> str | None:
    """A control's note of the deployment's limit (None: no limit, no note)."""
    return None if limit is None else f"at most {limit} here"


def live_status(live: Live, stopping: bool) -> str:
    """Stage, step, loss, elapsed time and what is left, as the run goes."""
    progress = live.progress
    stage = "Cancelling" if stopping else progress.stage[:1].upper() + progress.stage[1:]
    line = f"**{stage}...**"
    if progress.done:
        line += f" · step {progress.done} of {progress.total} · loss {live.losses[-1]:.3f}"
    line += f" · {duration(progress.elapsed)} elapsed"
    left = progress.seconds_left()
    if left is not None and progress.done < progress.total:
        line += f" · about {duration(left)} of training left"
    return line + progress_bar(progress.done, progress.total)


def loss_frame(losses: list[float]) -> pd.DataFrame:
    """(step, loss) rows for the live plot: every step, or every n-th and the last beyond LOSS_POINTS steps."""
    steps = np.arange(1, len(losses) + 1)
    if len(losses) > LOSS_POINTS:
        steps = np.unique(np.append(steps[:: -(-len(losses) // LOSS_POINTS)], len(losses)))
    return pd.DataFrame({"step": steps, "loss": np.asarray(losses, dtype=float)[steps - 1]})


def tuned_summary(session: FinetuneSession) -> str:
    after, ranking = session.after, session.ranking
    config = after.settings["config"]
    how = {
        "top": f"the top {config['k']} by HI",
        "bottom": f"the bottom {config['k']} by HI",
        "all": "every layer",
        "random": f"{config['k']} drawn at random, seed {config['seed']}",
        "list": "chosen by hand",
    }[after.strategy]
    return (
        f"**Tuned** `{session.load.model}` on {session.dataset}: LoRA rank {config['rank']} on layer(s) "
        f"{', '.join(map(str, after.layers))} of {after.num_layers} ({how}) · **trainable parameters** "
        f"{after.trainable_parameters:,} of {after.total_parameters:,} ({100 * after.trainable_share:.3g}%)  \n"
        + (f"**Ranking:** {ranking.source}  \n" if ranking is not None else "")
        + ("**Captioned before and after:** " if after.task != "vqa" else "**Questions answered before and after:** ")
        + f"{after.split['held_out']} held-out record(s); trained on {after.split['train']}. "
        + accuracy_line(session.before, after)
        + " ".join(note.rstrip(".") + "." for note in after.metric_notes)
    )


def accuracy_line(before: RunRecord, after: RunRecord) -> str:
    """VQA: the answer accuracy before and after tuning, each with its 95% interval over the held-out records."""

    def shown(record: RunRecord) -> str:
        interval = record.metric_intervals.get("accuracy")
        return f"**{record.metrics['accuracy']:.3f}**" + (
            f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""
        )

    if "accuracy" not in before.metrics or "accuracy" not in after.metrics:
        return ""
    return f"  \n**Answer accuracy** (95% interval): before {shown(before)} → after {shown(after)}.  \n"


def sample_frame(before: RunRecord, after: RunRecord) -> pd.DataFrame:
    """The held-out samples before and after; for VQA with the question, the reference answer and whether each
    answer is right."""
    untuned = {sample["id"]: sample for sample in before.samples}
    if after.task != "vqa":
        return pd.DataFrame(
            [
                [s["id"], s["reference"], untuned.get(s["id"], {}).get("generated", ""), s["generated"]]
                for s in after.samples
            ],
            columns=["id", "reference", "before", "after"],
        )

    def answer(sample: dict | None) -> str:
        return "" if sample is None else sample["generated"] + (" ✓" if sample.get("correct") else " ✗")

    return pd.DataFrame(
        [
            [s["id"], s.get("prompt", ""), s["reference"], answer(untuned.get(s["id"])), answer(s)]
            for s in after.samples
        ],
        columns=["id", "question", "answer", "before", "after"],
    )


def metric_rows(before: RunRecord, after: RunRecord) -> list[list]:
    return [
        [
            label,
            *(
                round(value, 4)
                for value in (before.metrics[key], after.metrics[key], after.metrics[key] - before.metrics[key])
            ),
        ]
        for key, label in METRICS.items()
        if key in before.metrics and key in after.metrics
    ]


def layers_figure(session: FinetuneSession) -> np.ndarray:
    after, ranking = session.after, session.ranking
    selected = np.zeros((1, after.num_layers), bool)  # (runs, layers)
    selected[0, after.layers] = True
    scores = None
    if ranking is not None:
        scores = np.zeros(after.num_layers)
        scores[list(ranking.layers)] = ranking.scores
    return figure_to_array(
        layer_choices(selected, [after.strategy], scores, title="Adapted layers (bars: layer scores)")
    )


class FinetuneTab:
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
            self.seed = gr.Number(0, precision=0, minimum=0, label="Seed", min_width=90, elem_id="ft-seed")
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
        self.archive.upload(lambda: UPLOADED_ZIP, None, self.source, api_name=False)
        self.archive.clear(lambda: SYNTHETIC, None, self.source, api_name=False)
        self.layer_list.input(lambda: "list", None, self.strategy, api_name=False)
        filled = [self.k, self.rank, self.steps, self.lr, self.batch_size, self.eval_limit, self.meteor]
        self.preset.input(self.apply_preset, [self.preset], filled, api_name=False)
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
            control.change(self.show_estimate, costs, [self.estimate], api_name=False, show_progress="hidden")
        self.tabs.select(self.show_estimate, costs, [self.estimate], api_name=False, show_progress="hidden")
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

    @reports_input_errors("status")  # not on a ZeroGPU worker: training outlasts a free visitor's GPU quota
    def finetune(
        self,
        previous: FinetuneSession | None,
        scored,
        model_name: str,
        device: str,
        source: str,
        archive: str | None,
        strategy: str,
        layer_list: str,
        k: int,
        rank: int,
        steps: int,
        lr: float,
        batch_size: int,
        seed: int,
        meteor: bool = True,
        task: str = "caption",
        eval_limit: int = EVAL_LIMIT,
        preset: str = DEFAULT_PRESET,
        request: gr.Request = None,
    ):
        if strategy == "list" and not (layer_list or "").strip():
            raise InputError("type the layers to tune, e.g. 0,2")
        config = FinetuneConfig(
            layers=layer_list if strategy == "list" else strategy,
            k=int(k or 0),
            rank=int(rank or 0),
            steps=int(steps or 0),
            lr=float(lr or 0),
            batch_size=int(batch_size or 0),
            seed=int(seed or 0),
            data=DataConfig(task=task, eval_limit=min(int(eval_limit or EVAL_LIMIT), EVAL_LIMIT), meteor=bool(meteor)),
        )
        self.context.settings.check_finetune(config)
        if source == UPLOADED_ZIP and not archive:
            raise InputError("upload a dataset .zip first, or choose another dataset")
        load = self.context.model_config(model_name, device)
        live, fresh = Live(config.steps), None
        with self.context.storage.run() as run_folder:
            try:
                with self.jobs.start(
                    request.session_hash,
                    lambda stop: finetune_job(
                        load,
                        config,
                        source,
                        archive,
                        run_folder,
                        scored,
                        live,
                        stop,
                        RANK_LIMIT[preset],
                        self.rankings,
                        self.context.cache,
                        self.context.settings,
                        self.context.storage,
                    ),
                ) as job:
                    for _ in job.ticks():
                        yield {self.status: live_status(live, job.stop.is_set()), self.loss: loss_frame(live.losses)}
                    fresh = job.result()
            except TrainingCancelled as cancelled:
                kept = " (below: the last finished run)" if previous is not None else ""
                said = str(cancelled)
                yield {
                    self.status: f"**{said[:1].upper() + said[1:]}**: nothing was saved{kept}."
                    + progress_bar(live.progress.done, config.steps),
                    self.loss: loss_frame(live.losses),
                }
            finally:
                if fresh is None:
                    shutil.rmtree(run_folder, ignore_errors=True)
        if fresh is not None:
            forget(previous)  # the previous run's files, now that this one stands
            self._measured(fresh)
            yield self._finished(fresh) | {
                self.estimate: self.show_estimate(
                    model_name, device, source, strategy, preset, steps, batch_size, eval_limit, task
                )
            }

    def _finished(self, session: FinetuneSession) -> dict:
        after = session.after
        shutil.make_archive(str(session.archive.with_suffix("")), "zip", root_dir=session.adapter)
        return {
            self.state: session,
            self.status: (
                f"**Finished:** {len(after.losses)} steps, final loss {after.losses[-1]:.3f}, "
                f"{after.timings['train_seconds']:.1f} s of training"
                + progress_bar(len(after.losses), len(after.losses))
            ),
            self.loss: loss_frame(after.losses),
            self.metrics: metric_rows(session.before, after),
            self.summary: tuned_summary(session),
            self.layers: layers_figure(session),
            self.samples: sample_frame(session.before, after),
            self.download: str(session.archive),
            self.use: gr.Button(interactive=True),
        }

    def apply_preset(self, preset: str):
        """The preset's settings in the controls."""
        config = finetune_preset(preset if preset in RANK_LIMIT else DEFAULT_PRESET)
        return {
            self.k: config.k,
            self.rank: config.rank,
            self.steps: config.steps,
            self.lr: config.lr,
            self.batch_size: config.batch_size,
            self.eval_limit: config.data.eval_limit,
            self.meteor: config.data.meteor,
        }

    def show_estimate(
        self,
        model_name: str,
        device: str,
        source: str,
        strategy: str,
        preset: str,
        steps: float | None,
        batch_size: float | None,
        eval_limit: float | None,
        task: str = "caption",
    ) -> str:
        """What a launch with these settings will take, from the rates this model's last run here measured."""
        with self._rates_lock:
            rates = self.rates.get((model_name or "").strip())
        if rates is None:
            return "_How long a run takes is shown once this model has finished a run on this server._"
        try:
            config = FinetuneConfig(layers="top", steps=int(steps or 0), batch_size=int(batch_size or 0))
            load = self.context.model_config(model_name, device)
        except (InputError, TypeError, ValueError):
            return ""  # the launch will say what is wrong
        scenes = {SYNTHETIC: SYNTHETIC_SCENES, DEMO_SET: len(self.context.examples)}.get(source)
        expected = max(1, round(scenes * DataConfig().eval_fraction)) if scenes else int(eval_limit or EVAL_LIMIT)
        held_out = min(expected, int(eval_limit or EVAL_LIMIT), EVAL_LIMIT)
        limit = RANK_LIMIT.get(preset, RANK_LIMIT[DEFAULT_PRESET])
        cached = source != UPLOADED_ZIP and self.rankings.get(ranking_key(load, source, task, limit)) is not None
        ranked = 0 if cached or not needs_ranking(strategy) else min(limit, scenes or limit)
        stages = rates.estimate(config, held_out, ranked)
        ranking = (
            f"ranking {ranked} records {duration(stages['ranking'])}"
            if ranked
            else "ranking: reused"
            if needs_ranking(strategy)
            else "no ranking"
        )
        return (
            f"**About {duration(stages['total'])}** to run: training {duration(stages['training'])}, captioning "
            f"{held_out} held-out records twice {duration(stages['captioning'])}, {ranking}; loading and METEOR "
            f"not counted. Rates {rates.source}."
        )

    def _measured(self, session: FinetuneSession) -> None:
        """This model's rates, from the run just finished."""
        before, after, work = session.before, session.after, session.ranking_work
        captioned = max(1, int(after.split["held_out"]))
        batch = int(after.settings["config"]["batch_size"])
        measured = dict(
            train_sample_s=after.timings["seconds_per_step"] / batch,
            caption_s=(before.timings["eval_seconds"] + after.timings["eval_seconds"]) / (2 * captioned),
            rank_s=work.seconds / work.ranked if work.ranked else None,
            source="measured by this server's last run of this model",
        )
        with self._rates_lock:
            known = self.rates.get(session.load.model)
            self.rates[session.load.model] = (
                known.updated(**measured)
                if known is not None
                else RunRates(**{**measured, "rank_s": measured["rank_s"] or 0.0})
            )

    def cancel_finetune(self, request: gr.Request):
        if not self.jobs.cancel(request.session_hash):
            gr.Warning("Nothing is training in this session.")

    @reports_input_errors("status")
    def use_tuned_model(self, session: FinetuneSession | None, progress=gr.Progress()):
        if session is None:
            raise InputError("fine-tune a model first")
        context, model = self.context, self.model
        lora = TUNED + session.run_folder.name
        loaded = context.get_model(
            context.model_config(session.load.model, session.load.device, lora, session), progress
        )
        return {
            model.name: session.load.model,
            model.device: session.load.device,
            model.lora: lora,
            model.status: context.loaded_message(loaded),
            model.lora_options: gr.Accordion(open=True),
            self.tabs: gr.Tabs(selected="explorer"),
        }
