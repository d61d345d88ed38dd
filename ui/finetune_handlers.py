"""The Fine-tune tab's handlers: launch a run (streaming its progress), cancel it, fill a preset's settings,
estimate a launch's time from the rates measured here, and take the tuned model to the Explorer. Each returns
`{component: value}` updates for the components `finetune_tab` lays out, drawn by `finetune_views`."""

from __future__ import annotations

import shutil
import threading
from typing import Literal

import gradio as gr

from hi_core.base.errors import InputError
from hi_core.method.layer_selection import Strategy, needs_ranking, parse_layer_choice
from hi_core.model.loading import Device
from hi_core.tuning.finetune import DataConfig, FinetuneConfig, Task
from hi_core.tuning.finetune_presets import DEFAULT_PRESET, RANK_LIMIT, Preset, RunRates, finetune_preset
from hi_core.tuning.training import TrainingCancelled

from .budget import forget
from .components import Figure
from .context import TUNED, AppContext
from .explorer_parts import ModelControls
from .feedback import reports_input_errors
from .finetune_run import FinetuneSession, Live, RankingCache, finetune_job, ranking_key
from .finetune_views import layers_figure, live_status, loss_frame, metric_rows, sample_frame, tuned_summary
from .jobs import Jobs, duration, progress_bar, session_key
from .sources import DEMO_SET, SYNTHETIC, SYNTHETIC_SCENES, UPLOADED_ZIP

EVAL_LIMIT = 200  # held-out records captioned before and after tuning
#: The "Layers to tune" choices: a strategy, or "list" (the layers typed beside it)
LayerStrategy = Strategy | Literal["list"]


class FinetuneParts:
    """What `FinetuneTab` builds (annotations only: the tab assigns each) and its handlers use."""

    context: AppContext
    model: ModelControls  # the Explorer's
    tabs: gr.Tabs  # the app's tabs: "Use the tuned model" selects the Explorer
    state: gr.State  # this session's last finished run (a `FinetuneSession`)
    jobs: Jobs  # each session's running fine-tune, for its Cancel
    rankings: RankingCache
    rates: dict[str, RunRates]  # model name -> the rates its last run here measured
    _rates_lock: threading.Lock

    # the settings a preset fills
    k: gr.Number
    rank: gr.Number
    steps: gr.Number
    lr: gr.Number
    batch_size: gr.Number
    eval_limit: gr.Number
    meteor: gr.Checkbox

    # the run and its results
    estimate: gr.Markdown
    status: gr.Markdown
    loss: gr.LinePlot
    summary: gr.Markdown
    metrics: gr.Dataframe
    samples: gr.Dataframe
    layers: Figure
    download: gr.File
    use: gr.Button


class FinetuneHandlers(FinetuneParts):
    """The handlers of `FinetuneTab` (mixed into it): they read `context`, `jobs`, `rankings`, `rates` and the
    components its layout builds, all declared in `FinetuneParts`."""

    @reports_input_errors("status")  # not on a ZeroGPU worker: training outlasts a free visitor's GPU quota
    def finetune(
        self,
        previous: FinetuneSession | None,
        scored,
        model_name: str,
        device: Device,
        source: str,
        archive: str | None,
        strategy: LayerStrategy,
        layer_list: str,
        k: int,
        rank: int,
        steps: int,
        lr: float,
        batch_size: int,
        seed: int,
        meteor: bool = True,
        task: Task = "caption",
        eval_limit: int = EVAL_LIMIT,
        preset: Preset = DEFAULT_PRESET,
        request: gr.Request | None = None,
    ):
        if strategy == "list" and not (layer_list or "").strip():
            raise InputError("type the layers to tune, e.g. 0,2")
        config = FinetuneConfig(
            layers=parse_layer_choice(layer_list) if strategy == "list" else strategy,
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
                    session_key(request),
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

    def apply_preset(self, preset: Preset):
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
        device: Device,
        source: str,
        strategy: LayerStrategy,
        preset: Preset,
        steps: float | None,
        batch_size: float | None,
        eval_limit: float | None,
        task: Task = "caption",
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
        ranking_needed = strategy != "list" and needs_ranking(strategy)
        ranked = 0 if cached or not ranking_needed else min(limit, scenes or limit)
        stages = rates.estimate(config, held_out, ranked)
        ranking = (
            f"ranking {ranked} records {duration(stages['ranking'])}"
            if ranked
            else "ranking: reused"
            if ranking_needed
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
        train_sample_s = after.timings["seconds_per_step"] / batch
        caption_s = (before.timings["eval_seconds"] + after.timings["eval_seconds"]) / (2 * captioned)
        rank_s = work.seconds / work.ranked if work.ranked else None  # None: no record ranked (reused, or not needed)
        source = "measured by this server's last run of this model"
        with self._rates_lock:
            known = self.rates.get(session.load.model)
            self.rates[session.load.model] = (
                known.updated(train_sample_s, caption_s, rank_s, source)
                if known is not None
                else RunRates(train_sample_s, caption_s, rank_s or 0.0, source)
            )

    def cancel_finetune(self, request: gr.Request):
        if not self.jobs.cancel(session_key(request)):
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
