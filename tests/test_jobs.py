"""`ui.jobs.Progress`: the time left of a running job, from its measured rate, without jumps."""

from __future__ import annotations

import pytest

from ui import jobs
from ui.jobs import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(jobs.time, "monotonic", clock)
    return clock


def _run(progress: Progress, clock: Clock, durations: list[float], readings_per_step: int = 2) -> list[float]:
    """Steps of the given durations, the estimate read `readings_per_step` times during each (as the page does)."""
    shown = []
    for seconds in durations:
        for _ in range(readings_per_step):
            clock.now += seconds / readings_per_step
            left = progress.seconds_left()
            if left is not None:
                shown.append(left)
        progress.step()
    return shown


def test_no_estimate_before_two_steps_then_the_measured_rate(clock):
    progress = Progress(total=100)
    assert progress.seconds_left() is None
    _run(progress, clock, [1.0, 1.0], readings_per_step=1)
    assert progress.seconds_left() == pytest.approx(98.0)  # 1 s per step since the first, 98 steps to go


def test_one_slow_step_moves_the_estimate_by_a_share_not_all_of_it(clock):
    progress = Progress(total=100)
    steady = _run(progress, clock, [1.0] * 20)
    assert 80 < steady[-1] < 88  # 81 steps left at 1 s, the early readings still fading
    after = _run(progress, clock, [30.0], readings_per_step=1)  # one step 30x slower (another process, say)
    unsmoothed = (clock.now - progress.first_step) / (progress.done - 1) * (progress.total - progress.done)
    assert unsmoothed - steady[-1] > 40  # the raw rate jumps by most of a minute...
    assert abs(after[-1] - steady[-1]) < 0.25 * (unsmoothed - steady[-1]) + 1  # ...the estimate shown by a share


def test_the_estimate_counts_down_while_the_rate_holds(clock):
    progress = Progress(total=50)
    shown = _run(progress, clock, [2.0] * 30)
    assert all(later < earlier for earlier, later in zip(shown[5:], shown[6:]))
    assert shown[-1] == pytest.approx(2.0 * 21, rel=0.05)
