"""The report of `validate`: statistics of each ranking against the effect of removing each head, the dose-response
curves against their random bands, as JSON (validation.json), Markdown (report.md) and two figures.

The effects are per head (removed alone) and per held-out record; a head's effect is its mean over the records.
Intervals: percentile bootstrap over heads and over records (`validation_stats`); the within-layer permutation
test and the layer-partial correlation hold depth fixed. The rankings are compared pairwise with HI (the difference
of their Spearman's rho, paired over heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..base.outputs import atomic_path, check_output_folder, json_number, write_json
from .validation import RANKINGS, Validation
from .validation_stats import (
    bootstrap_difference,
    bootstrap_heads,
    bootstrap_records,
    layer_partial_correlation,
    layer_permutation_test,
    rank_correlations,
)

METRICS = {"loss": "rise in the scored tokens' loss", "first_token": "drop in first-token accuracy"}
RANKING_NAMES = {
    "hi": "HI",
    "mass": "attention mass on the object",
    "localization": "localization heads (sum + spatial entropy)",
    "gradient": "gradient importance",
}
RESULTS, REPORT, SCATTER, CURVES = "validation.json", "report.md", "effect_vs_hi.png", "dose_response.png"


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else (f"{value:.2g}" if value >= 1e-4 else "<1e-4")


def correlation_entry(
    scores: np.ndarray, per_record: np.ndarray, layers: np.ndarray, seed: int, resamples: int, permutations: int
) -> dict[str, Any]:
    """Every statistic of one ranking against one effect; `per_record` is (heads, records). NaN statistics (an effect
    that no head changes, say) come out as None."""
    effect = per_record.mean(axis=1)
    correlation = rank_correlations(scores, effect)
    partial = layer_partial_correlation(scores, effect, layers) if len(set(layers)) + 1 < len(layers) else None
    return {
        "spearman": json_number(correlation.spearman),
        "spearman_p": json_number(correlation.spearman_p),
        "kendall": json_number(correlation.kendall),
        "kendall_p": json_number(correlation.kendall_p),
        "interval_heads": [json_number(v) for v in bootstrap_heads(scores, effect, resamples, seed)],
        "interval_records": [json_number(v) for v in bootstrap_records(scores, per_record, resamples, seed)],
        "within_layers_p": json_number(layer_permutation_test(scores, effect, layers, permutations, seed).p_value),
        "layer_partial": None
        if partial is None
        else {"rho": json_number(partial.rho), "p": json_number(partial.p_value), "dof": partial.dof},
    }


def summarize(validation: Validation, resamples: int = 2000, permutations: int = 10_000) -> dict[str, Any]:
    """validation.json's data."""
    heads = validation.heads
    index = tuple(np.array(heads).T)
    layers = np.array([layer for layer, _ in heads])
    seed = validation.config.seed
    correlations: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    for mode, effects in validation.effects.items():
        correlations[mode], comparisons[mode] = {}, {}
        for column, metric in enumerate(METRICS):
            per_record = effects[:, :, column]
            effect = per_record.mean(axis=1)
            correlations[mode][metric] = {
                name: correlation_entry(
                    validation.scores[name][index], per_record, layers, seed, resamples, permutations
                )
                for name in RANKINGS
            }
            comparisons[mode][metric] = {
                name: dict(
                    zip(
                        ("difference", "low", "high"),
                        map(
                            json_number,
                            bootstrap_difference(
                                validation.scores["hi"][index], validation.scores[name][index], effect, resamples, seed
                            ),
                        ),
                    )
                )
                for name in RANKINGS
                if name != "hi"
            }
    return {
        "model": validation.model,
        "dataset": validation.dataset,
        "task": validation.task,
        "split": validation.split,
        "seconds": round(validation.seconds, 1),
        "config": {
            "modes": list(validation.config.modes),
            "heads": validation.config.heads,
            "orders": validation.config.orders,
            "ranking_records": validation.config.ranking_records,
            "mean_records": validation.config.mean_records,
            "selected": validation.config.selected,
            "seed": seed,
            "resamples": resamples,
            "permutations": permutations,
            "prompt": validation.config.data.prompt,
            "eval_fraction": validation.config.data.eval_fraction,
        },
        "heads_removed": [list(head) for head in heads],
        "heads_in_model": int(np.isfinite(validation.scores["hi"]).sum()),
        "baseline": {
            "records": len(validation.record_ids),
            "loss": float(validation.baseline[:, 0].mean()),
            "first_token_accuracy": float(validation.baseline[:, 1].mean()),
        },
        "scores": {name: [[json_number(v) for v in row] for row in validation.scores[name]] for name in RANKINGS},
        "effects": {
            mode: {
                metric: [float(v) for v in effects[:, :, column].mean(axis=1)] for column, metric in enumerate(METRICS)
            }
            for mode, effects in validation.effects.items()
        },
        "correlations": correlations,
        "hi_against": comparisons,
        "dose_response": dose_summary(validation),
    }


