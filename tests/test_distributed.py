"""The processes of a run, read from the launcher's environment in one place. (Real multi-process
runs: test_dataset_scoring's accelerate test and test_runs' torchrun test.)"""

from __future__ import annotations

import sys

import pytest

from hi_core.base import distributed


@pytest.mark.parametrize("env, size, main", [({}, 1, True), ({"WORLD_SIZE": "1", "RANK": "0"}, 1, True),
                                             ({"WORLD_SIZE": "2", "RANK": "0"}, 2, True), ({"WORLD_SIZE": "4", "RANK": "3"}, 4, False)])
def test_world_size_and_main_process_come_from_the_launchers_environment(monkeypatch, env, size, main):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.world_size() == size and distributed.is_distributed() == (size > 1)
    assert distributed.is_main_process() == main


def test_a_single_process_is_0_of_1_and_never_sets_up_accelerate(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importing it would fail
    state = distributed.process_state(cpu=True)
    assert (state.process, state.processes) == (0, 1) and state.barrier() is None


def test_under_a_launcher_the_state_is_accelerates(monkeypatch):
    import accelerate

    made = []

    class FakeState:
        def __init__(self, cpu):
            made.append(cpu)
            self.process_index, self.num_processes = 1, 2

        def wait_for_everyone(self):
            made.append("barrier")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    index, count, barrier = distributed.process_state(cpu=False)
    barrier()
    assert (index, count) == (1, 2) and made == [False, "barrier"]
