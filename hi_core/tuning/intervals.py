"""Confidence intervals over runs: the mean of a metric over seeds with its t-interval, and the difference of
two strategies' means with a Welch t-interval (the comparison's cells; the ablation's too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def mean_interval(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of runs with a t-interval (low/high None for a single run)."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "low": None, "high": None, "values": array.tolist()}
    half = float(stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": array.tolist()}


def difference_interval(a: list[float], b: list[float], confidence: float = 0.95) -> dict[str, Any] | None:
    """mean(a) - mean(b) with a Welch t-interval; None when either side has fewer than 2 runs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        return None
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    difference = float(x.mean() - y.mean())
    if vx + vy == 0:
        return {"difference": difference, "low": difference, "high": difference}
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof) * np.sqrt(vx + vy))
    return {"difference": difference, "low": difference - half, "high": difference + half}
