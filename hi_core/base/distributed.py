"""The processes of a data-parallel run (`accelerate launch`, `torchrun`): how many, which one is
this, and the barrier between them. The one place that reads the launchers' environment.

A launcher sets WORLD_SIZE and RANK for every process it starts; without one, this is process 0
of 1 and accelerate is never imported. Under a launcher, `process_state` sets up accelerate's
`PartialState` (gloo between CPU processes, NCCL between GPUs): the process group that the dataset
scorer's barrier and the training `Accelerator` (`training.make_accelerator`) share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple


def world_size() -> int:
    """How many processes the run has (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True for process 0, the one that reports and writes (and for a run without a launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


class ProcessState(NamedTuple):
    """This process's index (`process`) among `processes`, and a barrier that waits for all of them. (Not
    `index`/`count`: a NamedTuple's fields would hide the tuple's methods of those names.)"""

    process: int
    processes: int
    barrier: Callable[[], None]


def _no_barrier() -> None:
    return None


def process_state(cpu: bool) -> ProcessState:
    """(0, 1, no-op) alone; under a launcher, this process bound to its device (`cpu`: the CPU,
    with gloo; else its GPU) through accelerate's `PartialState`, with its index, count and barrier."""
    if not is_distributed():
        return ProcessState(0, 1, _no_barrier)
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return ProcessState(state.process_index, state.num_processes, state.wait_for_everyone)
