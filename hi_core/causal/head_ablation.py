"""Removing heads inside a block (`ablate_heads`), the heads' mean outputs it can put in their place, and one image
described and scored again without some heads (`ablate_image`, the explorer's ablation view).

A head's contribution to a layer's output is its slice of the attention output before the output
projection: every supported language model concatenates its heads, head h at columns
h*head_dim..(h+1)*head_dim-1 of the input of `o_proj`. `ablate_heads` replaces those slices by
zero (`mode="zero"`) or by the head's mean over a set of records (`mode="mean"`, the means from
`head_output_means`), with a forward pre-hook on each touched layer's `o_proj`, removed in
`finally`. The hooks act only in the context (thread) that entered the block (a `ContextVar`, as in
`capture.py`): a concurrent forward on the same model in another thread sees every head. Query
heads are ablated one by one; with grouped KV heads the shared key/value heads keep serving the
other query heads of their group. The experiment over a dataset's held-out records is `ablation.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..base.errors import InputError, check_choice
from ..data.datasets import Record
from ..method.analysis import ImageAnalysis, analyze_image
from ..method.head_selection import Head, check_head_choice
from ..method.image_scoring import AnalysisConfig
from ..model.captioning import generate_description
from ..model.inputs import to_model_device
from ..model.loading import LoadedModel
from ..tuning.training import training_batch

AblationMode = Literal["zero", "mean"]

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


def _input_width(projection: torch.nn.Module) -> int:
    """The input width (`in_features`: heads x head_dim) of a projection that `output_projections` returned."""
    width = getattr(projection, "in_features", None)
    if not isinstance(width, int):
        raise TypeError(f"{type(projection).__name__} has no whole-number in_features: not from output_projections")
    return width


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
        head_dim = _input_width(projections[layer]) // num_heads
        if mode == "zero":
            fills[layer] = None
            continue
        mean = None if means is None else means.means.get(layer)  # means is None only in mode "zero" (see above)
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
        layer: torch.zeros(_input_width(projection), dtype=torch.float64) for layer, projection in projections.items()
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
