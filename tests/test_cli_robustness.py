"""The command line's exits (hi_core/cli/exits.py) and atomic writes (hi_core/base/outputs.py) under what a user can do
to a run: arguments that are not UTF-8, and Ctrl-C at any point. One line on stderr, exit 2 or 130, no traceback,
nothing half-written."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hi_core.cli import common
from hi_core.cli import main as cli

from hi_core.base import outputs
from hi_core.base.outputs import atomic_path, write_json, write_npz

ROOT = Path(__file__).resolve().parents[1]
NOT_UTF8 = b"a red \xff\xfe circle".decode("utf-8", "surrogateescape")  # what Python makes of those bytes in argv


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every leaf subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*prefix, name))
            return
    yield prefix, parser


def _string_option_cases():
    """(command words, flag, argv) for every string option of every subcommand: its required options filled in,
    the option under test given text that is not UTF-8."""
    cases = []
    for words, parser in _subcommands(cli.build_parser()):
        strings = [a for a in parser._actions if a.option_strings and a.type is None and a.nargs is None
                   and not a.choices and not isinstance(a, (argparse._StoreTrueAction, argparse._HelpAction))]
        required = [a for a in parser._actions if a.required and a.option_strings]
        for action in strings:
            argv = list(words)
            groups = [group._group_actions for group in parser._mutually_exclusive_groups if group.required]
            for other in required + [group[0] for group in groups if action not in group]:
                if other is not action:
                    argv += [other.option_strings[-1], "1" if other.type is int else "x"]
            cases.append((" ".join(words), action.option_strings[-1], [*argv, action.option_strings[-1], NOT_UTF8]))
    return cases


STRING_OPTIONS = _string_option_cases()


def test_the_table_covers_every_subcommand_and_its_text_options():
    covered = {command for command, _, _ in STRING_OPTIONS}
    assert covered == {" ".join(words) for words, _ in _subcommands(cli.build_parser())}
    assert {"--text", "--prompt", "--key-phrase", "--model", "--image", "--out"} <= {flag for c, flag, _ in STRING_OPTIONS if c == "score"}


@pytest.mark.parametrize("command, flag, argv", STRING_OPTIONS, ids=[f"{c}:{f}" for c, f, _ in STRING_OPTIONS])
def test_an_argument_that_is_not_utf8_is_one_line_exit_2_before_anything_runs(command, flag, argv, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(common, "load", lambda args: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and list(tmp_path.iterdir()) == [], lines
    assert lines[0].startswith(f"error: {flag} is not UTF-8 text (byte 0xff at position 6)"), lines


def _run(argv: list[bytes | str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *argv], cwd=kwargs.pop("cwd", ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_non_utf8_bytes_on_a_real_command_line_are_one_line_exit_2(files, llava_dir):
    child = _run([b"-m", b"hi_core", b"score", b"--model", str(llava_dir).encode(), b"--image", bytes(files / "image.png"),
                  b"--mask", bytes(files / "mask.png"), b"--text", b"a red \xff\xfe circle"])
    _, err = child.communicate(timeout=120)
    assert child.returncode == 2 and err.decode().splitlines() == [
        "error: --text is not UTF-8 text (byte 0xff at position 6): give it in UTF-8"]


@pytest.fixture
def files(tmp_path, scene):
    image, mask = scene
    image.save(tmp_path / "image.png")
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return tmp_path


# --- Ctrl-C --------------------------------------------------------------------------------------------------

# A child that sends itself SIGINT at one point of a real run (the signal lands as Ctrl-C's does: between two
# Python steps), then runs `python -m hi_core` as a user would.
INTERRUPT_AT = """
import importlib, os, runpy, signal, sys
module, path = sys.argv[1].split(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)
def interrupted(*args, **kwargs):
    result = original(*args, **kwargs) if sys.argv[2] == "after" else None
    os.kill(os.getpid(), signal.SIGINT)
    return result if sys.argv[2] == "after" else original(*args, **kwargs)
