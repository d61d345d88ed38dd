"""The statistics and the report of a head ablation (`ablation.run_ablation`).

How each 95% interval is made (every condition captions the same held-out records):
- a condition evaluated once (baseline, top, bottom, a list; random with one seed): a share of
  records (key object named, exact match, answer accuracy) has its Wilson interval over the
  records; a corpus metric (BLEU-4, ROUGE-L, CIDEr) a percentile bootstrap over the records
  (`resamples` draws of the held-out records with replacement, the metric recomputed on each);
  METEOR (a Java process per call) has none;
- random with several seeds: mean over the seeds with a t-interval over the seeds (clipped to
  [0, 1] for the metrics that live there: all but CIDEr);
- a difference of two single runs (top - bottom, top - baseline): paired percentile bootstrap,
  both conditions scored on the same draws of records;
- a single run minus the mean of seeds (top - random): the t-interval of the seeds' mean, shifted
  (top is deterministic on these records; only random's seed-to-seed spread is uncertain; clipped
  to [-1, 1] for the metrics in [0, 1]);
- the mean of seeds minus a single run (random - baseline): likewise, the other way round.

`write_ablation_report` writes `results.json`, `report.md`, `captions.jsonl` (every record's
caption under every condition) and `ablation.png` (bars with intervals), each atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import InputError
from ..base.outputs import atomic_path, check_output_folder, write_json
from ..method.head_selection import format_heads
from ..model.metrics import accuracy_interval, caption_metrics, normalize_caption
from ..tuning.compare import METRICS as COMPARE_METRICS
from ..tuning.intervals import mean_interval
from .ablation import BASELINE, Ablation, ConditionRun

METRICS = COMPARE_METRICS | {
    "first_word": "first words right",
    "extra_words": "right + extra words",
    "key_named": "key object named",
    "key_words": "key-phrase words named",
}
CORPUS = ("bleu4", "rouge_l", "cider")  # recomputed on each bootstrap draw
SHARES = ("exact", "key_named", "accuracy", "first_word", "extra_words")  # shares of records: Wilson intervals
MEANS = ("key_words",)  # means of a per-record value in [0, 1]: bootstrap intervals
BOUNDED = (
    "bleu4",
    "rouge_l",
    "meteor",
    *SHARES,
    *MEANS,
)  # in [0, 1]: a t-interval is clipped there (a difference to [-1, 1])
RESULTS, REPORT, CAPTIONS, FIGURE = "results.json", "report.md", "captions.jsonl", "ablation.png"


def check_ablation_folder(out: str | Path, what: str = "ablation folder") -> Path:
    """`out` if an ablation report can be written there: absent, empty, or one an earlier ablation
    wrote (it has results.json; its files are replaced); else InputError, so that the report never
    lands among a user's own files."""
    out = check_output_folder(out, what)
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file():
        raise InputError(
            f"{what} {str(out)!r} exists and is not an ablation folder (no {RESULTS}); choose a new or empty folder"
        )
    return out


# --- statistics ---------------------------------------------------------------------------------


def _indicators(run: ConditionRun, metric: str) -> np.ndarray:
    """Per record 1/0 for a share metric (a value in [0, 1] for `key_words`), NaN where it does not apply (a record
    without a key phrase)."""
    if metric == "exact":
        return np.array(
            [float(normalize_caption(c["generated"]) == normalize_caption(c["reference"])) for c in run.captions]
        )
    if metric in ("key_named", "key_words", "first_word", "extra_words"):
        return np.array([float(c[metric]) if metric in c else np.nan for c in run.captions])
    return np.array([float(c["correct"]) for c in run.captions])  # accuracy


