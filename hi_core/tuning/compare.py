"""The paper's comparison (DESIGN 1.9): LoRA on the top-k HI layers against the same budget on
random or bottom-k layers, on all layers, and no tuning, over several seeds.

`run_compare` runs, in `OUT/runs/`, `pretrained` once and each other strategy once per seed
(seed s sets the LoRA initialization, the data order and, for `random`, the layers); each run is a
run folder (`run_folders.py`), so a rerun reuses the finished ones (and says so through `on_run`) and an
interruption loses only the run in progress. Then it summarizes the held-out metrics per strategy
(mean over seeds, 95% t-interval; the one `pretrained` run's answer accuracy with its 95% Wilson
interval over the held-out records), the differences top - random and top - bottom (95% Welch
interval; `intervals.py`), and writes `results.json`, `report.md` and the figures `metrics.png`,
`loss.png`, `layers.png` (`compare_report.py`). The ranking, when computed from the dataset, is kept
in `ranking.json` for reruns.

Head strategies (`top-heads`, `random-heads`, `bottom-heads`) run head-level LoRA (`head_lora.py`)
on `heads_k` heads, by default k x the heads of one layer: as many heads as the layer strategies'
k layers hold, so "k layers' worth of heads by HI" meets "as many random heads" and "k layers". The
parameter counts are not equal (a wrapped layer's shared LoRA factors cost the same whatever the
number of its chosen heads, and under grouped-query attention the KV heads trained depend on
which query heads share them), so the report gives each run's exact count. Their head ranking is
kept in `head_ranking.json`; the differences add top-heads - random-heads, top-heads - bottom-heads
and top-heads - top.
The task (`FinetuneConfig.data.task`) decides the metrics: caption metrics, or for `vqa` answer
accuracy (normalized exact match) of the answers to each record's question.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ..base.distributed import is_main_process
from ..base.errors import InputError, check_whole
from ..base.outputs import check_output_folder, write_json
from ..method.head_selection import HeadRanking, HeadStrategy, check_head_choice, select_heads
from ..method.layer_selection import Ranking, Strategy, select_layers
from ..model.loading import LoadedModel
from .finetune import MAX_SEED, FinetuneConfig, check_task, split_dataset
from .head_lora import check_targets, head_counts
from .intervals import difference_interval, mean_interval
from .rankings import dataset_head_ranking, dataset_ranking, dataset_rankings
from .run_folders import RUN_FILE, RunRecord
from .runs import run_finetune, run_pretrained
from .training import TrainCallbacks, attention_targets

logger = logging.getLogger(__name__)

CompareStrategy = Literal["pretrained", "top", "random", "bottom", "all", "top-heads", "random-heads", "bottom-heads"]
LAYER_STRATEGIES: tuple[CompareStrategy, ...] = ("pretrained", "top", "random", "bottom", "all")
#: A tuned layer strategy's name -> the layer choice of its runs.
LAYER_CHOICES: dict[CompareStrategy, Strategy] = {"top": "top", "random": "random", "bottom": "bottom", "all": "all"}
#: A head strategy's name -> the head choice of its runs.
HEAD_STRATEGIES: dict[CompareStrategy, HeadStrategy] = {
    "top-heads": "top",
    "random-heads": "random",
    "bottom-heads": "bottom",
}
#: The differences reported (a - b), when both strategies ran.
DIFFERENCES = (
    ("top", "random"),
    ("top", "bottom"),
    ("top-heads", "random-heads"),
    ("top-heads", "bottom-heads"),
    ("top-heads", "top"),
)
METRICS = {
    "bleu4": "BLEU-4",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
    "meteor": "METEOR",
    "exact": "exact match",
    "accuracy": "answer accuracy",
}
RANKING_FILE = "ranking.json"
HEAD_RANKING_FILE = "head_ranking.json"


@dataclass(frozen=True)
class CompareConfig:
    """The runs of a comparison: `finetune` for every tuned run (its `layers` is replaced by each
    strategy, its `seed` is the first seed), `seeds` runs per tuned strategy. `heads_k`: the heads
    each head strategy trains (None: `finetune.k` x the heads of a layer, fixed when the model is known)."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seeds: int = 3
    strategies: tuple[CompareStrategy, ...] = LAYER_STRATEGIES
    heads_k: int | None = None

    def __post_init__(self) -> None:
        check_whole("seeds", self.seeds)
        check_whole("heads_k", self.heads_k, optional=True)
        last = self.finetune.seed + self.seeds - 1
        if last > MAX_SEED:
            raise InputError(
                f"seeds {self.finetune.seed}..{last} go past the largest seed {MAX_SEED}: lower seed or seeds"
            )
        unknown = [name for name in self.strategies if name not in get_args(CompareStrategy)]
        if unknown or not self.strategies:
            raise InputError(
                f"strategies must be among {', '.join(get_args(CompareStrategy))}, got {list(self.strategies)}"
            )
        if self.finetune.heads is not None:
            raise InputError("the comparison's finetune settings choose layers; head strategies are among `strategies`")

    def uses_layers(self) -> bool:
        """Whether a layer strategy (other than `pretrained`) runs."""
        return any(strategy in LAYER_STRATEGIES[1:] for strategy in self.strategies)

    def needs_head_ranking(self) -> bool:
        return any(strategy in ("top-heads", "bottom-heads") for strategy in self.strategies)

    def run_config(self, strategy: CompareStrategy, seed: int, heads_k: int) -> FinetuneConfig:
        """The `FinetuneConfig` of a tuned run of `strategy` with `seed`; `heads_k`: heads of a head strategy."""
        if strategy in HEAD_STRATEGIES:
            return replace(self.finetune, layers=None, heads=HEAD_STRATEGIES[strategy], k=heads_k, seed=seed)
        if strategy not in LAYER_CHOICES:
            raise InputError(f"{strategy!r} is not a tuned strategy: it has no fine-tuning settings")
        return replace(self.finetune, layers=LAYER_CHOICES[strategy], seed=seed)

    def run_names(self) -> list[tuple[str, CompareStrategy, int]]:
        """(folder name, strategy, seed) of every run, in the order they run."""
        names: list[tuple[str, CompareStrategy, int]] = []
        for strategy in self.strategies:
            if strategy == "pretrained":
                names.append(("pretrained", strategy, self.finetune.seed))
            else:
                names += [
                    (f"{strategy}-seed{seed}", strategy, seed)
                    for seed in range(self.finetune.seed, self.finetune.seed + self.seeds)
                ]
        return names


