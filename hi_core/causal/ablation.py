"""Head ablation: do the top-HI heads matter? Remove chosen heads (`head_ablation.ablate_heads`) and caption the
held-out records.

`run_ablation` is the experiment: the held-out records of `finetune`'s split (or an evaluation
dataset) captioned greedily by the model as it is (the baseline, once) and with each strategy's
heads removed: top-k and bottom-k by HI (deterministic), k random heads (one run per seed), and/or
an explicit list. Each condition is scored like a `finetune` run's held-out captions (caption
metrics, or VQA answer accuracy) plus, for captions, the share of records whose key phrase the
caption still names. Statistics and the report are `ablation_report.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from ..base.errors import InputError, check_choice, check_whole
from ..method.head_selection import (
    Head,
    HeadChoice,
    HeadRanking,
    HeadStrategy,
    check_head_choice,
    format_heads,
    parse_head_choice,
    select_heads,
)
from ..model.loading import LoadedModel
from ..model.metrics import normalize_answer, normalize_caption
from ..tuning.finetune import MAX_SEED, DataConfig, Split, check_task, split_dataset
from ..tuning.rankings import dataset_head_ranking
from ..tuning.runs import evaluate_held_out
from .head_ablation import (
    AblationMode,
    HeadMeans,
    ablate_heads,
    head_output_means,
    num_attention_heads,
    output_projections,
)

logger = logging.getLogger(__name__)

BASELINE = "baseline"
LIST = "list"  # the condition of explicit layer:head pairs

# --- the experiment -----------------------------------------------------------------------------


def parse_strategies(text: str) -> tuple[HeadChoice, ...]:
    """`top,random,bottom`, a list of layer:head pairs (`2:5,4:0`), or both (`top,2:5,4:0`): the
    strategies named, then the pairs as one condition."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    strategies = tuple(parse_head_choice(part) for part in parts if part in get_args(HeadStrategy))
    pairs = [part for part in parts if part not in strategies]
    if not parts:
        raise InputError(
            "heads is empty: give top, random, bottom (comma-separated) and/or layer:head pairs like 2:5,4:0"
        )
    if len(set(strategies)) != len(strategies):
        raise InputError(f"heads {text!r} names a strategy twice")
    listed = (parse_head_choice(",".join(pairs)),) if pairs else ()
    return strategies + listed


@dataclass(frozen=True)
class AblationConfig:
    """One ablation experiment.

    heads: the conditions: strategies among top/bottom/random and/or one list of (layer, head)
    pairs; text as `parse_strategies` reads it (default: top, random and bottom, so one run compares
    them). k: heads removed by each strategy. seeds: runs of `random` (seeds seed..seed+seeds-1).
    mode: replace a head's output by zero, or by its mean over `mean_records` training records.
    resamples: bootstrap resamples of the held-out records for the intervals of the corpus metrics.
    data: the held-out split and captioning, as in `finetune` (the same records for the same data).
    """

    heads: str | tuple[HeadChoice, ...] = "top,random,bottom"
    k: int = 4
    seeds: int = 3
    seed: int = 0
    mode: AblationMode = "zero"
    mean_records: int = 32
    resamples: int = 1000
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        heads = self.choices
        object.__setattr__(self, "heads", heads)
        if not heads:
            raise InputError("heads must name at least one strategy or head")
        check_choice("mode", self.mode, AblationMode)
        for name in ("k", "seeds", "mean_records", "resamples"):
            check_whole(name, getattr(self, name))
        check_whole("seed", self.seed, 0, MAX_SEED)
        if self.seed + self.seeds - 1 > MAX_SEED:
            raise InputError(f"seeds {self.seed}..{self.seed + self.seeds - 1} go past the largest seed {MAX_SEED}")

    @property
    def choices(self) -> tuple[HeadChoice, ...]:
        """The conditions, one per strategy or head list: `heads` parsed (as `__post_init__` stores it)."""
        return parse_strategies(self.heads) if isinstance(self.heads, str) else tuple(self.heads)

    def condition_names(self) -> list[str]:
        return [choice if isinstance(choice, str) else LIST for choice in self.choices]

    def needs_ranking(self) -> bool:
        return any(choice in ("top", "bottom") for choice in self.choices)


@dataclass(frozen=True)
class ConditionRun:
    """One evaluation of the held-out records: the baseline (no heads), or one set of heads removed.
    captions: {"id", "reference", "generated", "prompt"?, "correct"? (vqa), "key_phrase"?, "key_named"?}."""

    condition: str
    seed: int | None
    heads: tuple[Head, ...]
    metrics: dict[str, float]
    notes: list[str]
    captions: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "seed": self.seed,
            "heads": format_heads(self.heads),
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class Ablation:
    """Every evaluation of an experiment: runs[condition] in seed order (one for all but random)."""

    config: AblationConfig
    model: str
    dataset: str
    eval_dataset: str | None
    split: dict[str, Any]
    ranking: HeadRanking | None
    means: HeadMeans | None
    runs: dict[str, list[ConditionRun]]


def key_named(caption: str, key_phrase: str) -> bool:
    """Whether the caption names the key object: its key phrase as whole words, ignoring case and punctuation."""
    phrase = normalize_caption(key_phrase)
    return bool(phrase) and f" {phrase} " in f" {normalize_caption(caption)} "


def key_words_named(caption: str, key_phrase: str) -> float:
    """The share of the key phrase's words the caption contains as whole words ("small red circle" in "a red
    square": 1/3): what of the object's attributes (size, colour, shape) is still named, word by word."""
    words = normalize_caption(key_phrase).split()
    said = set(normalize_caption(caption).split())
    return sum(word in said for word in words) / len(words) if words else float("nan")