def bootstrap_metrics(run: ConditionRun, draws: np.ndarray) -> dict[str, np.ndarray]:
    """The run's metrics (all but METEOR) on each draw of its records; draws: (resamples, records)
    indices into `run.captions`. Returns metric -> (resamples,)."""
    names = [name for name in run.metrics if name in CORPUS or name in SHARES or name in MEANS]
    values = {name: np.empty(len(draws)) for name in names}
    shares = {name: _indicators(run, name) for name in names if name in SHARES or name in MEANS}
    corpus = [name for name in names if name in CORPUS]
    for row, draw in enumerate(draws):
        if corpus:
            references = {str(j): [run.captions[i]["reference"]] for j, i in enumerate(draw)}
            generated = {str(j): run.captions[i]["generated"] for j, i in enumerate(draw)}
            scores = caption_metrics(references, generated)
            for name in corpus:
                values[name][row] = scores[name]
        for name, indicator in shares.items():
            picked = indicator[draw]
            values[name][row] = np.nanmean(picked) if np.isfinite(picked).any() else np.nan
    return values


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if not values.size:
        return None, None
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _single_entry(run: ConditionRun, name: str, boot: dict[str, np.ndarray]) -> dict[str, Any]:
    value = run.metrics[name]
    entry: dict[str, Any] = {"mean": value, "low": None, "high": None, "values": [value], "interval": None}
    if name in SHARES:
        indicator = _indicators(run, name)
        indicator = indicator[np.isfinite(indicator)]
        low, high = accuracy_interval(int(indicator.sum()), int(indicator.size))
        entry |= {"low": low, "high": high, "interval": f"Wilson over {indicator.size} held-out records"}
    elif name in boot:
        boot_low, boot_high = _percentiles(boot[name])
        entry |= {
            "low": boot_low,
            "high": boot_high,
            "interval": f"bootstrap over the held-out records ({len(boot[name])} draws)",
        }
    return entry


def _metric_names(ablation: Ablation) -> list[str]:
    present = {name for runs in ablation.runs.values() for run in runs for name in run.metrics}
    return [name for name in METRICS if name in present]


def _difference(
    a: list[ConditionRun], b: list[ConditionRun], name: str, boot: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any] | None:
    """mean(a) - mean(b) for one metric with its 95% interval and how it was made (module docstring)."""
    if not all(name in run.metrics for run in a + b):
        return None
    x, y = [run.metrics[name] for run in a], [run.metrics[name] for run in b]
    difference = float(np.mean(x) - np.mean(y))
    entry: dict[str, Any] = {"difference": difference, "low": None, "high": None, "interval": None}
    if len(a) == 1 and len(b) == 1:
        first, second = boot.get(a[0].condition, {}).get(name), boot.get(b[0].condition, {}).get(name)
        if first is not None and second is not None:
            low, high = _percentiles(first - second)
            entry |= {"low": low, "high": high, "interval": "paired bootstrap over the held-out records"}
        return entry
    if len(a) > 1 and len(b) > 1:
        raise ValueError("two conditions with seeds: not an ablation comparison")
    seeds = mean_interval(x if len(a) > 1 else y)
    half = (seeds["high"] - seeds["low"]) / 2
    low, high = difference - half, difference + half
    if name in BOUNDED:
        low, high = max(low, -1.0), min(high, 1.0)
    return entry | {"low": low, "high": high, "interval": f"t over {max(len(a), len(b))} seeds"}


