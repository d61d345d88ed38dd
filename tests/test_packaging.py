"""The installable package (pyproject.toml): `pip install .` into a fresh environment, then the console
scripts work from any folder, with the demo model and the examples found as package data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
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
    # A fresh environment that sees the packages of the environment running the tests (torch & co.: no download;
    # setuptools >= 68, the declared build requirement, which requirements-dev.txt installs) but not this checkout.
    # Not `--system-site-packages`: from inside a venv that option shows the *base* interpreter's packages
    # (there: an old setuptools without bdist_wheel, and no torch).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(venv_site, "test-environment.pth").write_text("\n".join(sorted(here)) + "\n")
    built = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                            "--no-build-isolation", str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
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
