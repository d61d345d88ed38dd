"""What removing heads costs the model, teacher-forced: the loss of the scored tokens and first-token accuracy.

`evaluate` runs held-out records prepared once (`prepare_batches`) with some heads removed (`ablate_heads`).
`measure_effects` removes each head alone; `dose_response` removes heads cumulatively along orders. Both reuse
what a removal cannot change (`replay.py`): the model as it is is recorded once (`baseline_pass`), a head of
layer l is measured by computing layers l and up, and each step of an order starts from the step before it,
at the lowest layer of the heads it adds. A set of heads measured once (a head alone) is not measured again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import Record
from ..method.head_selection import Head
from ..model.batching import collate, pad_token_id
from ..model.inputs import key_phrase_tokens, to_model_device
from ..model.loading import LoadedModel
from ..model.replay import PassCache, Plan, install_replay, layer_output_bytes, replaying
from ..tuning.training import training_inputs
from .head_ablation import AblationMode, HeadMeans, ablate_heads

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Outcome = tuple[np.ndarray, np.ndarray]  # per record: (mean scored-token loss, first token right)


@dataclass(frozen=True)
class ScoredBatch:
    """A right-padded batch of records' sequences and where their scored tokens are. `positions`: the sequence
    positions whose logits predict a scored token (shared by the batch: `logits_to_keep`); `rows`, `columns`: for
    each scored token, its record and its index into `positions`; `targets`: its id; `first`: per record, the index
    (into the scored tokens) of its first one."""

    tensors: dict[str, torch.Tensor]
    positions: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor
    targets: torch.Tensor
    first: torch.Tensor
    size: int


def scored_tokens(loaded: LoadedModel, record: Record, task: str, prompt: str):
    """(inputs, token indices): the record's teacher-forced sequence and the response tokens whose loss is measured:
    a caption's key phrase (its whole description without one), a VQA answer's every token."""
    inputs = training_inputs(loaded, record, prompt)
    phrase = record.key_phrase if task == "caption" else None
    return inputs, key_phrase_tokens(inputs, phrase)


def prepare_batches(
    loaded: LoadedModel, records: Sequence[Record], task: str, prompt: str, batch_size: int
) -> list[ScoredBatch]:
    """The records as `ScoredBatch`es, built once (the processor runs once per record, whatever is removed later)."""
    batches = []
    for start in range(0, len(records), batch_size):
        items = [scored_tokens(loaded, record, task, prompt) for record in records[start : start + batch_size]]
        tensors = collate([inputs for inputs, _ in items], pad_token_id(loaded.processor.tokenizer))
        predicting = [inputs.prefix_length + tokens - 1 for inputs, tokens in items]  # the logit before each token
        positions = np.unique(np.concatenate(predicting))
        rows: list[int] = []  # (predicted tokens,) the batch row of each
        columns, targets, first = [], [], []
        for row, ((_inputs, _tokens), where) in enumerate(zip(items, predicting)):
            first.append(len(rows))
            rows += [row] * len(where)
            columns += list(np.searchsorted(positions, where))
            targets += [int(tensors["input_ids"][row, position + 1]) for position in where]
        batches.append(
            ScoredBatch(
                tensors,
                torch.as_tensor(positions),
                torch.as_tensor(rows),
                torch.as_tensor(columns),
                torch.as_tensor(targets),
                torch.as_tensor(first),
                len(items),
            )
        )
    return batches


def token_losses(loaded: LoadedModel, batch: ScoredBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, top): each scored token's cross-entropy and whether it was the model's top prediction."""
    output = loaded.model(
        **to_model_device(batch.tensors, loaded.model), use_cache=False, logits_to_keep=batch.positions
    )
    logits = output.logits[batch.rows, batch.columns].float()  # (scored tokens, vocabulary)
    targets = batch.targets.to(logits.device)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return losses, logits.argmax(dim=-1) == targets


def _per_record(values: torch.Tensor, batch: ScoredBatch) -> np.ndarray:
    totals = torch.zeros(batch.size, dtype=torch.float64).index_add_(0, batch.rows, values.double().cpu())
    return (totals / torch.bincount(batch.rows, minlength=batch.size).clamp(min=1)).numpy()


@torch.inference_mode()
def evaluate(
    loaded: LoadedModel,
    batches: Sequence[ScoredBatch],
    heads: Sequence[Head] = (),
    mode: AblationMode = "zero",
    means: HeadMeans | None = None,
    source: PassCache | None = None,
    start: int = 0,
    record: PassCache | None = None,
) -> Outcome:
    """(loss, correct) per record with `heads` removed: the mean cross-entropy of its scored tokens, and whether its
    first scored token is the model's top prediction. `source`: a pass over the same batches whose image features,
    and outputs of the layers below `start`, are reused (they must be what this pass would compute: no removed head
    below `start`); `record`: where this pass's are kept."""
    losses, correct = [], []
    with install_replay(loaded), ablate_heads(loaded, heads, mode, means):
        for index, batch in enumerate(batches):
            with replaying(Plan(index, start, source, record)):
                scored, top = token_losses(loaded, batch)
            losses.append(_per_record(scored, batch))
            correct.append(top.cpu().numpy()[batch.first.numpy()])
    return np.concatenate(losses), np.concatenate(correct)