def summarize(ablation: Ablation) -> dict[str, Any]:
    """Per condition: heads, seeds and each metric with its interval; the differences; the notes."""
    config = ablation.config
    held_out = len(next(iter(ablation.runs.values()))[0].captions)
    draws = np.random.default_rng(config.seed).integers(0, held_out, size=(config.resamples, held_out))
    single = {name: runs[0] for name, runs in ablation.runs.items() if len(runs) == 1}
    for run in single.values():
        if [c["id"] for c in run.captions] != [c["id"] for c in ablation.runs[BASELINE][0].captions]:
            raise ValueError("conditions captioned different records")
    boot = {name: bootstrap_metrics(run, draws) for name, run in single.items()}
    metrics = _metric_names(ablation)
    conditions = {}
    for name, runs in ablation.runs.items():
        entries = {}
        for metric in metrics:
            if not all(metric in run.metrics for run in runs):
                continue
            if len(runs) == 1:
                entries[metric] = _single_entry(runs[0], metric, boot.get(name, {}))
            else:
                entry = mean_interval([run.metrics[metric] for run in runs]) | {"interval": f"t over {len(runs)} seeds"}
                if metric in BOUNDED:
                    entry |= {"low": max(entry["low"], 0.0), "high": min(entry["high"], 1.0)}
                entries[metric] = entry
        conditions[name] = {
            "runs": len(runs),
            "seeds": [run.seed for run in runs if run.seed is not None],
            "heads": [format_heads(run.heads) for run in runs],
            "metrics": entries,
        }
    pairs = [(a, b) for a, b in (("top", "random"), ("top", "bottom")) if a in ablation.runs and b in ablation.runs]
    pairs += [(name, BASELINE) for name in ablation.runs if name != BASELINE]
    differences = {
        f"{a} - {b}": {metric: _difference(ablation.runs[a], ablation.runs[b], metric, boot) for metric in metrics}
        for a, b in pairs
    }
    notes = sorted({note for runs in ablation.runs.values() for run in runs for note in run.notes})
    return {"conditions": conditions, "differences": differences, "notes": notes}


# --- files --------------------------------------------------------------------------------------


def ablation_json(ablation: Ablation, summary: dict[str, Any]) -> dict[str, Any]:
    config = ablation.config
    settings = asdict(config) | {
        "heads": [choice if isinstance(choice, str) else format_heads(choice) for choice in config.choices]
    }
    means = (
        None if ablation.means is None else {"records": ablation.means.records, "positions": ablation.means.positions}
    )
    return {
        "model": ablation.model,
        "dataset": ablation.dataset,
        "eval_dataset": ablation.eval_dataset,
        "task": config.data.task,
        "config": settings,
        "split": ablation.split,
        "ranking": None if ablation.ranking is None else ablation.ranking.to_json(),
        "means": means,
        "runs": {name: [run.to_json() for run in runs] for name, runs in ablation.runs.items()},
    } | summary


