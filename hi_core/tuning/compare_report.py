"""The report of a comparison (`compare.py`): `results.json`, `report.md` (settings, the table of
metrics per strategy with 95% intervals, the differences) and the figures `metrics.png`, `loss.png`,
`layers.png`, each written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..base.outputs import atomic_path, write_json
from ..method.head_selection import format_heads
from .compare import HEAD_STRATEGIES, METRICS, Comparison, run_name


def _save(figure: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)


def write_report(comparison: Comparison, out: Path) -> None:
    """results.json, report.md and the figures, each written atomically."""
    from ..figures.plots import layer_choices, loss_curves, metric_bars  # matplotlib only when a report is written

    summary = comparison.summary()
    strategies = list(summary)
    metrics = comparison.metric_names()

    def column(key: str) -> np.ndarray:
        return np.array(
            [
                [
                    np.nan if summary[s]["metrics"].get(m, {}).get(key) is None else summary[s]["metrics"][m][key]
                    for m in metrics
                ]
                for s in strategies
            ],
            dtype=np.float64,
        )

    if metrics:
        _save(
            metric_bars(strategies, [METRICS[m] for m in metrics], column("mean"), column("low"), column("high")),
            out / "metrics.png",
        )
    curves: dict[str, Sequence[np.ndarray]] = {
        s: [np.asarray(r.losses) for r in records] for s, records in comparison.runs.items() if records[0].losses
    }
    if curves:
        _save(loss_curves(curves), out / "loss.png")
    labelled = [
        (run_name(r), r.layers) for records in comparison.runs.values() for r in records if r.strategy != "pretrained"
    ]
    if labelled:
        num_layers = next(iter(comparison.runs.values()))[0].num_layers
        selected = np.zeros((len(labelled), num_layers), dtype=bool)
        for row, (_, layers) in enumerate(labelled):
            selected[row, layers] = True
        scores = None
        if comparison.ranking is not None:
            scores = np.zeros(num_layers)
            scores[list(comparison.ranking.layers)] = comparison.ranking.scores
        _save(layer_choices(selected, [label for label, _ in labelled], scores), out / "layers.png")
    write_json(out / "results.json", comparison.to_json())
    with atomic_path(out / "report.md") as temporary:
        temporary.write_text(report_markdown(comparison), encoding="utf-8")


def _cell(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if entry is None:
        return "-"
    if entry["low"] is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def report_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown report: settings, the table with 95% intervals, differences."""
    data = comparison.to_json()
    summary = data["strategies"]
    metrics = comparison.metric_names()
    tuned = comparison.config.finetune
    ranking = comparison.ranking
    heads_only = not comparison.config.uses_layers() and any(s in HEAD_STRATEGIES for s in comparison.config.strategies)
    lines = [
        "# LoRA on the top-HI heads against other heads"
        if heads_only
        else "# LoRA layer selection: top-k HI layers against the same budget elsewhere",
        "",
        f"- model: `{comparison.model}` ({data['num_layers']} language-model layers); dataset: `{comparison.dataset}` "
        f"({data['split']['train']} training records, {data['split']['held_out']} held out; {data['split']['how']})",
        f"- LoRA: k = {tuned.k}, rank {tuned.rank}, alpha {tuned.alpha:g}, dropout {tuned.dropout:g}, lr {tuned.lr:g}, "
        f"{tuned.steps} steps x batch {tuned.batch_size}, {tuned.schedule} schedule with {tuned.warmup:.0%} warm-up; "
        f"seeds {tuned.seed}..{tuned.seed + comparison.config.seeds - 1}",
    ]
    if ranking is not None:
        order = ", ".join(f"{layer} ({score:.3f})" for layer, score in zip(ranking.layers, ranking.scores))
        lines.append(f"- ranking (layer score, best first): {order}; from {ranking.source}")
    head_runs = [r for records in comparison.runs.values() for r in records if r.heads is not None]
    if head_runs:
        shape = head_runs[0]
        sharing = (
            f"{shape.num_heads} query heads share {shape.num_kv_heads} KV heads per layer"
            if shape.num_kv_heads != shape.num_heads
            else "no grouped-query attention: each query head has its own KV head"
        )
        lines.append(
            f"- head strategies: head-level LoRA on {comparison.heads_k} heads (default: k x {shape.num_heads} heads "
            f"per layer, as many heads as k layers hold), on the layers holding them, restricted to their q rows, "
            f"the k/v rows of the KV heads they read ({sharing}) and their o columns; the shared LoRA factors "
            "of each wrapped layer (4 x rank x hidden) make the counts differ with the number of layers the heads "
            "fall in"
        )
    head_ranking = comparison.head_ranking
    if head_ranking is not None:
        best = ", ".join(
            f"{layer}:{h} ({score:.3f})" for (layer, h), score in zip(head_ranking.heads[:12], head_ranking.scores[:12])
        )
        lines.append(
            f"- head ranking (HI, best first): {best}{', ...' if len(head_ranking.heads) > 12 else ''}; "
            f"from {head_ranking.source}"
        )
    if data["task"] == "vqa":
        lines.append(
            "- task: closed-form VQA (each record's prompt is its question, its text the answer); answer accuracy = "
            "normalized exact match (the VQA evaluation's normalization)"
        )
    pretrained = summary.get("pretrained", {}).get("metrics", {})
    wilson = any(entry.get("interval") == "held-out records" for entry in pretrained.values())
    lines += [
        "- cells: mean over seeds [95% t-interval]; `pretrained` is one deterministic run"
        + (" [its answer accuracy: 95% Wilson interval over the held-out records]" if wilson else ""),
        "",
        "| strategy | layers (per seed) | "
        + ("heads (per seed) | " if head_runs else "")
        + "trainable parameters | "
        + " | ".join(METRICS[m] for m in metrics)
        + " | final loss |",
        "|---|---|---|" + ("---|" if head_runs else "") + "---|" * len(metrics) + "---|",
    ]
    for strategy, entry in summary.items():
        layers = " / ".join(",".join(str(layer) for layer in layers) or "-" for layers in entry["layers"])
        heads = " / ".join(format_heads([tuple(h) for h in chosen]) for chosen in entry.get("heads", [])) or "-"
        counts = entry["trainable_per_run"]
        share = (
            f"{counts[0]:,} ({entry['trainable_share']:.3%})"
            if len(set(counts)) == 1
            else " / ".join(f"{n:,}" for n in counts)
        )
        cells = [_cell(entry["metrics"].get(m)) for m in metrics]
        lines.append(
            f"| {strategy} | {layers} | "
            + (f"{heads} | " if head_runs else "")
            + f"{share} | "
            + " | ".join(cells)
            + f" | {_cell(entry['final_loss'])} |"
        )
    for name, differences in data["differences"].items():
        lines += [
            "",
            f"**{name}** (difference of means, 95% Welch interval; "
            f"an interval above 0 favours {name.split(' - ')[0]}):",
            "",
        ]
        for metric, value in differences.items():
            if value is not None:
                lines.append(
                    f"- {METRICS[metric]}: {value['difference']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"
                )
    lines += ["", "Notes: " + "; ".join(data["metric_notes"]) + "." if data["metric_notes"] else ""]
    if comparison.reused:
        lines += ["", f"Reused finished runs: {', '.join(comparison.reused)}."]
    lines += ["", "![metrics](metrics.png)", "", "![loss](loss.png)", "", "![layers](layers.png)", ""]
    return "\n".join(lines)