@dataclass(frozen=True)
class Comparison:
    """Every run of a comparison by strategy (in seed order), and which were reused."""

    config: CompareConfig
    model: str
    dataset: str
    ranking: Ranking | None
    runs: dict[str, list[RunRecord]]
    reused: list[str]
    head_ranking: HeadRanking | None = None
    heads_k: int | None = None

    def metric_names(self) -> list[str]:
        present = {name for records in self.runs.values() for record in records for name in record.metrics}
        return [name for name in METRICS if name in present]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per strategy: metrics (mean/low/high/values), parameters (the first run's, and each run's:
        head strategies differ by seed), layers per seed (and heads, KV heads per seed), final loss."""
        result = {}
        for strategy, records in self.runs.items():
            result[strategy] = {
                "runs": len(records),
                "layers": [record.layers for record in records],
                "trainable_parameters": records[0].trainable_parameters,
                "trainable_share": records[0].trainable_share,
                "trainable_per_run": [record.trainable_parameters for record in records],
                "metrics": {
                    name: _metric_summary(records, name)
                    for name in self.metric_names()
                    if all(name in r.metrics for r in records)
                },
                "final_loss": mean_interval([float(np.mean(r.losses[-10:])) for r in records])
                if records[0].losses
                else None,
                "seconds_per_step": float(np.mean([r.timings["seconds_per_step"] for r in records])),
            }
            if records[0].heads is not None:
                result[strategy] |= {
                    "heads": [record.heads for record in records],
                    "kv_heads": [record.kv_heads for record in records],
                }
        return result

    def differences(self) -> dict[str, dict[str, Any]]:
        """top - random, top - bottom (and top-heads - random-heads, top-heads - bottom-heads,
        top-heads - top) for each metric, when both ran (Welch 95% interval over seeds)."""
        result: dict[str, dict[str, Any]] = {}
        for first, other in DIFFERENCES:
            if first not in self.runs or other not in self.runs:
                continue
            result[f"{first} - {other}"] = {
                name: difference_interval(
                    [r.metrics[name] for r in self.runs[first]], [r.metrics[name] for r in self.runs[other]]
                )
                for name in self.metric_names()
                if all(name in r.metrics for r in self.runs[first] + self.runs[other])
            }
        return result

    def to_json(self) -> dict[str, Any]:
        any_run = next(iter(self.runs.values()))[0]
        return {
            "model": self.model,
            "dataset": self.dataset,
            "task": self.config.finetune.data.task,
            "config": asdict(self.config),
            "ranking": self.ranking.to_json() if self.ranking is not None else None,
            "head_ranking": self.head_ranking.to_json() if self.head_ranking is not None else None,
            "heads_k": self.heads_k,
            "num_layers": any_run.num_layers,
            "split": any_run.split,
            "strategies": self.summary(),
            "differences": self.differences(),
            "metric_notes": sorted(
                {note for records in self.runs.values() for r in records for note in r.metric_notes}
            ),
            "runs": {strategy: [f"runs/{run_name(r)}" for r in records] for strategy, records in self.runs.items()},
            "reused": self.reused,
        }


def _metric_summary(records: list[RunRecord], name: str) -> dict[str, Any]:
    """Mean over the runs with a t-interval over seeds (`interval`: "seeds"); a single run with an
    interval of its own over its held-out records (answer accuracy) has that one ("held-out records")."""
    entry = mean_interval([record.metrics[name] for record in records])
    if entry["low"] is not None:
        return entry | {"interval": "seeds"}
    own = records[0].metric_intervals.get(name) if len(records) == 1 else None
    if own is not None:
        return entry | {"low": own["low"], "high": own["high"], "interval": "held-out records"}
    return entry | {"interval": None}


def run_name(record: RunRecord) -> str:
    """The folder of a comparison's run under OUT/runs/ (as `CompareConfig.run_names` names it)."""
    return (
        "pretrained"
        if record.strategy == "pretrained"
        else f"{record.strategy}-seed{record.settings['config']['seed']}"
    )