def _caption_lines(ablation: Ablation) -> str:
    """One JSON line per held-out record: its prompt, reference, key phrase and every condition's caption."""
    records: dict[str, dict[str, Any]] = {}
    for name, runs in ablation.runs.items():
        for run in runs:
            label = name if run.seed is None else f"{name}-seed{run.seed}"
            for caption in run.captions:
                line = records.setdefault(
                    caption["id"],
                    {key: caption[key] for key in ("id", "prompt", "reference", "key_phrase") if key in caption}
                    | {"generated": {}},
                )
                line["generated"][label] = caption["generated"]
    return "".join(json.dumps(line) + "\n" for line in records.values())


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    value = entry.get("mean", entry.get("difference"))
    if entry["low"] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def report_markdown(ablation: Ablation, data: dict[str, Any]) -> str:
    """The experiment as Markdown: settings, a table with 95% intervals, the differences and how each interval was
    made."""
    config = ablation.config
    metrics = [name for name in METRICS if any(name in entry["metrics"] for entry in data["conditions"].values())]
    removed = (
        "their o_proj-input slices set to zero"
        if config.mode == "zero"
        else f"their o_proj-input slices set to their mean over {data['means']['records']} training records "
        f"({data['means']['positions']} positions)"
    )
    lines = [
        "# Head ablation: do the top-HI heads matter?",
        "",
        f"- model: `{ablation.model}`; dataset: `{ablation.dataset}`; {data['split']['held_out']} held-out records "
        f"({data['split']['how']}), captioned greedily (at most {config.data.max_new_tokens} new tokens)",
        f"- removed: k = {config.k} heads per strategy ({removed}); "
        f"random: seeds {config.seed}..{config.seed + config.seeds - 1}",
    ]
    if ablation.ranking is not None:
        best = ", ".join(
            f"{layer}:{h} ({s:.3f})"
            for (layer, h), s in zip(ablation.ranking.heads[: config.k], ablation.ranking.scores)
        )
        lines.append(f"- ranking (HI, best first): {best}, ...; from {ablation.ranking.source}")
    if config.data.task == "vqa":
        lines.append(
            "- task: closed-form VQA; answer accuracy = normalized exact match of the answer to each record's question"
        )
    else:
        lines.append(
            "- key object named: the record's key phrase appears in the caption "
            "(whole words, ignoring case and punctuation)"
        )
    corpus = [METRICS[m] for m in metrics if m in CORPUS]
    lines += [
        "- cells: value [95% interval]; a share of records ("
        + ", ".join(METRICS[m] for m in metrics if m in SHARES)
        + "): Wilson interval over the records"
        + (
            f"; {', '.join(corpus)} of one run: percentile bootstrap over the held-out records "
            f"({config.resamples} draws)"
            if corpus
            else ""
        )
        + "; random: mean over seeds [t-interval over seeds, clipped to [0, 1] but for CIDEr]"
        + ("; METEOR of one run: no interval" if "meteor" in metrics else ""),
        "",
        "| condition | heads removed | " + " | ".join(METRICS[m] for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for name, entry in data["conditions"].items():
        heads = " / ".join(entry["heads"]) or "none"
        lines.append(f"| {name} | {heads} | " + " | ".join(_cell(entry["metrics"].get(m)) for m in metrics) + " |")
    lines += [
        "",
        "## Differences",
        "",
        "Below 0: the metric is lower under the first condition (removing its heads hurts more). Intervals: two single "
        "runs, paired bootstrap over the held-out records; a single run against random's seeds, the t-interval of the "
        "seeds' mean (the single run is deterministic on these records).",
    ]
    for pair, differences in data["differences"].items():
        lines += ["", f"**{pair}**", ""]
        for metric, value in differences.items():
            if value is not None:
                how = f" ({value['interval']})" if value["interval"] else " (no interval)"
                lines.append(f"- {METRICS[metric]}: {_cell(value)}{how}")
    if data["notes"]:
        lines += ["", "Notes: " + "; ".join(data["notes"]) + "."]
    lines += ["", f"![ablation]({FIGURE})", ""]
    return "\n".join(lines)


def write_ablation_report(ablation: Ablation, out: str | Path) -> dict[str, Any]:
    """Write ablation.png, captions.jsonl, results.json and report.md into `out` (each atomically); return
    results.json's data."""
    from ..figures.plots import metric_bars  # matplotlib only when a report is written

    out = check_ablation_folder(out)
    data = ablation_json(ablation, summarize(ablation))
    conditions = list(data["conditions"])
    metrics = [name for name in METRICS if any(name in entry["metrics"] for entry in data["conditions"].values())]

    def column(key: str) -> np.ndarray:
        return np.array(
            [
                [
                    np.nan
                    if data["conditions"][c]["metrics"].get(m, {}).get(key) is None
                    else data["conditions"][c]["metrics"][m][key]
                    for m in metrics
                ]
                for c in conditions
            ],
            dtype=np.float64,
        )

    figure = metric_bars(
        conditions,
        [METRICS[m] for m in metrics],
        column("mean"),
        column("low"),
        column("high"),
        title="Held-out metrics with heads removed",
        whiskers="95% intervals, see report.md",
    )
    with atomic_path(out / FIGURE) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    with atomic_path(out / CAPTIONS) as temporary:
        temporary.write_text(_caption_lines(ablation), encoding="utf-8")
    write_json(out / RESULTS, data)
    with atomic_path(out / REPORT) as temporary:
        temporary.write_text(report_markdown(ablation, data), encoding="utf-8")
    return data
