"""The benchmarks measure what they say: each script imports, and every function a benchmark wraps to time or to
measure is still the one the library looks up by that name (a rename used to leave bench/finetune.py wrapping a
function that no longer existed)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def looked_up(module, name: str) -> bool:
    """Whether code of `module` reads the global `name` (so replacing the module's attribute reaches the calls)."""
    tree = ast.parse(inspect.getsource(module))
    return any(isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load) for node in ast.walk(tree))


@pytest.mark.parametrize("script", sorted(path.stem for path in BENCH.glob("*.py")))
def test_every_benchmark_imports(script):
    assert callable(getattr(load(script), "main", None)), f"bench/{script}.py has no main()"


def test_the_finetune_benchmark_wraps_what_run_finetune_calls():
    import hi_core.tuning.runs as runs

    stages = load("finetune").STAGES
    assert set(stages) == {"split", "training", "captions"}
    called = inspect.getsource(runs.run_finetune)
    for name in stages.values():
        assert callable(getattr(runs, name)) and f"{name}(" in called, name


def test_the_dataset_benchmark_times_functions_that_are_looked_up_where_it_wraps_them():
    bench = load("dataset")
    for owner, attribute, _, _ in bench.STAGES:
        assert callable(getattr(owner, attribute)), (owner, attribute)
        if inspect.ismodule(owner) and owner is not bench:
            assert looked_up(owner, attribute), f"{owner.__name__} never calls {attribute}: timing it measures nothing"
