"""LoRA on the language-model layers chosen by HI (DESIGN 1.9): configuration, held-out split,
targeting, training loop.

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
- `split_dataset` holds records out by a hash of their id (or takes a separate dataset). It reads
  only data.jsonl: the split holds each record's scanned line (`DatasetRecords`), and a record's
  image and mask are opened when a training batch or a batch of held-out captions needs them, so
  memory does not grow with the dataset (a bad file fails then, naming its record).
- Head-level LoRA (`FinetuneConfig.heads`) wraps the layers of the chosen heads the same way and
  confines the update to those heads' slices (`head_lora.py`); `trainable_parameters` then counts
  only the entries its masks leave free.
A whole run (selection, training, held-out captions, the saved adapter and `run.json`) is
`runs.run_finetune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base.errors import InputError, check_choice, check_number, check_whole
from ..data.datasets import INDEX, Record, RecordLine, load_record, scan_dataset
from ..method.head_selection import HeadChoice, format_heads, parse_head_choice
from ..method.layer_selection import LayerChoice, check_layers, parse_layer_choice
from ..model.batching import collate, pad_token_id
from ..model.images import ImageLimits
from ..model.inputs import DEFAULT_PROMPT, ModelInputs, build_inputs, extend_sequence
from ..model.loading import LoadedModel

logger = logging.getLogger(__name__)

Schedule = Literal["cosine", "linear", "constant_with_warmup"]
Task = Literal["caption", "vqa"]
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding (accelerate's `set_seed`) accepts 0..2**32 - 1


@dataclass(frozen=True)
class DataConfig:
    """How records become sequences, and how the held-out split is made and captioned.

    eval_fraction: share of records held out, chosen by a hash of the record id (the same records
    whatever the order or size of the file); ignored when a separate evaluation dataset is given.
    eval_limit: caption at most this many held-out records (None: all).
    prompt: the prompt of records without their own `prompt` (a record's own prompt always wins, in
    training and on the held-out records alike).
    task: what the held-out answers are scored as: `caption` (BLEU-4, ROUGE-L, CIDEr, METEOR, exact
    match) or `vqa` (closed-form VQA: each record's prompt is its question and its text the answer;
    answer accuracy, normalized exact match, with a 95% interval). `vqa` needs records with prompts.
    """

    prompt: str = DEFAULT_PROMPT
    task: Task = "caption"
    eval_fraction: float = 0.2
    eval_limit: int | None = None
    max_new_tokens: int = 64
    eval_batch_size: int = 16
    meteor: bool = True

    def __post_init__(self) -> None:
        check_choice("task", self.task, Task)
        check_number("eval_fraction", self.eval_fraction, "a number in [0, 1)", lambda v: 0 <= v < 1)
        check_whole("eval_limit", self.eval_limit, optional=True)
        for name in ("max_new_tokens", "eval_batch_size"):
            check_whole(name, getattr(self, name))


@dataclass(frozen=True)
class FinetuneConfig:
    """One LoRA run (defaults: DESIGN 1.9). `layers`: a strategy name or explicit layer indices
    (None: `top`, unless `heads` is given); `heads`: head-level LoRA instead (`head_lora.py`): a head
    strategy (top/bottom/random) or (layer, head) pairs, the layers then being those of the chosen
    heads; give one of the two. `k`: how many layers (or heads) top/bottom/random pick.
    `targets`: names of linear modules inside the attention module (empty: all of them)."""

    layers: LayerChoice | None = None
    heads: HeadChoice | None = None
    k: int = 4
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ()
    lr: float = 2e-4
    steps: int = 200
    batch_size: int = 8
    warmup: float = 0.1  # share of the steps
    schedule: Schedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.heads is not None:
            if self.layers is not None:
                raise InputError(
                    f"give layers or heads, not both (got layers {self.layers!r} and heads {self.heads!r})"
                )
            object.__setattr__(self, "heads", _head_choice(self.heads))
        elif self.layers is None:
            object.__setattr__(self, "layers", "top")
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", parse_layer_choice(self.layers))
        elif self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        object.__setattr__(self, "targets", tuple(self.targets))
        if any(not isinstance(name, str) or not name.strip() for name in self.targets):
            raise InputError(
                f"targets must be names of linear modules of the attention (e.g. q_proj), got {list(self.targets)}"
            )
        check_choice("schedule", self.schedule, Schedule)
        for name in ("k", "rank", "steps", "batch_size"):
            check_whole(name, getattr(self, name))
        check_whole("seed", self.seed, 0, MAX_SEED)
        # AdamW moves every weight by about lr per step: above 1 it only destroys the weights (and
        # near float32's range the step itself overflows), so such values are refused up front.
        check_number("lr", self.lr, "a number in (0, 1]", lambda v: 0 < v <= 1)
        check_number("alpha", self.alpha, "a number > 0", lambda v: v > 0)
        check_number("dropout", self.dropout, "a number in [0, 1)", lambda v: 0 <= v < 1)
        check_number("warmup", self.warmup, "a share of the steps in [0, 1)", lambda v: 0 <= v < 1)
        check_number("weight_decay", self.weight_decay, "a number >= 0", lambda v: v >= 0)
        check_number("max_grad_norm", self.max_grad_norm, "a number > 0", lambda v: v > 0)

    @property
    def strategy(self) -> str:
        """The run's strategy as run.json names it: top/bottom/random/all/list for layers,
        top-heads/bottom-heads/random-heads/list-heads for heads."""
        if self.heads is not None:
            return f"{self.heads if isinstance(self.heads, str) else 'list'}-heads"
        return self.layers if isinstance(self.layers, str) else "list"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FinetuneConfig:
        layers, heads = data["layers"], data.get("heads")
        return cls(
            **data
            | {
                "layers": tuple(layers) if isinstance(layers, list) else layers,
                "heads": tuple(tuple(pair) for pair in heads) if isinstance(heads, list) else heads,
                "data": DataConfig(**data["data"]),
            }
        )


def _head_choice(heads: Any) -> HeadChoice:
    """A head strategy, or (layer, head) pairs (from text such as `2:5,4:0`, or pairs), checked for
    what needs no model: at least one pair, no negative index, no repeat."""
    choice = parse_head_choice(heads) if isinstance(heads, str) else heads
    if isinstance(choice, str):
        return choice
    try:
        pairs = tuple((int(layer), int(head)) for layer, head in choice)
    except (TypeError, ValueError):
        raise InputError(f"heads must be top, bottom, random or (layer, head) pairs, got {heads!r}") from None
    if not pairs:
        raise InputError("heads: give at least one layer:head pair")
    if any(layer < 0 or head < 0 for layer, head in pairs):
        raise InputError(f"heads {format_heads(pairs)}: layers and heads are numbered from 0")
    if len(set(pairs)) != len(pairs):
        raise InputError(f"heads {format_heads(pairs)} repeat a head")
    return pairs


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


# --- the held-out split -------------------------------------------------------------------------


def is_held_out(record_id: str, fraction: float) -> bool:
    """Whether a record belongs to the held-out share: a hash of its id, not its position."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class DatasetRecords(Sequence[Record]):
    """Records of a dataset folder, read lazily: only their scanned lines (ids, texts, file names)
    are held; indexing opens a record's image and mask (`load_record`) and keeps nothing, so a
    training batch or a batch of held-out captions holds only its own records' pixels. A slice is
    another `DatasetRecords`. A record whose files cannot be read raises InputError naming it.
    limits: how far each record's files are decoded (None: the library's pixel cap, full size; a
    server passes its own, so a batch holds at most batch x max_side^2 pixels)."""

    def __init__(self, folder: str | Path, lines: Sequence[RecordLine], limits: ImageLimits | None = None) -> None:
        self.folder = Path(folder)
        self.lines = list(lines)  # well-formed lines only (`RecordLine.problem` is None)
        self.limits = limits

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> DatasetRecords: ...

    def __getitem__(self, index: int | slice) -> Record | DatasetRecords:
        if isinstance(index, slice):
            return DatasetRecords(self.folder, self.lines[index], self.limits)
        line = self.lines[index]
        try:
            return load_record(self.folder, line, self.limits)
        except InputError as error:
            raise InputError(
                f"record {line.id!r} (line {line.number} of {str(self.folder / INDEX)!r}) cannot be read: {error}"
            ) from None

    @property
    def ids(self) -> list[str]:
        return [str(line.id) for line in self.lines]

    def __repr__(self) -> str:
        return f"DatasetRecords({str(self.folder)!r}, {len(self)} records)"


