"""Head-level LoRA: LoRA restricted to chosen attention heads (DESIGN 8; the paper's future work).

peft's LoRA adds `delta W = B @ A` (times alpha / r) to a projection. An attention head owns a block
of the projections' weights: its rows of `q_proj` (its query; a gated query, as in Qwen3.5, keeps
the gate beside it in the same block), the rows of `k_proj`/`v_proj` of the KV head it reads, and its
block of input columns of `o_proj`. Head-level LoRA wraps the layers that hold a chosen head as
layer LoRA does (`training.lora_config`), then confines the update to the chosen blocks:
- q_proj: rows of `lora_B` outside the chosen query heads are zero, so delta W's rows are too;
- k_proj, v_proj: rows of `lora_B` outside the trained KV heads are zero. Under grouped-query
  attention a KV head serves `num_heads / num_kv_heads` query heads (transformers' `repeat_kv`:
  query head h reads KV head h // group); it is trained when any of its query heads is chosen, so
  the other query heads of its group see the changed keys and values (their own weights stay);
- o_proj: columns of `lora_A` outside the chosen heads' input columns are zero, so delta W's are too.
The masked entries are zeroed when the adapter is attached and their gradients are masked by a hook
on the parameter, so AdamW never moves them (zero gradient, zero moments, zero update; weight decay
scales zero to zero). Everything outside the chosen blocks stays exactly as it was, and the saved
adapter is a plain peft adapter whose masked entries are zero: `PeftModel.from_pretrained` loads it.

The shared factors (A of q/k/v, B of o) stay whole: each wrapped layer costs `rank x hidden` per
projection whatever the number of its heads, plus `rank x head block` per chosen (KV) head.
`training.trainable_parameters(model, masks)` counts the entries that can move: what a run reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..base.errors import InputError
from ..method.head_selection import Head, format_heads
from ..model.loading import LoadedModel

#: The attention projections head-level LoRA knows how to slice, and the factor each masks.
PROJECTIONS = {"q_proj": "query rows", "k_proj": "kv rows", "v_proj": "kv rows", "o_proj": "query columns"}


@dataclass(frozen=True)
class HeadPlan:
    """Which heads a head-level LoRA trains. heads: (layer, query head), sorted. num_heads,
    num_kv_heads: per layer, of the language model (equal without grouped-query attention)."""

    heads: tuple[Head, ...]
    num_heads: int
    num_kv_heads: int

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers holding a chosen head, ascending: the layers LoRA wraps."""
        return tuple(sorted({layer for layer, _ in self.heads}))

    def query_heads(self, layer: int) -> tuple[int, ...]:
        return tuple(head for head_layer, head in self.heads if head_layer == layer)

    def kv_heads(self, layer: int) -> tuple[int, ...]:
        """The KV heads trained in `layer`: those read by any chosen query head."""
        return tuple(sorted({head // self.group for head in self.query_heads(layer)}))

    def kv_heads_json(self) -> dict[str, list[int]]:
        """{layer: [KV heads trained]} (JSON keys are strings)."""
        return {str(layer): list(self.kv_heads(layer)) for layer in self.layers}

    def __str__(self) -> str:
        return format_heads(self.heads)


def head_counts(loaded: LoadedModel) -> tuple[int, int]:
    """(query heads, KV heads) per softmax-attention layer of the language model, from its config."""
    text = loaded.model.config.get_text_config()
    num_heads = int(text.num_attention_heads)
    num_kv_heads = int(getattr(text, "num_key_value_heads", None) or num_heads)
    if num_heads % num_kv_heads:
        raise InputError(
            f"the language model has {num_heads} query heads and {num_kv_heads} KV heads (not a whole group "
            "per KV head): head-level LoRA cannot tell which KV head a query head reads"
        )
    return num_heads, num_kv_heads


def plan_heads(loaded: LoadedModel, heads: Sequence[Head]) -> HeadPlan:
    """The plan for `heads` (already selected and checked against the model: `select_heads`)."""
    num_heads, num_kv_heads = head_counts(loaded)
    return HeadPlan(
        heads=tuple(sorted((int(layer), int(h)) for layer, h in heads)), num_heads=num_heads, num_kv_heads=num_kv_heads
    )


def _block_mask(size: int, blocks: int, chosen: Sequence[int], what: str, name: str) -> torch.Tensor:
    """(size,) bool: True on the chosen blocks of `size` entries split into `blocks` equal blocks."""
    if size % blocks:
        raise InputError(
            f"{name} has {size} {what}, not a whole number per head ({blocks} heads): head-level LoRA cannot slice it"
        )
    mask = torch.zeros(blocks, size // blocks, dtype=torch.bool)
    mask[list(chosen)] = True
    return mask.reshape(size)


def check_targets(names: Sequence[str]) -> None:
    """InputError unless every LoRA target (names relative to a decoder layer) is a projection
    head-level LoRA can slice."""
    unknown = [name for name in names if name.rsplit(".", 1)[-1] not in PROJECTIONS]
    if unknown:
        raise InputError(
            f"head-level LoRA slices {', '.join(PROJECTIONS)} by head; this attention's target "
            f"{unknown[0]!r} is none of them: choose --targets among those, or --layers"
        )


def head_masks(loaded: LoadedModel, plan: HeadPlan) -> dict[torch.nn.Parameter, torch.Tensor]:
    """{LoRA parameter: bool mask of its shape, True where it may train} for the masked factor of
    every LoRA-wrapped projection in the attention of the plan's layers (B of q/k/v, A of o).
    The LoRA layers must be attached."""
    from peft.tuners.lora import LoraLayer

    attention = loaded.adapter.attention_modules(loaded.model)
    masks: dict[torch.nn.Parameter, torch.Tensor] = {}
    for layer in plan.layers:
        layer_attention = attention[layer]
        if layer_attention is None:
            raise RuntimeError(f"layer {layer} holds chosen heads but has no softmax attention")
        wrapped = [(name, module) for name, module in layer_attention.named_modules() if isinstance(module, LoraLayer)]
        check_targets([name for name, _ in wrapped])
        for name, module in wrapped:
            kind = PROJECTIONS[name.rsplit(".", 1)[-1]]
            where = f"layer {layer}'s {name}"
            for adapter_name in module.lora_A:
                if kind == "query columns":
                    weight = _lora_weight(module.lora_A[adapter_name], where)  # (rank, in): in = num_heads x head block
                    keep = _block_mask(weight.shape[1], plan.num_heads, plan.query_heads(layer), "input columns", where)
                    masks[weight] = keep.expand(weight.shape).clone()
                else:
                    weight = _lora_weight(module.lora_B[adapter_name], where)  # (out, rank): out = heads x head block
                    heads = plan.query_heads(layer) if kind == "query rows" else plan.kv_heads(layer)
                    blocks = plan.num_heads if kind == "query rows" else plan.num_kv_heads
                    keep = _block_mask(weight.shape[0], blocks, heads, "output rows", where)
                    masks[weight] = keep[:, None].expand(weight.shape).clone()
    return masks


def _lora_weight(factor: torch.nn.Module, where: str) -> torch.nn.Parameter:
    """The weight of a LoRA factor (peft's `lora_A`/`lora_B` of a linear projection: an nn.Linear)."""
    weight = factor.weight
    if not isinstance(weight, torch.nn.Parameter):
        raise TypeError(f"{where}: LoRA factor {type(factor).__name__} has no weight parameter")
    return weight


@contextlib.contextmanager
def heads_only(masks: dict[torch.nn.Parameter, torch.Tensor]) -> Iterator[dict[torch.nn.Parameter, torch.Tensor]]:
    """Inside the block, the masked LoRA entries are zero and receive zero gradients (a hook on each
    parameter), so training moves only the chosen heads' slices; the hooks are removed on exit."""
    handles = []
    try:
        with torch.no_grad():
            for parameter, mask in masks.items():
                parameter.mul_(mask.to(parameter.dtype))
        for parameter, mask in masks.items():
            handles.append(parameter.register_hook(_masked_gradient(mask)))
        yield masks
    finally:
        for handle in handles:
            handle.remove()


def _masked_gradient(mask: torch.Tensor) -> Any:
    def hook(gradient: torch.Tensor) -> torch.Tensor:
        return gradient * mask.to(device=gradient.device, dtype=gradient.dtype)

    return hook