setattr(owner, name, interrupted)
sys.argv = ["hi_core", *sys.argv[3:]]
runpy.run_module("hi_core", run_name="__main__", alter_sys=True)
"""

POINTS = {  # where Ctrl-C lands -> (module:function, before or after it runs)
    "loading the processor": ("hi_core.model.loading:load_processor", "before"),
    "loading the weights": ("transformers:AutoModelForImageTextToText.from_pretrained", "after"),
    "scoring": ("hi_core.method.analysis:head_maps_and_views", "before"),
    "writing the maps, one array of two written": ("numpy.lib.format:write_array", "after"),
    "renaming the maps into place": ("os:replace", "before"),
    "between the maps and the JSON": ("hi_core.method.analysis:write_json", "before"),
}


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name not in ("image.png", "mask.png"))


@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_at_any_point_is_one_line_exit_130_and_nothing_half_written(point, files, llava_dir):
    function, when = POINTS[point]
    out = files / "out"
    child = _run(["-c", INTERRUPT_AT, function, when, "score", "--model", str(llava_dir), "--image", str(files / "image.png"),
                  "--mask", str(files / "mask.png"), "--text", "a red square", "--device", "cpu",
                  "--out", str(out / "score.json"), "--maps", str(out / "maps.npz")])
    _, err = child.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert child.returncode == 130 and lines == ["interrupted"], err.decode()[-2000:]
    written = _leftovers(out) if out.is_dir() else []
    if point == "between the maps and the JSON":
        assert written == ["maps.npz"]  # written whole before the JSON began
        assert np.load(out / "maps.npz")["maps"].ndim == 4
    else:
        assert written == []


def test_ctrl_c_during_dataset_scoring_leaves_no_result_and_the_rerun_resumes(tmp_path, llava_dir):
    assert cli.main(["dataset", "synth", "--out", str(tmp_path / "data"), "--n", "40", "--size", "48"]) == 0
    out = tmp_path / "scores.json"
    argv = ["-m", "hi_core", "score", "--dataset", str(tmp_path / "data"), "--model", str(llava_dir), "--device", "cpu",
            "--batch-size", "1", "--resamples", "50", "--out", str(out)]
    child = _run(argv)
    cache = tmp_path / "scores.cache"
    deadline = time.monotonic() + 240
    while not any(cache.glob("*.jsonl")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first image's result is cached: mid-run
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    cached = sum(len(part.read_text().splitlines()) for part in cache.glob("*.jsonl"))
    assert 1 <= cached < 40  # interrupted mid-run
    assert child.returncode == 130 and err.decode().strip().splitlines()[-1] == "interrupted", err.decode()[-2000:]
    assert "Traceback" not in err.decode() and not out.exists()
    assert not [path for path in tmp_path.rglob("*") if path.name.endswith(".tmp")]
    rerun = _run(argv)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert json.loads(out.read_text())["images"] == 40 and not cache.exists()  # the default cache goes once done


# --- atomic writes -------------------------------------------------------------------------------------------

def test_an_interrupted_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"run": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text('{"run": 2, "hal')
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"run": 1} and sorted(tmp_path.iterdir()) == [target]


def test_an_npz_interrupted_inside_numpy_leaves_nothing(tmp_path, monkeypatch):
    def half_then_interrupted(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_npz(tmp_path / "maps.npz", maps=np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_the_temporary_file_is_set_up_leaves_nothing(tmp_path, monkeypatch):
    close = os.close

    def interrupted(handle):
        close(handle)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "result.json"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writes_never_change_the_umask_and_give_ordinary_file_modes(tmp_path, monkeypatch):
    """The umask is process-wide: changing it per write races with other threads' files in a server."""
    current = os.umask(0o022)
    os.umask(current)
    assert outputs.UMASK == current
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the umask was changed"))
    write_json(tmp_path / "result.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o666 & ~current


@pytest.mark.parametrize("delay", [0.8, 2.0])
def test_ctrl_c_while_the_command_line_imports_torch_is_one_line_exit_130(delay):
    """`import hi_core` is light (names are imported on first use), so even the first seconds of `python -m hi_core`,
    spent importing torch and transformers, end in one line and exit 130, not Python's traceback."""
    process = subprocess.Popen([sys.executable, "-m", "hi_core", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parent.parent)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.decode().strip() == "interrupted"


def test_import_hi_core_loads_nothing_heavy_and_keeps_its_public_names():
    code = ("import sys, hi_core; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "assert hi_core.score_maps.__module__ == 'hi_core.method.scoring'; from hi_core import *; print(len(hi_core.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 80