def scan_records(folder: str | Path, limits: ImageLimits | None = None) -> DatasetRecords:
    """The well-formed records of a dataset folder, in file order, without opening any image (then
    decoded within `limits`); malformed lines and repeated ids are skipped (logged) as `read_dataset`
    skips them."""
    lines = []
    for line in scan_dataset(folder):
        if line.problem is None:
            lines.append(line)
        else:
            logger.warning("skipping %s line %d: %s", INDEX, line.number, line.problem)
    return DatasetRecords(folder, lines, limits)


@dataclass(frozen=True)
class Split:
    """Training and held-out records (read lazily); `description` says how the split was made."""

    train: DatasetRecords
    held_out: DatasetRecords
    description: str


def split_dataset(
    dataset: str | Path,
    data: DataConfig = DataConfig(),
    eval_dataset: str | Path | None = None,
    need_train: bool = True,
    image_limits: ImageLimits | None = None,
) -> Split:
    """The training records and the held-out ones (a hashed share of `dataset`, or `eval_dataset`;
    the training set never contains a held-out id). Only data.jsonl is read here: images and masks
    are opened when a batch needs them (`DatasetRecords`), so a file that is missing or unreadable
    fails then, naming its record. need_train: refuse a split without training records (InputError);
    False for a run that only evaluates (an ablation may hold out the whole dataset). image_limits: how
    far the records' files are decoded when they are read (`DatasetRecords`)."""
    records = scan_records(dataset, image_limits)
    if eval_dataset is not None:
        held_out = scan_records(eval_dataset, image_limits)
        description = f"held out: {eval_dataset}"
    else:
        held_out = DatasetRecords(
            dataset, [line for line in records.lines if is_held_out(str(line.id), data.eval_fraction)], image_limits
        )
        description = f"held out: {data.eval_fraction:.0%} of {dataset} by a hash of the record id"
    held_ids = set(held_out.ids)
    train = DatasetRecords(dataset, [line for line in records.lines if line.id not in held_ids], image_limits)
    if need_train and not train:
        raise InputError(
            f"dataset {str(dataset)!r} has no records to train on" + (" outside the held-out set" if records else "")
        )
    if data.eval_limit is not None:
        held_out = held_out[: data.eval_limit]
    return Split(train=train, held_out=held_out, description=description)


def has_prompts(dataset: str | Path) -> bool:
    """Whether any well-formed record of the dataset has its own prompt (reads only data.jsonl)."""
    return any(line.fields.get("prompt") for line in scan_dataset(dataset) if line.problem is None)


def check_task(task: Task, dataset: str | Path, name: str | None = None) -> None:
    """A VQA run needs questions: InputError when no record of `dataset` has a prompt (the default
    prompt would be asked of every record). `name`: the dataset as the message calls it."""
    if task == "vqa" and not has_prompts(dataset):
        raise InputError(
            f"the VQA task needs records whose `prompt` is the question (and `text` its answer); no record of "
            f"{name or repr(str(dataset))} has a prompt: choose such a dataset, or the caption task"
        )


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
    largest = min(min(module.in_features, module.out_features) for module in map(layer.get_submodule, names))
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
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=regex, bias="none"
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