def answer_starts_right(reference: str, answer: str) -> bool:
    """Whether the answer begins with the reference's words (normalized as VQA compares answers): "green square" for
    "green" is right in its first word, if not an exact match."""
    expected, given = normalize_answer(reference).split(), normalize_answer(answer).split()
    return bool(expected) and given[: len(expected)] == expected


def _evaluate_condition(
    loaded: LoadedModel,
    split: Split,
    config: AblationConfig,
    condition: str,
    seed: int | None,
    heads: tuple[Head, ...],
    means: HeadMeans | None,
) -> ConditionRun:
    """One condition's held-out captions (answers) and metrics. Perception apart from formatting: for captions, the
    key phrase named whole and word by word (`key_words`); for VQA, the first words right (`first_word`) and the
    right answer followed by extra words (`extra_words`), beside exact accuracy."""
    with ablate_heads(loaded, heads, config.mode, means):
        evaluation = evaluate_held_out(loaded, split, config.data)
    captions = [dict(caption) for caption in evaluation.captions]
    metrics = dict(evaluation.metrics)
    if config.data.task == "caption":
        phrases = {line.id: line.fields.get("key_phrase") for line in split.held_out.lines}
        with_phrase = [caption for caption in captions if phrases.get(caption["id"])]
        for caption in with_phrase:
            caption["key_phrase"] = phrases[caption["id"]]
            caption["key_named"] = key_named(caption["generated"], caption["key_phrase"])
            caption["key_words"] = key_words_named(caption["generated"], caption["key_phrase"])
        if with_phrase:
            metrics["key_named"] = sum(caption["key_named"] for caption in with_phrase) / len(with_phrase)
            metrics["key_words"] = float(np.nanmean([caption["key_words"] for caption in with_phrase]))
    elif captions:
        for caption in captions:
            caption["first_word"] = answer_starts_right(caption["reference"], caption["generated"])
            caption["extra_words"] = caption["first_word"] and not caption.get("correct", False)
        metrics["first_word"] = sum(caption["first_word"] for caption in captions) / len(captions)
        metrics["extra_words"] = sum(caption["extra_words"] for caption in captions) / len(captions)
    return ConditionRun(
        condition=condition, seed=seed, heads=heads, metrics=metrics, notes=list(evaluation.notes), captions=captions
    )


def check_ablation(
    loaded: LoadedModel, config: AblationConfig, dataset: str | Path, eval_dataset: str | Path | None = None
) -> None:
    """InputError before any slow work: a head list or k this model cannot take, a VQA task without questions."""
    layers, num_heads = loaded.adapter.scored_layers(loaded.model), num_attention_heads(loaded)
    output_projections(loaded)
    for choice in config.choices:
        check_head_choice(choice, layers, num_heads, config.k)
    for folder in (dataset, eval_dataset):
        if folder:  # no evaluation dataset: None
            check_task(config.data.task, folder)


def run_ablation(
    loaded: LoadedModel,
    dataset: str | Path,
    config: AblationConfig = AblationConfig(),
    ranking: HeadRanking | None = None,
    eval_dataset: str | Path | None = None,
    ranking_limit: int | None = None,
    on_condition: Callable[[int, int, str], None] | None = None,
) -> Ablation:
    """Caption the held-out records with the model as it is, then without each condition's heads.
    `ranking`: for top/bottom (default: score `dataset` now, its first `ranking_limit` records).
    on_condition(index, total, name): called before each evaluation (1-based), for progress."""
    check_ablation(loaded, config, dataset, eval_dataset)
    split = split_dataset(dataset, config.data, eval_dataset, need_train=False)
    if not split.held_out:
        raise InputError("no held-out records to caption: raise eval_fraction, or give an evaluation dataset")
    if config.mode == "mean" and not split.train:
        raise InputError(
            "mean ablation takes the heads' mean outputs over the dataset's records outside the held-out set, "
            "and it has none: give another evaluation dataset, or use zero ablation"
        )
    layers, num_heads = loaded.adapter.scored_layers(loaded.model), num_attention_heads(loaded)
    if config.needs_ranking() and ranking is None:
        ranking = dataset_head_ranking(loaded, dataset, ranking_limit)
    if not config.needs_ranking():
        ranking = None
    plan: list[tuple[str, int | None, tuple[Head, ...]]] = [(BASELINE, None, ())]
    for name, choice in zip(config.condition_names(), config.choices):
        seeds = range(config.seed, config.seed + config.seeds) if choice == "random" else [None]
        for seed in seeds:
            plan.append((name, seed, select_heads(choice, layers, num_heads, config.k, ranking, seed or 0)))
    means = None
    if config.mode == "mean":
        means = head_output_means(
            loaded, split.train[: config.mean_records], config.data.prompt, config.data.eval_batch_size
        )
    runs: dict[str, list[ConditionRun]] = {}
    for index, (name, seed, heads) in enumerate(plan, start=1):
        label = name if seed is None else f"{name} (seed {seed})"
        if on_condition is not None:
            on_condition(index, len(plan), label)
        logger.info("evaluating %s: heads %s", label, format_heads(heads) or "none")
        runs.setdefault(name, []).append(_evaluate_condition(loaded, split, config, name, seed, heads, means))
    return Ablation(
        config=config,
        model=loaded.name,
        dataset=str(dataset),
        eval_dataset=None if eval_dataset is None else str(eval_dataset),
        split={"held_out": len(split.held_out), "how": split.description},
        ranking=ranking,
        means=means,
        runs=runs,
    )
