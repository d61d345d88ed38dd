"""Shared fixtures: tiny models are built once per session, offline."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# One temporary directory per test session (set before gradio and ui are imported): the app's run
# and session folders, and Gradio's file cache, whose files a closing server deletes (content-hashed
# paths, the same in every process), are then never shared with another test run on this machine.
_SESSION_TMP = tempfile.mkdtemp(prefix="hi-explorer-tests-")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)

import numpy as np
import pytest
import torch
from PIL import Image

from hi_core.model.loading import LoadConfig, load_model

from . import tiny_models


def pytest_collection_modifyitems(config, items):
    """Tests marked `real_size` run only with HI_REAL_SIZE=1: otherwise deselected (not skipped), so the
    README's test command reports no skips for them."""
    if os.environ.get("HI_REAL_SIZE"):
        return
    deselected = [item for item in items if item.get_closest_marker("real_size")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("real_size")]


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    return tiny_models.build_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="session")
def llava(llava_dir):
    return load_model(LoadConfig(model=str(llava_dir), device="cpu"))


@pytest.fixture(scope="session")
def page_config() -> dict:
    """The config Gradio sends the browser for the app as `python app.py` builds it (default settings): components
    and events, built once for the tests that read the page's wiring."""
    from ui.app import build_demo

    return build_demo().get_config_file()


@pytest.fixture(scope="module")
def one_thread():
    """Training tiny models: ~30x faster on one torch thread on a shared 2-core machine (bench/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scene():
    """A 60x80 image with a bright square, and the square's mask."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 80, 3)) * 80).astype(np.uint8)
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:40, 30:50] = True
    pixels[mask] = (250, 40, 40)
    return Image.fromarray(pixels), mask