def baseline_pass(loaded: LoadedModel, batches: Sequence[ScoredBatch], cache_bytes: int) -> tuple[Outcome, PassCache]:
    """The model as it is over `batches`, and its pass kept for reuse: the image features always, the decoder layers'
    outputs when three passes' worth fit in `cache_bytes` (the baseline's, an order's last step and its next)."""
    tokens = sum(int(batch.tensors["input_ids"].numel()) for batch in batches)
    cache = PassCache(keep_layers=3 * layer_output_bytes(loaded, tokens) <= cache_bytes)
    return evaluate(loaded, batches, record=cache), cache


def measure_effects(
    loaded: LoadedModel,
    batches: Sequence[ScoredBatch],
    heads: Sequence[Head],
    mode: AblationMode,
    baseline: Outcome,
    means: HeadMeans | None,
    cache: PassCache,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[frozenset[Head], Outcome]]:
    """(effects, outcomes): effects (heads, records, 2), per head removed alone, each record's rise in scored-token
    loss and drop in first-token correctness against `baseline`; outcomes: each head set's (loss, correct)."""
    effects, outcomes = np.zeros((len(heads), len(baseline[0]), 2)), {}
    for index, head in enumerate(heads):
        if progress is not None:
            progress(f"removing each head ({mode})", index, len(heads))
        loss, correct = evaluate(loaded, batches, [head], mode, means, cache, start_layer([head], cache.keep_layers))
        effects[index, :, 0] = loss - baseline[0]
        effects[index, :, 1] = baseline[1].astype(float) - correct
        outcomes[frozenset([head])] = (loss, correct)
    return effects, outcomes


def start_layer(added: Sequence[Head], keep_layers: bool) -> int:
    """Where a pass that removes `added` on top of a recorded pass starts computing: their lowest layer (0 where the
    recorded pass kept no layer outputs, `PassCache.keep_layers`)."""
    return min(layer for layer, _ in added) if keep_layers and added else 0


def dose_points(max_k: int) -> list[int]:
    """The k of the dose-response: 0 to 4 each, then about 1.5x apart, and `max_k` (every removal is a forward pass
    over the held-out records, for each of the hundreds of orders)."""
    points, k = [0, 1, 2, 3, 4], 4
    while k < max_k:
        k = max(k + 1, round(k * 1.5))
        points.append(k)
    return sorted({point for point in points if point < max_k} | {max_k})


def order_steps(
    order: Sequence[Head], ks: Sequence[int], known: Collection[frozenset[Head]], keep_layers: bool
) -> dict[int, int]:
    """k -> start layer for each k of `ks` that `dose_response` measures along `order`: not k = 0 (the baseline) nor a
    head set in `known`; each step computes from the lowest layer of the heads it adds to the order's previous step
    (`start_layer`). The time estimate counts the same steps."""
    steps, measured = {}, 0
    for k in ks:
        if k == 0 or frozenset(order[:k]) in known:
            continue
        steps[k], measured = start_layer(order[measured:k], keep_layers), k
    return steps


def dose_response(
    loaded: LoadedModel,
    batches: Sequence[ScoredBatch],
    orders: dict[str, list[list[Head]]],
    ks: Sequence[int],
    baseline: Outcome,
    cache: PassCache,
    known: dict[frozenset[Head], Outcome] | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """name -> (orders, len(ks), 2): the mean loss and first-token accuracy over the records with the first k heads of
    each order removed (zero ablation), for each k of `ks`. k = 0 is the model as it is: `baseline` (`evaluate` with
    no head removed), for all orders; a head set in `known` (zero ablation's outcomes) is not measured again. Each
    step starts from the order's last measured step (`cache`: the baseline pass)."""
    known = known or {}
    plans = {
        name: [order_steps(order, ks, known, cache.keep_layers) for order in group] for name, group in orders.items()
    }
    total = sum(len(steps) for group in plans.values() for steps in group)
    done, curves = 0, {}
    for name, group in orders.items():
        curve = np.zeros((len(group), len(ks), 2))
        for index, (order, steps) in enumerate(zip(group, plans[name])):
            previous = cache
            for column, k in enumerate(ks):
                if k == 0:
                    outcome = baseline
                elif k not in steps:
                    outcome = known[frozenset(order[:k])]
                else:
                    if progress is not None:
                        progress("dose-response", done, total)
                    step = PassCache(keep_layers=cache.keep_layers, vision=cache.vision)
                    outcome = evaluate(loaded, batches, order[:k], source=previous, start=steps[k], record=step)
                    previous, done = step, done + 1
                curve[index, column] = (outcome[0].mean(), np.mean(outcome[1]))
        curves[name] = curve
    return curves
