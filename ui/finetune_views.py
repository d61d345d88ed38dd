"""What the Fine-tune tab shows of a run: the live status line and loss plot while it trains; once finished, the
summary, the before/after metrics and samples, and the adapted layers over the layer scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hi_core.figures.plots import figure_to_array, layer_choices
from hi_core.tuning.compare import METRICS
from hi_core.tuning.run_folders import RunRecord

from .finetune_run import FinetuneSession, Live
from .jobs import duration, progress_bar

LOSS_POINTS = 1000  # at most this many points (+ the last) in the loss plot; run.json keeps every step


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
