"""The installable package (pyproject.toml): `pip install .` into a fresh environment, then the console
scripts work from any folder, with the demo model and the examples found as package data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _requirement_names(lines: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower() for line in lines if line.strip() and not line.startswith("#")}


def test_pyproject_and_requirements_name_the_same_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"] + project["optional-dependencies"]["app"])
    assert declared == _requirement_names((REPO / "requirements.txt").read_text().splitlines())
    tests = _requirement_names(project["optional-dependencies"]["test"])
    assert _requirement_names((REPO / "requirements-dev.txt").read_text().splitlines()) <= tests


def test_pip_install_then_the_console_scripts_work_from_any_folder(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "artifacts", "__pycache__", ".hypothesis", "build",
                                                                 "*.egg-info", ".venv", "tests", "docs", "bench"))
    venv = tmp_path / "venv"
    # A fresh environment that sees this machine's packages (torch & co.: no download) but not this checkout.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(source)], check=True, capture_output=True)
    shutil.rmtree(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}

    where = subprocess.run([venv / "bin" / "python", "-c", "import hi_core, ui; print(hi_core.__file__); print(ui.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(venv)) for path in where)  # the installed copy, not the checkout

    examples = Path(where[0]).parent / "assets" / "examples"
    record = json.loads((examples / "data.jsonl").read_text().splitlines()[0])
    scored = subprocess.run([venv / "bin" / "hi-core", "score", "--model", "demo", "--image", examples / record["image"],
                             "--mask", examples / record["mask"], "--text", record["text"], "--key-phrase", record["key_phrase"]],
                            cwd=elsewhere, env=env, capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["model"] == "demo" and len(result["heads"]) == result["num_layers"] * result["num_heads"]

    bad = subprocess.run([venv / "bin" / "hi-core", "score", "--model", "demo"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    served = subprocess.run([venv / "bin" / "hi-explorer", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert served.returncode == 0 and "--public" in served.stdout
