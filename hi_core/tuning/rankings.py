"""The rankings a run's top/bottom choice is made from, when none is given: layers and heads ranked
by dataset HI scored now (`dataset_rankings`, one scoring pass for both), or the layer ranking of
dataset scores made earlier with the same model on the same records (`reuse_ranking`: the app's
Dataset tab's scores, reused by its fine-tune).
"""

from __future__ import annotations

from pathlib import Path

from ..base.distributed import is_distributed
from ..base.errors import InputError
from ..data.dataset_analysis import DatasetAnalysis, DatasetConfig
from ..data.dataset_scoring import score_dataset
from ..data.datasets import INDEX
from ..method.head_selection import HeadRanking
from ..method.layer_selection import Ranking
from ..model.images import ImageLimits
from ..model.loading import LoadConfig, LoadedModel


def dataset_rankings(
    loaded: LoadedModel, dataset: str | Path, limit: int | None = None, image_limits: ImageLimits | None = None
) -> tuple[Ranking, HeadRanking]:
    """Layers and heads ranked by dataset HI (`score --dataset` with default options, the records
    decoded within `image_limits`), from one scoring pass computed now."""
    if is_distributed():
        raise InputError("under accelerate launch, score the dataset first (score --dataset) and give --ranking")
    analysis = score_dataset(loaded, dataset, DatasetConfig(limit=limit, image_limits=image_limits))
    if analysis is None:
        raise RuntimeError("score_dataset returned no result on a single process")
    source = f"dataset HI of {dataset} ({len(analysis.images)} images)"
    return Ranking.from_scores(analysis.layer_scores, source), HeadRanking.from_hi(analysis.hi, source)


def dataset_ranking(
    loaded: LoadedModel, dataset: str | Path, limit: int | None = None, image_limits: ImageLimits | None = None
) -> Ranking:
    """Layers ranked by dataset HI (`score --dataset` with default options), computed now."""
    return dataset_rankings(loaded, dataset, limit, image_limits)[0]


def dataset_head_ranking(loaded: LoadedModel, dataset: str | Path, limit: int | None = None) -> HeadRanking:
    """Heads ranked by dataset HI (`score --dataset` with default options), computed now."""
    return dataset_rankings(loaded, dataset, limit)[1]


def reuse_ranking(
    scored: DatasetAnalysis | None,
    scored_load: LoadConfig | None,
    scored_folder: Path | None,
    load: LoadConfig,
    folder: Path,
) -> Ranking | None:
    """The layer ranking of dataset scores made earlier (`scored`, by the model of `scored_load`, on
    the dataset in `scored_folder`), if they fit a run of the model of `load` on `folder`: the same
    model configuration and the same records (byte-identical data.jsonl); else None (rank anew).
    Scores whose dataset files are gone are not reused."""
    if scored is None or scored_load is None or scored_folder is None or scored_load != load:
        return None
    try:
        same_records = (Path(scored_folder) / INDEX).read_bytes() == (Path(folder) / INDEX).read_bytes()
    except OSError:  # either dataset is gone (cleaned up), or unreadable
        return None
    if not same_records:
        return None
    return Ranking.from_scores(
        scored.layer_scores, f"dataset HI of {Path(folder).name} ({len(scored.images)} images, scored earlier)"
    )