def dose_summary(validation: Validation) -> dict[str, Any]:
    """Each ranking's curve and the random and layer-matched orders' mean and 95% band, per k (loss and accuracy)."""
    entry: dict[str, Any] = {
        "ks": validation.ks,
        "orders": {name: len(curves) for name, curves in validation.curves.items()},
    }
    for name, curves in validation.curves.items():
        if name in RANKINGS:  # one order each (the random groups may hold one order too: `--orders 1`)
            entry[name] = {"loss": curves[0, :, 0].tolist(), "first_token_accuracy": curves[0, :, 1].tolist()}
        else:
            entry[name] = {
                f"{metric}_{what}": getattr(np, function)(curves[:, :, column], *args, axis=0).tolist()
                for column, metric in enumerate(("loss", "first_token_accuracy"))
                for what, function, args in (
                    ("mean", "mean", ()),
                    ("low", "percentile", (2.5,)),
                    ("high", "percentile", (97.5,)),
                )
            }
    return entry


def _rankings_from(split: dict[str, Any]) -> str:
    records = f"{split['ranking_records']} training records"
    if split.get("hi") == "given":
        return f"HI as given (e.g. a `score --dataset` JSON), the other rankings from {records}"
    return f"rankings from {records}"


def hi_label(split: dict[str, Any]) -> str:
    return "HI (as given)" if split.get("hi") == "given" else "HI (mean over the ranking records)"


