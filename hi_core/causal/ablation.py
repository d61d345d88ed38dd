"""Head ablation: do the top-HI heads matter? Remove chosen heads and caption the held-out records.

A head's contribution to a layer's output is its slice of the attention output before the output
projection: every supported language model concatenates its heads, head h at columns
h*head_dim..(h+1)*head_dim-1 of the input of `o_proj`. `ablate_heads` replaces those slices by
zero (`mode="zero"`) or by the head's mean over a set of records (`mode="mean"`, the means from
`head_output_means`), with a forward pre-hook on each touched layer's `o_proj`, removed in
`finally`. The hooks act only in the context (thread) that entered the block (a `ContextVar`, as in
`capture.py`): a concurrent forward on the same model in another thread sees every head. Query
heads are ablated one by one; with grouped KV heads the shared key/value heads keep serving the
other query heads of their group.

`run_ablation` is the experiment: the held-out records of `finetune`'s split (or an evaluation
dataset) captioned greedily by the model as it is (the baseline, once) and with each strategy's
heads removed: top-k and bottom-k by HI (deterministic), k random heads (one run per seed), and/or
an explicit list. Each condition is scored like a `finetune` run's held-out captions (caption
metrics, or VQA answer accuracy) plus, for captions, the share of records whose key phrase the
caption still names. Statistics and the report are `ablation_report.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from ..base.errors import InputError, check_choice, check_whole
from ..data.datasets import Record
from ..method.analysis import ImageAnalysis, analyze_image
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
from ..method.image_scoring import AnalysisConfig
from ..model.captioning import generate_description
from ..model.inputs import to_model_device
from ..model.loading import LoadedModel
from ..model.metrics import normalize_answer, normalize_caption
from ..tuning.finetune import MAX_SEED, DataConfig, Split, check_task, split_dataset, training_batch
from ..tuning.runs import dataset_head_ranking, evaluate_held_out

logger = logging.getLogger(__name__)

AblationMode = Literal["zero", "mean"]
BASELINE = "baseline"
LIST = "list"  # the condition of explicit layer:head pairs

# The ablations active in this context (thread): a hook removes heads only when its own key is here.
_ACTIVE: contextvars.ContextVar[frozenset[object]] = contextvars.ContextVar("hi_ablation_active", default=frozenset())


# --- removing heads -----------------------------------------------------------------------------


def num_attention_heads(loaded: LoadedModel) -> int:
    """Query heads per softmax-attention layer of the language model (what HI ranks)."""
    return int(loaded.model.config.get_text_config().num_attention_heads)


def output_projections(loaded: LoadedModel) -> dict[int, torch.nn.Module]:
    """Layer -> its attention's output projection (`o_proj`), for every scored layer; InputError for
    a family whose attention has none, or whose projection input is not num_heads equal slices."""
    heads = num_attention_heads(loaded)
    projections = {}
    for layer, attention in enumerate(loaded.adapter.attention_modules(loaded.model)):
        if attention is None:
            continue
        projection = getattr(attention, "o_proj", None)
        width = getattr(projection, "in_features", None)
        if projection is None or width is None or width % heads:
            raise InputError(
                f"head ablation needs an attention output projection `o_proj` taking {heads} head slices; "
                f"layer {layer} of this {loaded.family} model has none"
            )
        projections[layer] = projection
    return projections


@dataclass(frozen=True)
class HeadMeans:
    """Each head's mean attention output (its o_proj-input slice) over every position of some records.
    means[layer]: (heads, head_dim) float32 on CPU, for every scored layer."""

    means: dict[int, torch.Tensor]
    records: int
    positions: int

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.means.values())).shape) if self.means else ()
        return (
            f"HeadMeans(layers={sorted(self.means)}, per layer {shape}, {self.records} records, "
            f"{self.positions} positions)"
        )


@contextlib.contextmanager
def hooks_in_this_context() -> Iterator[Callable[[], bool]]:
    """For hooks that must act only in the context (thread) that entered the block, as `ablate_heads`'s do: yields
    `mine()`, true where the hook runs inside the block's context, false in another thread's forward on the same
    (shared) model."""
    key = object()
    active = _ACTIVE.set(_ACTIVE.get() | {key})
    try:
        yield lambda: key in _ACTIVE.get()
    finally:
        _ACTIVE.reset(active)


def check_heads(loaded: LoadedModel, heads: Sequence[Head]) -> tuple[Head, ...]:
    """The heads as sorted (layer, head) pairs if each is a head of a scored layer of this model;
    else InputError naming the first bad one. An empty sequence is allowed (nothing ablated)."""
    heads = tuple((int(layer), int(head)) for layer, head in heads)
    if heads:
        check_head_choice(heads, loaded.adapter.scored_layers(loaded.model), num_attention_heads(loaded), len(heads))
    return tuple(sorted(heads))


@contextlib.contextmanager
def ablate_heads(
    loaded: LoadedModel, heads: Sequence[Head], mode: AblationMode = "zero", means: HeadMeans | None = None
) -> Iterator[tuple[Head, ...]]:
    """Inside the block the model runs without the heads' contributions: their slices of each
    o_proj input set to zero, or to their `means` (mode "mean"). Yields the heads, sorted. The hooks
    are removed on exit, always (also when the block raises), leaving the model as it was."""
    check_choice("mode", mode, AblationMode)
    heads = check_heads(loaded, heads)
    if mode == "mean" and means is None:
        raise InputError("mode 'mean' needs the heads' means (head_output_means)")
    projections = output_projections(loaded)
    num_heads = num_attention_heads(loaded)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    fills: dict[int, torch.Tensor | None] = {}
    for layer, layer_heads in by_layer.items():
        head_dim = projections[layer].in_features // num_heads
        if mode == "zero":
            fills[layer] = None
            continue
        mean = means.means.get(layer)  # type: ignore[union-attr]
        if mean is None or tuple(mean.shape) != (num_heads, head_dim):
            found = "none" if mean is None else "x".join(map(str, mean.shape))
            raise InputError(
                f"the head means do not fit layer {layer} of this model (expected {num_heads}x{head_dim}, "
                f"found {found}): compute them with this model"
            )
        fills[layer] = mean[layer_heads]  # (ablated heads, head_dim)
    key = object()
    handles = []
    active = _ACTIVE.set(_ACTIVE.get() | {key})
    try:
        for layer, layer_heads in by_layer.items():
            handles.append(
                projections[layer].register_forward_pre_hook(_replace_slices(key, layer_heads, fills[layer], num_heads))
            )
        yield heads
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.reset(active)


def _replace_slices(
    key: object, heads: list[int], fill: torch.Tensor | None, num_heads: int
) -> Callable[..., tuple | None]:
    """A pre-hook for o_proj: the given heads' slices of its input replaced by zero or by `fill` (heads,
    head_dim), when the ablation `key` is active in the calling context; else the input as it is."""
    index = torch.tensor(heads)

    def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
        if key not in _ACTIVE.get():
            return None
        output = args[0].unflatten(-1, (num_heads, -1)).clone()  # (batch, tokens, heads, head_dim)
        if fill is None:
            output[..., index.to(output.device), :] = 0
        else:
            output[..., index.to(output.device), :] = fill.to(output.device, output.dtype)
        return (output.flatten(-2), *args[1:])

    return hook


@torch.inference_mode()
def head_output_means(loaded: LoadedModel, records: Sequence[Record], prompt: str, batch_size: int = 8) -> HeadMeans:
    """Each head's o_proj-input slice averaged over every (non-padding) position of the records'
    teacher-forced sequences (prefix + text + end of sequence, as in training; each record with its
    own prompt, else `prompt`)."""
    if not records:
        raise InputError("the head means need at least one record")
    projections = output_projections(loaded)
    num_heads = num_attention_heads(loaded)
    sums = {
        layer: torch.zeros(projection.in_features, dtype=torch.float64) for layer, projection in projections.items()
    }
    state: dict[str, torch.Tensor] = {}
    key = object()

    def summing(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if key not in _ACTIVE.get():  # another thread's forward on the same model
                return
            keep = state["mask"].to(args[0].device, args[0].dtype)[..., None]  # (batch, tokens, 1)
            sums[layer] += (args[0] * keep).sum(dim=(0, 1)).double().cpu()

        return hook

    positions = 0
    active = _ACTIVE.set(_ACTIVE.get() | {key})
    handles = [projection.register_forward_pre_hook(summing(layer)) for layer, projection in projections.items()]
    try:
        for start in range(0, len(records), batch_size):
            batch = training_batch(
                loaded, [records[i] for i in range(start, min(start + batch_size, len(records)))], prompt
            )
            batch.pop("labels")
            state["mask"] = batch["attention_mask"]
            positions += int(batch["attention_mask"].sum())
            loaded.model(**to_model_device(batch, loaded.model), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.reset(active)
    means = {layer: (total / positions).float().reshape(num_heads, -1) for layer, total in sums.items()}
    return HeadMeans(means=means, records=len(records), positions=positions)


# --- one image (the explorer) ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImageAblation:
    """One image with heads removed: the model's own description (or answer, for a question prompt)
    with every head (`intact_text`) and without `heads` (`ablated_text`; "" when it ends at once),
    and the analyzed text scored again without them (`ablated`: set it against the intact analysis
    to see how the other heads' maps change; the removed heads' own maps do not, as a head's
    attention comes before the projection its slice is removed from)."""

    heads: tuple[Head, ...]
    mode: str
    intact_text: str
    ablated_text: str
    ablated: ImageAnalysis


def _description(loaded: LoadedModel, image: Image.Image, config: AnalysisConfig) -> str:
    try:
        return generate_description(loaded, image, config.prompt, config.max_new_tokens)
    except InputError:  # an empty description: what a model without its key heads may well produce
        return ""


def ablate_image(
    loaded: LoadedModel,
    image: Image.Image,
    mask: np.ndarray,
    text: str,
    heads: Sequence[Head],
    config: AnalysisConfig = AnalysisConfig(),
    mode: AblationMode = "zero",
    means: HeadMeans | None = None,
) -> ImageAblation:
    """Regenerate the description with and without `heads`, and score `text` (the analyzed one) on
    the image and mask without them, with the same options."""
    heads = check_heads(loaded, heads)
    if not heads:
        raise InputError("choose at least one head to remove")
    intact_text = _description(loaded, image, config)
    with ablate_heads(loaded, heads, mode, means):
        ablated_text = _description(loaded, image, config)
        ablated = analyze_image(loaded, image, mask, text, config)
    return ImageAblation(heads=heads, mode=mode, intact_text=intact_text, ablated_text=ablated_text, ablated=ablated)


# --- the experiment -----------------------------------------------------------------------------


def parse_strategies(text: str) -> tuple[HeadChoice, ...]:
    """`top,random,bottom`, a list of layer:head pairs (`2:5,4:0`), or both (`top,2:5,4:0`): the
    strategies named, then the pairs as one condition."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    strategies = tuple(part for part in parts if part in get_args(HeadStrategy))
    pairs = [part for part in parts if part not in strategies]
    if not parts:
        raise InputError(
            "heads is empty: give top, random, bottom (comma-separated) and/or layer:head pairs like 2:5,4:0"
        )
    if len(set(strategies)) != len(strategies):
        raise InputError(f"heads {text!r} names a strategy twice")
    listed = (parse_head_choice(",".join(pairs)),) if pairs else ()
    return strategies + listed  # type: ignore[return-value]


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
        heads = parse_strategies(self.heads) if isinstance(self.heads, str) else tuple(self.heads)
        object.__setattr__(self, "heads", heads)
        if not heads:
            raise InputError("heads must name at least one strategy or head")
        check_choice("mode", self.mode, AblationMode)
        for name in ("k", "seeds", "mean_records", "resamples"):
            check_whole(name, getattr(self, name))
        check_whole("seed", self.seed, 0, MAX_SEED)
        if self.seed + self.seeds - 1 > MAX_SEED:
            raise InputError(f"seeds {self.seed}..{self.seed + self.seeds - 1} go past the largest seed {MAX_SEED}")

    def condition_names(self) -> list[str]:
        return [choice if isinstance(choice, str) else LIST for choice in self.heads]  # type: ignore[misc]

    def needs_ranking(self) -> bool:
        return any(choice in ("top", "bottom") for choice in self.heads)


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
    for choice in config.heads:
        check_head_choice(choice, layers, num_heads, config.k)
    for folder in filter(None, (dataset, eval_dataset)):
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
    for name, choice in zip(config.condition_names(), config.heads):
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
