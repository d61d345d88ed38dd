"""Does HI find the heads that matter? Remove each head and measure, teacher-forced, what the model loses.

`validate` is the experiment behind `python -m hi_core validate`:

1. The dataset is split as `finetune` splits it (`split_dataset`): the held-out records are where effects are
   measured; the first `ranking_records` training records are where the rankings are computed.
2. Rankings, one score per head (higher: more important by that criterion), each from the same records:
   - `hi`: mean HI (`analyze_image` with the record's key phrase), or the heads of a given dataset-scores JSON;
   - `mass`: mean share of the head's image attention on the object (the attention-mass baseline);
   - `localization`: the localization-heads criterion (Kang et al., CVPR 2025): per record, among the heads whose
     attention sum over the image is at least the median head's, the `selected` heads of lowest spatial entropy
     (entropy of the sizes of the map's connected regions above its mean); the score is how often a head is so
     selected;
   - `gradient`: Michel et al.'s (NeurIPS 2019) head importance, the mean over records of |dL/dg_h|, with g_h a
     gate of 1 on the head's output and L the scored tokens' loss.
3. Effects, teacher-forced on the held-out records (no generation): the mean cross-entropy of the scored tokens
   (captions: the key phrase's tokens, else the whole description; VQA: the answer's) and whether the first scored
   token is the model's top prediction (first-token accuracy), with every head removed in turn (`ablate_heads`,
   zero and/or mean), minus the same without removal.
4. Dose-response: heads removed cumulatively in each ranking's order, in `orders` random orders (an empirical
   band) and in as many layer-matched random orders (each head of HI's order swapped for a random head of the same
   layer), for k = 0..`max_k` (default: a quarter of the heads).

The passes of 3 and 4 are `head_effects.py`'s (they reuse what a removal cannot change: `replay.py`). Statistics
and the report are `validation_report.py`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..base.errors import InputError, check_choice, check_whole
from ..data.datasets import Record
from ..method.analysis import analyze_image
from ..method.head_selection import Head
from ..method.image_scoring import AnalysisConfig
from ..model.images import ImageLimits
from ..model.loading import LoadedModel
from ..model.replay import Plan, install_replay, replaying
from ..tuning.finetune import MAX_SEED, DataConfig, check_task, split_dataset
from .head_ablation import (
    AblationMode,
    HeadMeans,
    head_output_means,
    hooks_in_this_context,
    num_attention_heads,
    output_projections,
)
from .head_effects import (
    Outcome,
    Progress,
    ScoredBatch,
    baseline_pass,
    dose_points,
    dose_response,
    measure_effects,
    order_steps,
    prepare_batches,
    start_layer,
    token_losses,
)

logger = logging.getLogger(__name__)

RANKINGS = ("hi", "mass", "localization", "gradient")


@dataclass(frozen=True)
class ValidationConfig:
    """One validation. heads: a seeded sample of this many heads to remove one by one (None: every head; state it
    for big models). orders: random orders of the dose-response, and as many layer-matched ones. max_k: heads removed
    at most in the dose-response (None: a quarter of the heads). selected: heads the localization criterion selects
    per record. cache_mb: memory for the decoder layers' outputs reused between passes (`head_effects`; 0: reuse
    only the image features). data: the held-out split and the prompt, as in `finetune` (`data.task`: caption or
    vqa)."""

    modes: tuple[AblationMode, ...] = ("zero", "mean")
    heads: int | None = None
    orders: int = 100
    max_k: int | None = None
    ranking_records: int = 32
    mean_records: int = 32
    selected: int = 10
    batch_size: int = 8
    seed: int = 0
    cache_mb: int = 1024
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if not self.modes:
            raise InputError("modes must name at least one of zero, mean")
        for mode in self.modes:
            check_choice("mode", mode, AblationMode)
        for name in ("orders", "ranking_records", "mean_records", "selected", "batch_size"):
            check_whole(name, getattr(self, name))
        for name in ("heads", "max_k"):
            check_whole(name, getattr(self, name), optional=True)
        check_whole("cache_mb", self.cache_mb, 0)
        check_whole("seed", self.seed, 0, MAX_SEED)


#: The explorer's Validate tab starts from this run, sized for minutes on a CPU: zero ablation only, 20 random
#: orders, rankings and means from 16 training records, at most EXPLORER_HELD_OUT held-out records (a quarter of
#: the set; the tab's cap too).
EXPLORER_HELD_OUT = 48
EXPLORER_VALIDATION = ValidationConfig(
    modes=("zero",),
    orders=20,
    ranking_records=16,
    mean_records=16,
    data=DataConfig(eval_fraction=0.25, eval_limit=EXPLORER_HELD_OUT),
)


# --- rankings --------------------------------------------------------------------------------------


def spatial_entropy(attention: np.ndarray) -> float:
    """The localization-heads paper's spatial entropy of a (gh, gw) map: the cells above the map's mean split into
    8-connected regions, and the entropy of the regions' sizes (0: one compact region; more: scattered)."""
    regions, count = ndimage.label(attention > attention.mean(), structure=np.ones((3, 3)))
    if count <= 1:
        return 0.0
    sizes = np.bincount(regions.ravel())[1:].astype(float)
    shares = sizes / sizes.sum()
    return float(-(shares * np.log(shares)).sum())