def _kept(path: Path, read: Callable[[dict[str, Any], str], Any]) -> Any:
    """A ranking kept by an earlier run of the comparison, or None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        source = str(data["source"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{str(path)!r} is damaged ({error}); delete it to score the dataset again") from None
    logger.info("using the ranking kept in %s", path)
    return read(data, source)


def _rankings(
    loaded: LoadedModel,
    dataset: str | Path,
    out: Path,
    config: CompareConfig,
    ranking: Ranking | None,
    head_ranking: HeadRanking | None,
    limit: int | None,
) -> tuple[Ranking | None, HeadRanking | None]:
    """The layer ranking (if top/bottom run) and the head ranking (if top-heads/bottom-heads run):
    each the given one, else the one kept in OUT, else dataset HI computed now (one scoring pass
    for both) and kept."""
    need_layers = any(strategy in ("top", "bottom") for strategy in config.strategies)
    need_heads = config.needs_head_ranking()
    if need_layers and ranking is None:
        ranking = _kept(out / RANKING_FILE, Ranking.from_json)
    if need_heads and head_ranking is None:
        head_ranking = _kept(out / HEAD_RANKING_FILE, HeadRanking.from_json)
    missing_layers, missing_heads = need_layers and ranking is None, need_heads and head_ranking is None
    scored: dict[str, Ranking | HeadRanking] = {}  # file name -> a ranking scored now, to keep
    if missing_layers and missing_heads:
        ranking, head_ranking = dataset_rankings(loaded, dataset, limit)
        scored = {RANKING_FILE: ranking, HEAD_RANKING_FILE: head_ranking}
    elif missing_layers:
        ranking = dataset_ranking(loaded, dataset, limit)
        scored = {RANKING_FILE: ranking}
    elif missing_heads:
        head_ranking = dataset_head_ranking(loaded, dataset, limit)
        scored = {HEAD_RANKING_FILE: head_ranking}
    if is_main_process():
        for name, kept in scored.items():
            write_json(out / name, kept.to_json())
    return (ranking if need_layers else None), (head_ranking if need_heads else None)


def check_compare_folder(out: str | Path, what: str = "comparison folder") -> Path:
    """`out` if a comparison can be written there: absent, empty, or one an earlier comparison wrote
    (it has `runs/`, `ranking.json` or `results.json`, which a rerun reuses); else InputError, so that
    report files never land among a user's own files."""
    out = check_output_folder(out, what)
    ours = ("runs", RANKING_FILE, HEAD_RANKING_FILE, "results.json")
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in ours):
        raise InputError(
            f"{what} {str(out)!r} exists and is not a comparison folder (no runs/ or results.json); "
            "choose a new or empty folder"
        )
    return out


