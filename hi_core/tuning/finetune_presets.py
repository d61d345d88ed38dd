"""Named fine-tunes of the demo model, and how long a run will take before it starts.

`finetune_preset("quick")` is the run the explorer starts with: 7 s on 2 idle CPU cores, 23 s with one of
them busy (`bench/finetune_demo.py`), enough for the demo model to move toward captions in reading order;
`full` is the run of the project's experiment pages (41 s on 2 idle cores, METEOR not counted). `RunRates` turns a
configuration into an estimate of its wall time from rates measured on earlier runs (per training sample,
per held-out record captioned, per record ranked), so a person knows what a launch costs before pressing it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from ..base.errors import check_choice
from .finetune import DataConfig, FinetuneConfig

Preset = Literal["quick", "full"]

PRESETS: dict[str, FinetuneConfig] = {
    # 30 steps of 8 scenes, 16 held-out records captioned twice, the layers ranked on 40 records
    "quick": FinetuneConfig(
        layers="top", k=2, rank=8, lr=4e-3, steps=30, batch_size=8, data=DataConfig(eval_limit=16, meteor=False)
    ),
    # the run docs/compare-demo.md measures with (its held-out set capped at 200 records)
    "full": FinetuneConfig(
        layers="top", k=2, rank=8, lr=2e-3, steps=100, batch_size=16, data=DataConfig(eval_limit=200, meteor=True)
    ),
}
#: The run the explorer's Fine-tune tab starts from (and whose k its layer bars highlight).
DEFAULT_PRESET: Preset = "quick"
#: Records a run that ranks the layers itself scores (the app's default; the CLI ranks all unless told).
RANK_LIMIT = {"quick": 40, "full": 200}


def finetune_preset(name: Preset, **changes) -> FinetuneConfig:
    """The preset `name` (see `PRESETS`), with `changes` to its fields."""
    check_choice("preset", name, Preset)
    return replace(PRESETS[name], **changes)


def preset_names() -> tuple[str, ...]:
    return get_args(Preset)


@dataclass(frozen=True)
class RunRates:
    """Seconds per unit of work of a fine-tune, on one model and machine: per training sample (a step costs
    batch size x this), per held-out record captioned (done twice: before and after tuning), per record
    scored to rank the layers. `source` says where the numbers come from."""

    train_sample_s: float
    caption_s: float
    rank_s: float
    source: str

    def estimate(self, config: FinetuneConfig, held_out: int, ranked: int) -> dict[str, float]:
        """Seconds per stage of a run of `config` with `held_out` records captioned and `ranked` records scored
        for the ranking (0: reused), and their sum under `total`."""
        stages = {
            "ranking": ranked * self.rank_s,
            "training": config.steps * config.batch_size * self.train_sample_s,
            "captioning": 2 * held_out * self.caption_s,
        }
        return stages | {"total": sum(stages.values())}

    def updated(
        self,
        train_sample_s: float | None = None,
        caption_s: float | None = None,
        rank_s: float | None = None,
        source: str | None = None,
    ) -> RunRates:
        """These rates with the ones just measured (None: not measured this time) in their place."""
        return RunRates(
            train_sample_s if train_sample_s is not None else self.train_sample_s,
            caption_s if caption_s is not None else self.caption_s,
            rank_s if rank_s is not None else self.rank_s,
            source or self.source,
        )


#: The demo model's rates before any run on this server: `bench/finetune_demo.py` on 2 idle CPU cores (2026-12-07,
#: torch 2.13 CPU); a server replaces them with its own after its first run.
DEMO_RATES = RunRates(
    train_sample_s=0.023,
    caption_s=0.024,
    rank_s=0.015,
    source="of bench/finetune_demo.py on 2 idle CPU cores (a busy machine is slower)",
)
