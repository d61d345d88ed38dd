"""Running in public (ui/settings.py, ui/storage.py, ui/components.py, app.py's launch): where the server
binds, the deployment policy, bounded uploads and files, and the Space's front matter."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.families import adapter_for
from hi_core.tuning.finetune import FinetuneConfig
from hi_core.model.model_cache import ModelCache
from ui.app import build_demo, launch_options
from ui.components import bounded_open, refuse_in_handler
from ui.feedback import Refused
from ui.context import EXAMPLES_DIR, UNPACKED
from ui.settings import DEFAULT_ALLOWED_MODELS, RELEASED_MODEL_TYPES, Settings, scrub_paths
from ui.storage import RunStorage

from .app_api import predict

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_address(port: int) -> str | None:
    """The local address a socket listening on `port` is bound to, read from /proc/net/tcp (Linux)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return None


@pytest.mark.parametrize(
    "environment, address",
    [
        ({"SPACE_ID": "someone/hi-explorer", "GRADIO_SERVER_NAME": "0.0.0.0"}, "0.0.0.0"),  # what a Space sets
        ({}, "127.0.0.1"),  # locally, loopback unless --host says otherwise
    ],
)
def test_the_app_binds_where_the_environment_says(environment, address, tmp_path):
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRADIO_SERVER", "SPACE_ID", "HI_"))}
    env |= environment | {"GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _listening_address(port) is None:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the app did not start listening"
            time.sleep(0.5)
        assert _listening_address(port) == address
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
        if environment:  # public: uploads are capped, and the process's memory does not follow the upload's pixels
            assert config["max_file_size"] == Settings.public_defaults().max_file_size
            _check_memory_stays_bounded(server.pid, port, tmp_path)
        else:
            assert config["max_file_size"] is None
    finally:
        server.terminate()
        server.wait(timeout=30)


def _peak_rss_mb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def _check_memory_stays_bounded(pid: int, port: int, folder: Path) -> None:
    """A 4000 x 4000 photo is analyzed, an 8000 x 6000 photo and a 12000 x 12000 1-bit PNG are refused from their
    headers; the server's peak memory stays within PEAK_GROWTH_MB of its peak after one small example. (Before the
    bounds: 9.4 GB for the 4000 x 4000 photo, and the 1-bit PNG killed the server; `python bench/app_memory.py`.)"""
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    image, mask, _ = _example()
    _analyze(client, "demo", image, mask)
    baseline = _peak_rss_mb(pid)
    rng = np.random.default_rng(0)
    for name, (width, height), refused in (("photo", (4000, 4000), False), ("wide", (8000, 6000), True)):
        small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(folder / f"{name}.jpg", quality=90)
        object_mask = np.zeros((height, width), np.uint8)
        object_mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 255
        Image.fromarray(object_mask).save(folder / f"{name}-mask.png")
        if refused:  # told beside Analyze (not a Gradio error), with no server path in the message
            message = _analyze(client, "demo", str(folder / f"{name}.jpg"), str(folder / f"{name}-mask.png"))["analyze-message"]
            assert "more than the limit of 24,000,000" in message and str(folder) not in message
        else:
            assert "Best head" in _analyze(client, "demo", str(folder / f"{name}.jpg"), str(folder / f"{name}-mask.png"))["summary"]
    Image.new("1", (12000, 12000)).save(folder / "huge.png")
    assert "12000x12000 = 144,000,000 pixels" in _analyze(client, "demo", str(folder / "huge.png"), mask)["analyze-message"]
    assert _peak_rss_mb(pid) - baseline < PEAK_GROWTH_MB


PEAK_GROWTH_MB = 600  # measured: +190 MB for the 4000 x 4000 photo (public settings, 1536-px images)


def test_settings_are_open_locally_and_bounded_on_a_space():
    local = Settings.from_env(environ={})
    assert not local.public and local.max_dataset_images is None and local.queue_size is None
    assert local.check_model("/any/folder") == "/any/folder"
    space = Settings.from_env(environ={"SPACE_ID": "someone/space"})
    assert space.public and space.max_dataset_images == 200 and space.queue_size == 32 and space.max_upload_mb == 50
    assert Settings.from_env(environ={"HI_PUBLIC": "1"}).public


def test_environment_variables_override_each_limit():
    settings = Settings.from_env(environ={"SPACE_ID": "x/y", "HI_MAX_DATASET_IMAGES": "20", "HI_QUEUE_SIZE": "",
                                          "HI_ALLOWED_MODELS": "demo, owner/small", "HI_MAX_UPLOAD_MB": "1.5"})
    assert settings.max_dataset_images == 20 and settings.queue_size is None and settings.max_upload_mb == 1.5
    assert settings.allowed_models == ("demo", "owner/small")
    with pytest.raises(InputError, match="HI_MAX_LORA_RANK must be a number"):
        Settings.from_env(environ={"HI_MAX_LORA_RANK": "many"})
    with pytest.raises(InputError, match="max_image_pixels must be a positive number"):
        Settings.from_env(environ={"HI_MAX_IMAGE_PIXELS": "nan"})


@pytest.mark.parametrize("name", ["/etc", "/etc/passwd", "/no/such/folder", "~/models/x", "../x", "meta-llama/Llama-3.3-70B-Instruct"])
def test_the_public_policy_refuses_paths_and_other_models_with_one_path_free_message(name):
    settings = Settings.public_defaults()
    with pytest.raises(InputError) as refused:
        settings.check_model(name)
    assert str(refused.value) == f"this deployment offers only these models: {', '.join(DEFAULT_ALLOWED_MODELS)}"
    assert settings.check_model(" demo ") == "demo"


@pytest.mark.parametrize("name, model_type", RELEASED_MODEL_TYPES.items())
def test_every_allow_listed_released_model_is_of_a_supported_family(name, model_type):
    assert adapter_for(model_type).name and name in DEFAULT_ALLOWED_MODELS


def test_public_finetune_and_batch_limits_name_the_limit():
    settings = Settings.public_defaults()
    settings.check_finetune(FinetuneConfig(layers="top", k=1, rank=64, steps=500))
    with pytest.raises(InputError, match="LoRA rank is 20000; this deployment allows at most 64"):
        settings.check_finetune(FinetuneConfig(layers="top", k=1, rank=20000))
    with pytest.raises(InputError, match="steps is 501"):
        settings.check_finetune(FinetuneConfig(layers="top", k=1, steps=501))
    assert settings.dataset_limit(None) == 200 and settings.dataset_limit(5) == 5 and settings.dataset_limit(10_000) == 200
    assert Settings().dataset_limit(None) is None


@pytest.mark.parametrize(
    "message, shown",
    [
        ("mask file '/tmp/gradio/ab12cd/mask.png' is not an image", "mask file 'mask.png' is not an image"),
        ("model folder '/root/.cache/huggingface/hub' has no config.json", "model folder 'hub' has no config.json"),
        ("demo + LoRA /tmp/hi-explorer-datasets/run-x1/adapter", "demo + LoRA adapter"),
        ("layer 3 of 2: pick 0-1", "layer 3 of 2: pick 0-1"),  # fractions and ranges are not paths
        ("C:\\Users\\me\\data\\m.png is bad", "m.png is bad"),
    ],
)
def test_scrub_paths_keeps_only_the_last_component(message, shown):
    assert scrub_paths(message) == shown


def _png(image: Image.Image) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def test_bounded_open_refuses_a_huge_image_from_its_header_and_reduces_a_large_one():
    huge = _png(Image.new("1", (12000, 12000)))  # ~18 KB on disk, 144 Mpx
    assert len(huge.getvalue()) < 100_000
    with pytest.raises(InputError, match="12000x12000 = 144,000,000 pixels, more than the limit of 24,000,000"):
        bounded_open(huge, max_pixels=24_000_000, max_side=1536)
    large = bounded_open(_png(Image.new("RGB", (4000, 3000), (10, 20, 30))), max_pixels=24_000_000, max_side=1536)
    assert large.size == (1536, 1152)


def _public_server(llava_dir, **overrides):
    settings = Settings.public_defaults()
    settings = type(settings)(**{**settings.__dict__, "allowed_models": ("demo", str(llava_dir)), **overrides})
    demo = build_demo(str(llava_dir), ModelCache(), settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    return demo, f"http://127.0.0.1:{port}/"


def _example():
    record = json.loads((EXAMPLES_DIR / "data.jsonl").read_text().splitlines()[1])
    return str(EXAMPLES_DIR / record["image"]), str(EXAMPLES_DIR / record["mask"]), record


def _analyze(client, model, image, mask, lora=""):
    """The analyze event's outputs by elem_id."""
    editor = {"background": handle_file(image), "layers": [], "composite": handle_file(image)}
    return predict(client, "/analyze", model_name=model, device="cpu", editor=editor, uploaded_mask=handle_file(mask),
                   text="a small orange cross at the left", lora=lora)


@pytest.mark.parametrize("make, bad", [
    (lambda: gr.Number(1, minimum=0, maximum=5), 9),
    (lambda: gr.Slider(1, 16, value=2, step=1), 40),
    (lambda: gr.Dropdown(["demo", "other"], value="demo"), "/etc/passwd"),
    (lambda: gr.Radio(["a", "b"], value="a"), "c"),
])
def test_a_checked_control_refuses_in_the_handler_also_as_the_copy_gradio_makes_for_a_session(make, bad):
    """Gradio re-creates a component for a session from its class and constructor arguments when an event updates
    it; the copy refuses a value out of range as the original does (a message beside the action, no traceback)."""
    with gr.Blocks():
        control = refuse_in_handler(make())
        copy = type(control)(**{**control.constructor_args, "render": False})
    for component in (control, copy):
        refused = component.preprocess(bad)
        assert isinstance(refused, Refused) and refused.message


def test_a_public_app_refuses_other_models_huge_images_and_adapters_with_messages_and_keeps_serving(llava_dir, tmp_path):
    demo, url = _public_server(llava_dir)
    try:
        client = Client(url, verbose=False)
        image, mask, _ = _example()
        refusals = set()
        for name in ("/etc", "/etc/passwd", str(tmp_path / "missing"), "someone/other-model"):
            # the model box is a list: Gradio's check refuses any other value, told beside Analyze
            message = _analyze(client, name, image, mask)["analyze-message"]
            assert str(tmp_path) not in message  # paths scrubbed, as in every message
            refusals.add(re.sub(r"Value: \S+ is not", "Value: NAME is not", message))
        assert len(refusals) == 1 and "is not in the list of choices" in refusals.pop()  # folder, file, missing: alike
        refused = _analyze(client, str(llava_dir), image, mask, lora=str(tmp_path))
        assert "applies only the adapter of this session's fine-tune" in refused["analyze-message"]
        assert str(tmp_path) not in refused["analyze-message"]
        huge = tmp_path / "huge.png"
        Image.new("1", (12000, 12000)).save(huge)
        assert "more than the limit of 24,000,000" in _analyze(client, str(llava_dir), str(huge), mask)["analyze-message"]
        summary = _analyze(client, str(llava_dir), image, mask)["summary"]  # and it keeps serving
        assert "Best head" in summary and str(tmp_path) not in summary
        refused = predict(client, "/finetune", model_name=str(llava_dir), device="cpu", source="demo", archive=None, strategy="top", k=1,
                          rank=20000, steps=3, batch_size=4, meteor=False)
        assert "LoRA rank is 20000; this deployment allows at most 64" in refused["ft-status"]
    finally:
        demo.close()


def test_the_editor_still_refuses_a_huge_image_after_an_event_left_it_unchanged(llava_dir, tmp_path):
    """Gradio re-creates a component for the session from its class when an event skips or updates it (here a
    GrabCut without an image, whose error leaves the editor as it was): the limits must survive that."""
    demo, url = _public_server(llava_dir)
    try:
        client = Client(url, verbose=False)
        _, mask, _ = _example()
        assert "upload an image" in predict(client, "/propose_mask", editor=None)["analyze-message"]
        huge = tmp_path / "huge.png"
        Image.new("1", (12000, 12000)).save(huge)
        assert "more than the limit of 24,000,000" in _analyze(client, str(llava_dir), str(huge), mask)["analyze-message"]
    finally:
        demo.close()


def _session_folders() -> set[Path]:
    """The sessions' download folders, and any per-analysis temp folder (the old app left one per analysis)."""
    return set(UNPACKED.glob("session-*")) | set(Path(tempfile.gettempdir()).glob("hi-explorer-*")) - {UNPACKED}


def test_temporary_folders_do_not_grow_over_20_analyses(llava_dir):
    demo, url = _public_server(llava_dir)
    try:
        client = Client(url, verbose=False)
        image, mask, _ = _example()
        before = _session_folders()
        _analyze(client, str(llava_dir), image, mask)
        after_one = _session_folders()
        for _ in range(19):
            downloads = _analyze(client, str(llava_dir), image, mask)["downloads"]
            assert all(Path(path).is_file() for path in downloads)
        assert _session_folders() == after_one and len(after_one - before) == 1  # one folder for the session, reused
    finally:
        demo.close()


def test_run_storage_removes_the_oldest_finished_runs_beyond_its_cap_but_never_a_running_one(tmp_path):
    storage = RunStorage(tmp_path, max_mb=1.5, ttl_s=3600)
    finished = []
    for index in range(3):
        with storage.run() as folder:
            (folder / "data.bin").write_bytes(b"x" * 600_000)
            os.utime(folder, (time.time() - 100 + index, time.time() - 100 + index))
        finished.append(folder)
    assert all(folder.is_dir() for folder in finished)  # 1.8 MB: over the cap, but nothing new was made yet
    with storage.run() as running:
        assert not finished[0].exists() and finished[1].is_dir() and finished[2].is_dir()  # 1.2 MB left
        (running / "big.bin").write_bytes(b"x" * 2_000_000)
        with storage.run() as other:  # the running one is over the cap alone, and stays
            assert running.is_dir() and other.is_dir() and not finished[1].exists() and not finished[2].exists()


def test_run_storage_removes_runs_older_than_its_age_limit(tmp_path):
    storage = RunStorage(tmp_path, max_mb=None, ttl_s=60)
    with storage.run() as old:
        pass
    os.utime(old, (time.time() - 120, time.time() - 120))
    with storage.run():
        assert not old.exists()


def test_the_space_front_matter_names_a_python_that_our_requirements_install_on():
    from huggingface_hub import metadata_load

    card = metadata_load(REPO / "README.md")
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["python_version"] == "3.11"  # transformers >= 5.21 needs Python >= 3.11; a Space defaults to 3.10
    import gradio

    assert card["sdk_version"] == gradio.__version__


def test_the_examples_the_bounded_editor_gets_are_unchanged_below_the_limits():
    image, _, _ = _example()
    original = np.asarray(Image.open(image).convert("RGB"))
    with open(image, "rb") as file:
        reopened = np.asarray(bounded_open(io.BytesIO(file.read()), 24_000_000, 1536).convert("RGB"))
    assert np.array_equal(original, reopened)


def test_the_model_memory_budget_picks_bfloat16_when_float32_would_not_fit_and_the_page_says_so(llava_dir):
    """A public server whose budget (HI_MODEL_MEMORY_GB) holds the model's weights in bfloat16 only: it loads in
    bfloat16 and the status says why; a budget too small for either refuses in one message with both numbers."""
    from dataclasses import replace

    from hi_core.model.model_memory import GB, describe, safetensors_parameters

    parameters = safetensors_parameters(llava_dir)
    for budget, expected in ((parameters * 3, ("bfloat16, ", "in float32 its weights", "would not fit the model memory budget")),
                             (parameters, ("needs", "for its", "more than the model memory budget of"))):
        settings = replace(Settings.public_defaults(), allowed_models=("demo", str(llava_dir)), model_memory_gb=budget / GB)
        assert Settings.from_env(environ={"SPACE_ID": "x", "HI_MODEL_MEMORY_GB": str(budget / GB)}).model_memory == settings.model_memory
        demo = build_demo(str(llava_dir), settings=settings)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            status = next(c for c in client.config["components"] if c["props"].get("elem_id") == "model-status")
            assert f"model memory {describe(settings.model_memory)}" in status["props"]["value"]
            shown = predict(client, "/load_model", model_name=str(llava_dir), device="cpu")["model-status"]
            assert all(part in shown for part in expected), shown
        finally:
            demo.close()