def image_rankings(
    loaded: LoadedModel, records: Sequence[Record], config: ValidationConfig, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """The map-based rankings (`hi`, `mass`, `localization`), each (layers, heads), from `records`: NaN in layers
    that are not scored."""
    hi, mass, selected = [], [], []
    for index, record in enumerate(records):
        if progress is not None:
            progress("ranking", index, len(records))
        analysis = analyze_image(
            loaded,
            record.image,
            record.mask,
            record.text,
            AnalysisConfig(key_phrase=record.key_phrase, prompt=record.prompt or config.data.prompt),
        )
        hi.append(analysis.hi)
        mass.append(analysis.mass)
        maps = np.where(analysis.valid, analysis.maps, 0.0)  # (layers, heads, gh, gw)
        sums = maps.sum(axis=(2, 3))
        scored = np.isfinite(analysis.hi)
        entropy = np.full(sums.shape, np.inf)
        qualified = scored & (sums >= np.nanmedian(np.where(scored, sums, np.nan)))
        for layer, head in zip(*np.nonzero(qualified)):
            entropy[layer, head] = spatial_entropy(maps[layer, head])
        order = np.lexsort((-sums.ravel(), entropy.ravel()))[: config.selected]  # lowest entropy, then most attention
        chosen = np.zeros(sums.size)
        chosen[order[np.isfinite(entropy.ravel()[order])]] = 1
        selected.append(np.where(scored, chosen.reshape(sums.shape), np.nan))
    return {"hi": np.mean(hi, axis=0), "mass": np.mean(mass, axis=0), "localization": np.mean(selected, axis=0)}


def gradient_importance(loaded: LoadedModel, batches: Sequence[ScoredBatch]) -> np.ndarray:
    """(layers, heads): Michel et al.'s importance, the mean over records of |dL/dg_h| where g_h = 1 gates head h's
    slice of o_proj's input and L is the record's mean scored-token loss. Only the gates get gradients
    (`torch.autograd.grad`): the model's parameters are left untouched, and the gates act only in this context
    (thread), as `ablate_heads` does, so another session's forward on the shared model is not gated; the image
    features are computed without gradients (`Plan.frozen_vision`), so the graph holds the language model's
    activations only (SmolVLM-256M at true size, one record of 1,147 tokens: +1.1 GB over the loaded model, +11
    GB with the vision tower's graph). NaN in layers without softmax attention."""
    projections = output_projections(loaded)
    num_heads = num_attention_heads(loaded)
    layers = len(loaded.adapter.attention_modules(loaded.model))
    totals, records = np.zeros((layers, num_heads)), 0
    for index, batch in enumerate(batches):
        gates = {layer: torch.ones(batch.size, num_heads, requires_grad=True) for layer in projections}

        def gating(layer: int, gates: dict[int, torch.Tensor], mine: Callable[[], bool]) -> Callable[..., tuple | None]:
            def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
                if not mine():  # another thread's forward on the same (shared) model
                    return None
                hidden = args[0]
                shaped = hidden.reshape(*hidden.shape[:-1], num_heads, -1)
                gate = gates[layer].to(hidden.device, hidden.dtype)[:, None, :, None]
                return ((shaped * gate).reshape(hidden.shape), *args[1:])

            return hook

        with contextlib.ExitStack() as stack:
            mine = stack.enter_context(hooks_in_this_context())
            stack.enter_context(install_replay(loaded))
            stack.enter_context(replaying(Plan(index, frozen_vision=True)))
            for layer, projection in projections.items():
                stack.callback(projection.register_forward_pre_hook(gating(layer, gates, mine)).remove)
            with torch.enable_grad():
                losses, _ = token_losses(loaded, batch)
                per_record = torch.zeros(batch.size, dtype=losses.dtype).index_add(
                    0, batch.rows.to(losses.device), losses
                )
                per_record = per_record / torch.bincount(batch.rows, minlength=batch.size).clamp(min=1).to(per_record)
                grads = torch.autograd.grad(per_record.sum(), [gates[layer] for layer in projections])
        for layer, grad in zip(projections, grads):
            totals[layer] += grad.abs().sum(dim=0).double().numpy()
        records += batch.size
    importance = totals / max(records, 1)
    importance[[layer not in projections for layer in range(layers)]] = np.nan
    return importance


# --- the experiment --------------------------------------------------------------------------------


def head_sample(hi: np.ndarray, count: int | None, seed: int) -> list[Head]:
    """The scored heads (layer, head order), or a seeded sample of `count` of them in that order."""
    heads = [(int(layer), int(head)) for layer, head in zip(*np.nonzero(np.isfinite(hi)))]
    if count is None or count >= len(heads):
        return heads
    picked = np.sort(np.random.default_rng(seed).choice(len(heads), size=count, replace=False))
    return [heads[i] for i in picked]


def ranked(scores: np.ndarray, heads: Sequence[Head]) -> list[Head]:
    """`heads` by score descending (ties: layer, then head)."""
    return sorted(heads, key=lambda head: (-scores[head], head))


def layer_matched(order: Sequence[Head], heads: Sequence[Head], rng: np.random.Generator) -> list[Head]:
    """`order` with each head swapped for a random head of the same layer among `heads` (distinct within a layer):
    the same layers at every k as `order`, other heads."""
    matched = list(order)
    for layer in sorted({layer for layer, _ in order}):
        slots = [i for i, (other, _) in enumerate(order) if other == layer]
        pool = [head for head in heads if head[0] == layer]
        for slot, pick in zip(slots, rng.choice(len(pool), size=len(slots), replace=False)):
            matched[slot] = pool[int(pick)]
    return matched


@dataclass(frozen=True)
class Validation:
    """What `validate` measured: `scores[ranking]` (layers, heads); `heads` removed one by one; `effects[mode]`
    (heads, records, 2): the rise in loss and the drop in first-token correctness with that head removed;
    `baseline` (records, 2); `curves` (the dose-response at each k of `ks`, `dose_response`) and the orders behind
    them."""

    model: str
    dataset: str
    task: str
    config: ValidationConfig
    split: dict[str, Any]
    record_ids: list[str]
    scores: dict[str, np.ndarray]
    heads: list[Head]
    baseline: np.ndarray
    effects: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    orders: dict[str, list[list[list[int]]]]
    ks: list[int]
    num_heads: int
    seconds: float = 0.0


def planned_passes(
    heads: Sequence[Head],
    modes: Sequence[str],
    orders: dict[str, list[list[Head]]],
    ks: Sequence[int],
    layers: int,
    keep_layers: bool,
    one_pass: float,
) -> tuple[int, float]:
    """(passes, seconds): the forward passes a validation runs after its baseline, and their time, from `one_pass`
    (a pass without the image features, which every later pass reuses) and the share of the decoder layers each
    computes (`head_effects`: a head of layer l computes layers l and up)."""
    single = [1.0 - start_layer([head], keep_layers) / layers for head in heads] * len(modes)
    known = {frozenset([head]) for head in heads} if "zero" in modes else set()
    dose = [
        1.0 - start / layers
        for group in orders.values()
        for order in group
        for start in order_steps(order, ks, known, keep_layers).values()
    ]
    return len(single) + len(dose), one_pass * (sum(single) + sum(dose))


def mean_outputs(loaded: LoadedModel, train: Sequence[Record], config: ValidationConfig) -> HeadMeans | None:
    if "mean" not in config.modes:
        return None
    if not train:
        raise InputError("mean ablation takes the heads' mean outputs over training records, and the split has none")
    return head_output_means(loaded, train[: config.mean_records], config.data.prompt, config.batch_size)


def validate(
    loaded: LoadedModel,
    dataset: str | Path,
    config: ValidationConfig = ValidationConfig(),
    hi: np.ndarray | None = None,
    eval_dataset: str | Path | None = None,
    progress: Progress | None = None,
    time_limit_s: float | None = None,
    image_limits: ImageLimits | None = None,
) -> Validation:
    """The whole experiment (module docstring). `hi`: (layers, heads) HI to validate (e.g. from a dataset-scores
    JSON); default: computed on the ranking records like the other rankings. Once the model as it is has run over
    the held-out records, the rest is estimated from that pass's time (`progress` is told: stage "estimate"); over
    `time_limit_s` it is refused (InputError) before the long part starts. `image_limits`: how far the records' files
    are decoded (a server's limits; default: as they are)."""
    start = time.perf_counter()
    task, prompt = config.data.task, config.data.prompt
    check_task(task, dataset if eval_dataset is None else eval_dataset)
    split = split_dataset(dataset, config.data, eval_dataset, need_train=True, image_limits=image_limits)
    if len(split.held_out) < 2:
        raise InputError(
            f"validation needs at least 2 held-out records, the split has {len(split.held_out)}: raise "
            "eval_fraction, or give an evaluation dataset"
        )
    ranking_records = [split.train[i] for i in range(min(config.ranking_records, len(split.train)))]
    scores = image_rankings(loaded, ranking_records, config, progress)
    if hi is not None:
        if np.shape(hi) != scores["hi"].shape:
            raise InputError(f"the given HI has shape {np.shape(hi)}, this model's heads are {scores['hi'].shape}")
        scores["hi"] = np.asarray(hi, dtype=float)
    if progress is not None:
        progress("gradient importance", 0, 1)
    # one record per backward pass: the graph of a real model's language model is ~1 GB per record
    scores["gradient"] = gradient_importance(loaded, prepare_batches(loaded, ranking_records, task, prompt, 1))
    held_out = [split.held_out[i] for i in range(len(split.held_out))]
    batches = prepare_batches(loaded, held_out, task, prompt, config.batch_size)
    with install_replay(loaded):
        timed = time.perf_counter()
        baseline, cache = baseline_pass(loaded, batches, config.cache_mb * 2**20)
        one_pass = time.perf_counter() - timed
        every = head_sample(scores["hi"], None, 0)
        heads = head_sample(scores["hi"], config.heads, config.seed)
        max_k = min(config.max_k or max(1, len(every) // 4), len(every))
        ks = dose_points(max_k)
        rng = np.random.default_rng(config.seed)
        orders = {name: [ranked(np.nan_to_num(scores[name], nan=-np.inf), every)[:max_k]] for name in RANKINGS}
        orders["random"] = [[every[int(i)] for i in rng.permutation(len(every))[:max_k]] for _ in range(config.orders)]
        orders["layer-matched"] = [layer_matched(orders["hi"][0], every, rng) for _ in range(config.orders)]
        passes, seconds = planned_passes(
            heads, config.modes, orders, ks, len(scores["hi"]), cache.keep_layers, one_pass - cache.vision_seconds
        )
        if progress is not None:
            progress("estimate", round(seconds), passes)
        if time_limit_s is not None and seconds > time_limit_s:
            raise InputError(
                f"this validation would take about {seconds / 60:.0f} min ({passes} passes over "
                f"{len(held_out)} held-out records, {one_pass:.1f} s for the first); this deployment "
                f"allows {time_limit_s / 60:.0f} min: sample fewer heads, use fewer orders or fewer "
                "held-out records"
            )
        means = mean_outputs(loaded, split.train, config)
        effects: dict[str, np.ndarray] = {}  # by mode: (heads, records, 2)
        known: dict[frozenset[Head], Outcome] = {}
        for mode in config.modes:
            effects[mode], outcomes = measure_effects(loaded, batches, heads, mode, baseline, means, cache, progress)
            if mode == "zero":
                known = outcomes
        curves = dose_response(loaded, batches, orders, ks, baseline, cache, known, progress)
    return Validation(
        model=loaded.name,
        dataset=str(dataset),
        task=task,
        config=config,
        split={
            "held_out": len(held_out),
            "ranking_records": len(ranking_records),
            "how": split.description,
            "hi": "given" if hi is not None else "ranking records",
        },
        record_ids=[record.id for record in held_out],
        scores=scores,
        heads=heads,
        baseline=np.stack([baseline[0], baseline[1].astype(float)], axis=1),
        effects=effects,
        curves=curves,
        orders={name: [[list(head) for head in order] for order in group] for name, group in orders.items()},
        ks=ks,
        num_heads=num_attention_heads(loaded),
        seconds=time.perf_counter() - start,
    )
