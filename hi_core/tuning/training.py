"""LoRA on the chosen language-model layers (DESIGN 1.9): targeting, attaching, and the training loop.

- `lora_config` targets the attention projections (every linear module of a decoder layer's
  attention: q/k/v/o for Llama-style models) of the chosen layers only, with a `target_modules`
  regex anchored at the adapter's decoder-layer path. (peft's `layers_pattern="layers"` would also
  wrap the vision tower's layers with the same numbers; see NOTES.) Only layers with softmax
  attention are adapted: a hybrid model's linear-attention layers are neither scored nor tuned.
- `train_lora` trains the attached adapter: AdamW, warm-up then cosine/linear decay, seeded; the
  batches are built like scoring's (`build_inputs` + `collate`, right padding), each record with its own
  prompt when it has one (a VQA record's question), with the loss on the description (or answer)
  tokens and the end-of-sequence token only. It runs through `accelerate.Accelerator`,
  so the same loop works under `accelerate launch` (each process takes its slice of every batch).
- Head-level LoRA (`FinetuneConfig.heads`) wraps the layers of the chosen heads the same way and
  confines the update to those heads' slices (`head_lora.py`); `trainable_parameters` then counts
  only the entries its masks leave free.
The run's configuration and its held-out split are `finetune.py`; a whole run is `runs.run_finetune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base.errors import InputError
from ..data.datasets import Record
from ..method.layer_selection import check_layers
from ..model.batching import collate, pad_token_id
from ..model.inputs import ModelInputs, build_inputs, extend_sequence
from ..model.loading import LoadedModel
from .finetune import FinetuneConfig


@dataclass
class TrainCallbacks:
    """Hooks for a live view: `on_step(step, loss)` after every step (1-based); training stops with
    `TrainingCancelled` at the next step once `should_stop()` is true (nothing is saved)."""

    on_step: Callable[[int, float], None] | None = None
    should_stop: Callable[[], bool] | None = None


class TrainingCancelled(Exception):
    """Training was stopped by `TrainCallbacks.should_stop`; no run folder was written."""


class TrainingDiverged(InputError):
    """The loss or the adapter's weights became NaN or infinite (usually: the learning rate is too
    high); training stopped there and no run folder was written."""


# --- LoRA on the chosen layers ------------------------------------------------------------------


def _first_scored_layer(loaded: LoadedModel) -> int:
    """A decoder layer with softmax attention (in a hybrid model layer 0 may have none)."""
    return loaded.adapter.scored_layers(loaded.model)[0]


def attention_targets(loaded: LoadedModel, targets: Sequence[str] = ()) -> list[str]:
    """Names, relative to a decoder layer, of the linear modules LoRA wraps (e.g. `self_attn.q_proj`):
    those of the softmax attention (a hybrid model's linear-attention layers have other modules)."""
    index = _first_scored_layer(loaded)
    layer = loaded.adapter.decoder_layers(loaded.model)[index]
    attention = loaded.adapter.attention_modules(loaded.model)[index]
    if attention is None:
        raise RuntimeError(f"layer {index} is listed among the scored layers but has no softmax attention")
    prefix = next(name for name, module in layer.named_modules() if module is attention)
    linears = [name for name, module in attention.named_modules() if isinstance(module, torch.nn.Linear)]
    unknown = [name for name in targets if name not in linears]
    if unknown:
        raise InputError(f"target {unknown[0]!r} is not a linear module of the attention; it has {', '.join(linears)}")
    return [f"{prefix}.{name}" if prefix else name for name in (targets or linears)]


def lora_config(loaded: LoadedModel, layers: Sequence[int], config: FinetuneConfig) -> Any:
    """A peft LoraConfig wrapping the attention projections of `layers` of the language model only;
    every layer must have softmax attention (`FamilyAdapter.scored_layers`, the layers `select_layers` picks from)."""
    from peft import LoraConfig

    check_layers(list(layers), loaded.adapter.scored_layers(loaded.model))
    path = loaded.adapter.decoder_layers_path(loaded.model)
    names = attention_targets(loaded, config.targets)
    layer = loaded.adapter.decoder_layers(loaded.model)[_first_scored_layer(loaded)]
    projections = [layer.get_submodule(name) for name in names]  # nn.Linear: `attention_targets` lists no other
    largest = min(min(m.in_features, m.out_features) for m in projections if isinstance(m, torch.nn.Linear))
    if config.rank > largest:  # a higher rank adds no expressiveness, only memory (rank 10**9 is out of memory)
        raise InputError(
            f"rank must be at most {largest} for this model (the smallest size of the adapted projections), "
            f"got {config.rank}"
        )
    regex = (
        rf"{re.escape(path)}\.({'|'.join(str(layer) for layer in layers)})"
        rf"\.({'|'.join(re.escape(name) for name in names)})"
    )
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft types it int; a float works (only alpha / r)
        lora_dropout=config.dropout,
        target_modules=regex,
        bias="none",
    )


