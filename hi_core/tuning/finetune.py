"""What a LoRA run on the layers chosen by HI is set up with (DESIGN 1.9): its configuration and its
records, split into training and held-out ones.

- `FinetuneConfig` is one run (layers or heads, rank, steps, ...), `DataConfig` how records become
  sequences and how the held-out split is made and captioned; both are checked when built.
- `split_dataset` holds records out by a hash of their id (or takes a separate dataset). It reads
  only data.jsonl: the split holds each record's scanned line (`DatasetRecords`), and a record's
  image and mask are opened when a training batch or a batch of held-out captions needs them, so
  memory does not grow with the dataset (a bad file fails then, naming its record).
The LoRA targeting and the training loop are `training.py`; a whole run (selection, training, held-out
captions, the saved adapter and `run.json`) is `runs.run_finetune`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from ..base.errors import InputError, check_choice, check_number, check_whole
from ..data.datasets import INDEX, Record, RecordLine, load_record, scan_dataset
from ..method.head_selection import HeadChoice, format_heads, parse_head_choice
from ..method.layer_selection import LayerChoice, parse_layer_choice
from ..model.images import ImageLimits
from ..model.inputs import DEFAULT_PROMPT

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

    @property
    def layer_choice(self) -> LayerChoice:
        """`layers` of a layer run (never None once built when `heads` is None); ValueError for a
        head-level run, whose layers are those of its heads."""
        if self.layers is None:
            raise ValueError(f"a head-level run ({self.heads!r}) chooses heads, not layers")
        return self.layers

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


def _head_choice(heads: str | HeadChoice) -> HeadChoice:
    """A head strategy, or (layer, head) pairs (from text such as `2:5,4:0`, or pairs), checked for
    what needs no model: at least one pair, no negative index, no repeat (pairs given as anything else
    are an InputError)."""
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