def run_compare(
    loaded: LoadedModel,
    dataset: str | Path,
    out: str | Path,
    config: CompareConfig = CompareConfig(),
    ranking: Ranking | None = None,
    eval_dataset: str | Path | None = None,
    ranking_limit: int | None = None,
    on_run: Callable[[int, int, str, bool], None] | None = None,
    callbacks: TrainCallbacks | None = None,
    head_ranking: HeadRanking | None = None,
) -> Comparison:
    """Run (or reuse) every run of the comparison in OUT/runs/, then write the report into OUT.

    on_run(index, total, name, reused): called before each run (1-based index), for progress.
    `ranking` (layers) and `head_ranking` (heads): given, else kept in OUT, else scored now.
    """
    out = check_compare_folder(out)
    adaptable = loaded.adapter.scored_layers(loaded.model)  # softmax-attention layers
    heads = [strategy for strategy in config.strategies if strategy in HEAD_STRATEGIES]
    num_heads = head_counts(loaded)[0] if heads else 0  # 0 (unused) when no head strategy runs
    heads_k = config.heads_k if config.heads_k is not None else config.finetune.k * num_heads
    if heads:
        check_targets(attention_targets(loaded, config.finetune.targets))
    for strategy in config.strategies:  # input errors (k too large, ...) before any work
        if strategy in HEAD_STRATEGIES:
            check_head_choice(HEAD_STRATEGIES[strategy], adaptable, num_heads, heads_k)
        elif strategy in ("random", "all"):
            select_layers(LAYER_CHOICES[strategy], adaptable, config.finetune.k, None, config.finetune.seed)
    for folder in (dataset, eval_dataset):  # a VQA comparison needs questions, before the ranking is scored
        if folder is not None:
            check_task(config.finetune.data.task, folder)
    ranking, head_ranking = _rankings(loaded, dataset, out, config, ranking, head_ranking, ranking_limit)
    if ranking is not None:
        select_layers("top", adaptable, config.finetune.k, ranking)
    if head_ranking is not None:
        select_heads("top", adaptable, num_heads, heads_k, head_ranking)
    split = None
    runs: dict[str, list[RunRecord]] = {}
    reused: list[str] = []
    names = config.run_names()
    for index, (name, strategy, seed) in enumerate(names, start=1):
        folder = out / "runs" / name
        finished = (folder / RUN_FILE).is_file()
        if on_run is not None:
            on_run(index, len(names), name, finished)
        if finished:
            reused.append(name)
        elif split is None:
            split = split_dataset(dataset, config.finetune.data, eval_dataset)
        if strategy == "pretrained":
            record = run_pretrained(loaded, dataset, folder, config.finetune.data, eval_dataset, split)
        else:
            run_config = config.run_config(strategy, seed, heads_k)
            chosen = head_ranking if strategy in HEAD_STRATEGIES else ranking
            record = run_finetune(loaded, dataset, folder, run_config, chosen, eval_dataset, callbacks, split)
        runs.setdefault(strategy, []).append(record)
    comparison = Comparison(
        config=config,
        model=loaded.name,
        dataset=str(dataset),
        ranking=ranking,
        runs=runs,
        reused=reused,
        head_ranking=head_ranking,
        heads_k=heads_k if heads else None,
    )
    if is_main_process():
        from .compare_report import write_report  # here: the report module imports this one's Comparison

        write_report(comparison, out)
    return comparison