def report_markdown(validation: Validation, data: dict[str, Any]) -> str:
    split, config = data["split"], data["config"]
    sampled = (
        f"a seeded sample of {len(data['heads_removed'])} of the {data['heads_in_model']} heads"
        if len(data["heads_removed"]) < data["heads_in_model"]
        else f"all {data['heads_in_model']} heads"
    )
    lines = [
        f"# Does HI find the heads that matter? `{data['model']}` on `{Path(data['dataset']).name}` ({data['task']})",
        "",
        f"Each of {sampled} removed alone ({', '.join(config['modes'])} ablation), "
        f"teacher-forced on {split['held_out']} "
        f"held-out records ({split['how']}); {_rankings_from(split)}. Baseline: loss "
        f"{data['baseline']['loss']:.3f}, first-token accuracy {data['baseline']['first_token_accuracy']:.1%}. "
        f"Intervals: 95% percentile bootstrap ({config['resamples']} resamples) over heads and over records; "
        f"within-layer p: {config['permutations']} permutations of the scores inside each layer. "
        f"Seed {config['seed']}; "
        f"{data['seconds']:.0f} s.",
        "",
        f"Few heads and few records make wide intervals: n = {len(data['heads_removed'])} heads, {split['held_out']} "
        "records; read the intervals, not only the point estimates.",
        "",
    ]
    for mode, metrics in data["correlations"].items():
        for metric, rankings in metrics.items():
            lines += [
                f"## {METRICS[metric].capitalize()} ({mode} ablation)",
                "",
                "| ranking | Spearman | 95% over heads | 95% over records | Kendall | within-layer p "
                "| layer-partial rho (p) | HI minus this ranking's rho [95%] |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, entry in rankings.items():
                against = data["hi_against"][mode][metric].get(name)
                partial = entry["layer_partial"]
                lines.append(
                    f"| {RANKING_NAMES[name]} | {_number(entry['spearman'])} | "
                    f"[{_number(entry['interval_heads'][0], 2)}, {_number(entry['interval_heads'][1], 2)}] | "
                    f"[{_number(entry['interval_records'][0], 2)}, {_number(entry['interval_records'][1], 2)}] | "
                    f"{_number(entry['kendall'])} | {_p(entry['within_layers_p'])} | "
                    + ("n/a" if partial is None else f"{_number(partial['rho'])} ({_p(partial['p'])})")
                    + " | "
                    + (
                        ""
                        if against is None
                        else f"{_number(against['difference'])} "
                        f"[{_number(against['low'], 2)}, {_number(against['high'], 2)}]"
                    )
                    + " |"
                )
            lines.append("")
    dose = data["dose_response"]
    lines += [
        "## Dose-response: heads removed cumulatively (zero ablation)",
        "",
        f"Loss of the scored tokens with the first k heads of each order removed; "
        f"random: {dose['orders'].get('random', 0)} "
        f"orders, layer-matched: {dose['orders'].get('layer-matched', 0)} (HI's layers at every k, other heads); "
        "bands: 2.5-97.5 percentiles of those orders.",
        "",
        "| k | "
        + " | ".join(RANKING_NAMES[name] for name in RANKINGS)
        + " | random mean [band] | layer-matched mean [band] |",
        "|---|" + "---|" * (len(RANKINGS) + 2),
    ]
    for column, k in enumerate(dose["ks"]):
        cells = [_number(dose[name]["loss"][column]) for name in RANKINGS]
        for name in ("random", "layer-matched"):
            band = dose.get(name)
            cells.append(
                "n/a"
                if band is None
                else f"{_number(band['loss_mean'][column])} "
                f"[{_number(band['loss_low'][column], 2)}, {_number(band['loss_high'][column], 2)}]"
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"![effect against HI]({SCATTER})", "", f"![dose-response]({CURVES})", ""]
    return "\n".join(lines)


def draw_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The report's two figures (file name -> matplotlib Figure) from validation.json's data alone."""
    from ..figures.plots import dose_response_figure, effect_scatter  # matplotlib only when a report is written

    heads = data["heads_removed"]
    hi = np.array([data["scores"]["hi"][layer][head] for layer, head in heads], dtype=float)
    effects = {mode: np.asarray(values["loss"]) for mode, values in data["effects"].items()}
    return {
        SCATTER: effect_scatter(hi, effects, [layer for layer, _ in heads], hi_label(data["split"])),
        CURVES: dose_response_figure(data["dose_response"], list(RANKINGS), RANKING_NAMES),
    }


def write_figures(data: dict[str, Any], out: Path) -> None:
    for name, figure in draw_figures(data).items():
        with atomic_path(out / name) as temporary:
            figure.savefig(temporary, format="png", dpi=110)


def write_validation_report(
    validation: Validation, out: str | Path, resamples: int = 2000, permutations: int = 10_000
) -> dict[str, Any]:
    """validation.json, report.md and the two figures into `out` (each written atomically); validation.json's data."""
    out = check_output_folder(out, "validation folder")
    data = summarize(validation, resamples, permutations)
    write_figures(data, out)
    write_json(out / RESULTS, data)
    with atomic_path(out / REPORT) as temporary:
        temporary.write_text(report_markdown(validation, data), encoding="utf-8")
    return data