@contextlib.contextmanager
def lora_attached(loaded: LoadedModel, config: Any, seed: int = 0) -> Iterator[Any]:
    """The model with LoRA layers injected (a peft model; A initialized from `seed`) inside the
    block; on exit, always, the LoRA layers are removed without merging, so the base weights are
    exactly as before."""
    from peft import get_peft_model

    flags = {name: parameter.requires_grad for name, parameter in loaded.model.named_parameters()}
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(loaded.model, config)
    try:
        yield peft_model
    finally:
        peft_model.unload()
        for name, parameter in loaded.model.named_parameters():
            parameter.requires_grad_(flags[name])
        loaded.model.eval()


def trainable_parameters(model: torch.nn.Module, masks: dict[torch.nn.Parameter, torch.Tensor] | None = None) -> int:
    """The entries training can move: every entry of a parameter that requires a gradient, but of a
    parameter in `masks` (head-level LoRA: `head_lora.head_masks`) only those its mask keeps."""
    masks = masks or {}
    return sum(int(masks[p].sum()) if p in masks else p.numel() for p in model.parameters() if p.requires_grad)


# --- training -----------------------------------------------------------------------------------


def training_inputs(loaded: LoadedModel, record: Record, prompt: str) -> ModelInputs:
    """The record's sequence (prefix + description) with the end-of-sequence token appended; the
    prefix is built with the record's own prompt (a VQA question) if it has one, else `prompt`."""
    inputs = build_inputs(
        loaded.adapter, loaded.model, loaded.processor, record.image, record.prompt or prompt, record.text
    )
    eos = loaded.processor.tokenizer.eos_token_id
    if eos is None:
        return inputs
    return dataclasses.replace(inputs, tensors=extend_sequence(inputs.tensors, [eos], loaded.adapter))


def training_batch(loaded: LoadedModel, records: Sequence[Record], prompt: str) -> dict[str, torch.Tensor]:
    """A right-padded batch with `labels`: the description (answer) + eos tokens, -100 on prefix and
    padding. `prompt`: for records without their own."""
    items = [training_inputs(loaded, record, prompt) for record in records]
    batch = collate(items, pad_token_id(loaded.processor.tokenizer))
    labels = batch["input_ids"].clone()  # (B, T)
    for row, item in enumerate(items):
        labels[row, : item.prefix_length] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def _sample_order(count: int, seed: int) -> Iterator[int]:
    """Record indices, epoch after epoch, each epoch a fresh seeded permutation."""
    rng = np.random.default_rng(seed)
    while True:
        yield from (int(i) for i in rng.permutation(count))


def make_accelerator(loaded: LoadedModel) -> Any:
    """The `accelerate.Accelerator` of this process: one GPU of `accelerate launch`, or the model's device."""
    from accelerate import Accelerator

    return Accelerator(cpu=loaded.device.type == "cpu")


def train_lora(
    loaded: LoadedModel,
    records: Sequence[Record],
    config: FinetuneConfig,
    callbacks: TrainCallbacks | None = None,
    accelerator: Any = None,
) -> list[float]:
    """Train the trainable parameters of `loaded.model` (the attached LoRA) in place; the loss of every step."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    callbacks = callbacks or TrainCallbacks()
    accelerator = accelerator or make_accelerator(loaded)
    set_seed(config.seed)
    parameters = [parameter for parameter in loaded.model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    # stepped once per step by hand: an accelerate-prepared scheduler steps once per process
    scheduler = get_scheduler(
        config.schedule,
        optimizer,
        num_warmup_steps=round(config.warmup * config.steps),
        num_training_steps=config.steps,
    )
    model, optimizer = accelerator.prepare(loaded.model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    rank, processes = accelerator.process_index, accelerator.num_processes
    order = _sample_order(len(records), config.seed)
    losses: list[float] = []
    model.train()
    progress = tqdm(
        range(1, config.steps + 1), desc="lora", unit="step", disable=not accelerator.is_local_main_process or None
    )
    try:
        for step in progress:
            if callbacks.should_stop is not None and callbacks.should_stop():
                raise TrainingCancelled(f"cancelled at step {step} of {config.steps}")
            drawn = [next(order) for _ in range(config.batch_size * processes)]  # the same on every process
            mine = [
                records[index] for index in drawn[rank * config.batch_size : (rank + 1) * config.batch_size]
            ]  # read now
            batch = training_batch(loaded, mine, config.data.prompt)
            batch = {
                key: value.to(accelerator.device, unwrapped.dtype)
                if value.is_floating_point()
                else value.to(accelerator.device)
                for key, value in batch.items()
            }
            loss = model(**batch, use_cache=False).loss
            value = float(accelerator.reduce(loss.detach(), reduction="mean"))  # the same on every process
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged at step {step} of {config.steps} (loss {value}): lower lr (now {config.lr:g})"
                )
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # A finite loss can still give non-finite weights (an overflowing update); the adapter
            # would then be saved as NaN, so check the (few) trainable weights after every step.
            if not all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
                raise TrainingDiverged(
                    f"training diverged at step {step} of {config.steps} (the adapter's weights "
                    f"became NaN or infinite): lower lr (now {config.lr:g})"
                )
            losses.append(value)
            progress.set_postfix(loss=f"{value:.3f}")
            if callbacks.on_step is not None:
                callbacks.on_step(step, value)
    finally:
        progress.close()
        unwrapped.eval()
    return losses
