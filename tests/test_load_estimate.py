"""The load estimate (hi_core/model/model_memory.py, hi_core/model/model_cache.py's ModelCache, the CLI and the app): a model's size
is known from its configuration before any weight is allocated, and a model that cannot fit is refused in one
message naming both numbers; a configuration transformers cannot build, or one too deep to build at all, is one
message too."""

from __future__ import annotations

import json
import resource
import shutil
import socket
import time

import pytest
from transformers import AutoModelForImageTextToText

from hi_core.cli import main as cli

from hi_core.model import model_cache
from hi_core.base.errors import InputError
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.model_cache import ModelCache
from hi_core.model.model_memory import MAX_CONFIG_BYTES, MAX_LAYERS, GB, config_parameters, parameter_count

CRAFTED = {"hidden_size": 65536, "num_hidden_layers": 200, "intermediate_size": 262144,
           "num_attention_heads": 512, "num_key_value_heads": 512}  # ~10.7 T parameters beside ~100 K of weights
TOO_BIG = r"needs \d+\.\d GB for its \d+\.\d\d B parameters in \w+, more than the model memory budget of \d+\.\d GB"


def _folder_with(llava_dir, folder, change) -> str:
    """A copy of the tiny LLaVA folder (its small weights kept) whose config.json `change(config)` edits."""
    shutil.copytree(llava_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture
def crafted_dir(llava_dir, tmp_path):
    return _folder_with(llava_dir, tmp_path / "crafted", lambda config: config["text_config"].update(CRAFTED))


@pytest.fixture
def no_weight_loads(monkeypatch):
    """Fail the test if transformers is asked to load the model (allocate its weights; the count builds it on `meta`)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)


def test_a_crafted_config_beside_small_weights_is_counted_from_the_config(crafted_dir, llava_dir):
    # the safetensors headers count the small weights; loading would allocate what the configuration describes
    assert parameter_count(crafted_dir) == config_parameters(crafted_dir) > 10**13 > 100 * parameter_count(str(llava_dir))


def test_a_crafted_config_is_refused_in_one_message_before_any_weight_is_allocated(crafted_dir, monkeypatch):
    loads = []
    monkeypatch.setattr(model_cache, "load_model", lambda config: loads.append(config))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB
    started = time.monotonic()
    with pytest.raises(InputError, match=TOO_BIG) as refused:
        ModelCache(budget=int(8 * GB)).get(LoadConfig(crafted_dir, device="cpu"))
    assert time.monotonic() - started < 10  # counted on the meta device: ~0.4 s
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 300_000  # no weights: not even 0.3 GB more
    assert loads == [] and crafted_dir in str(refused.value) and "8.0 GB" in str(refused.value)


def test_a_crafted_config_is_refused_on_a_gpu_by_the_gpus_memory(crafted_dir, monkeypatch, no_weight_loads):
    """On a GPU no CPU budget holds the model, but its weights must still fit the device (and pass through the CPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 80 * 10**9})())
    with pytest.raises(InputError, match=r"in bfloat16, more than 80.0 GB, the memory of cuda"):
        ModelCache().get(LoadConfig(crafted_dir, device="cuda"))


def test_the_cli_refuses_a_crafted_config_in_one_line_exit_2(crafted_dir, scene, tmp_path, capsys, no_weight_loads):
    from PIL import Image

    image, mask = scene
    image.save(tmp_path / "image.png")
    Image.fromarray(mask.astype("uint8") * 255).save(tmp_path / "mask.png")
    code = cli.main(["score", "--model", crafted_dir, "--image", str(tmp_path / "image.png"), "--mask",
                     str(tmp_path / "mask.png"), "--text", "a red circle", "--device", "cpu", "--out", str(tmp_path / "out.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: model ") and not (tmp_path / "out.json").exists()
    assert "more than the model memory budget of" in lines[0]


def _layers(value):
    return lambda config: config["text_config"].update(num_hidden_layers=value)


CONFIGS = {  # name -> (change to config.json, message)
    "layers beyond any real model": (_layers(10**9), f"text_config.num_hidden_layers = 1000000000, more layers than any "
                                                     f"real model (at most {MAX_LAYERS}"),
    "a vision tower beyond any real model": (lambda config: config["vision_config"].update(num_hidden_layers=MAX_LAYERS + 1),
                                             "vision_config.num_hidden_layers = 513"),
    "zero heads": (lambda config: config["text_config"].update(num_attention_heads=0), "transformers cannot build a model"),
    "a negative size": (lambda config: config["text_config"].update(intermediate_size=-1), "transformers cannot build a model"),
    "a size that is text": (lambda config: config["text_config"].update(hidden_size="big"), "transformers cannot build a model"),
    "a huge number": (lambda config: config["text_config"].update(hidden_size=10**30), "transformers cannot build a model"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_config_that_cannot_be_built_is_one_message_fast(case, llava_dir, tmp_path, no_weight_loads):
    change, message = CONFIGS[case]
    folder = _folder_with(llava_dir, tmp_path / "model", change)
    started = time.monotonic()
    with pytest.raises(InputError) as refused:
        ModelCache(budget=int(8 * GB)).get(LoadConfig(folder, device="cpu"))
    assert message in str(refused.value) and folder in str(refused.value) and "\n" not in str(refused.value)
    assert time.monotonic() - started < 5


def test_a_config_json_larger_than_any_real_one_is_not_read(llava_dir, tmp_path, no_weight_loads):
    folder = _folder_with(llava_dir, tmp_path / "model", lambda config: config.update(padding="x" * MAX_CONFIG_BYTES))
    with pytest.raises(InputError, match=r"config.json has 1,00\d,\d\d\d bytes, more than any real model's \(at most 1,000,000"):
        load_model(LoadConfig(folder, device="cpu"))


@pytest.mark.parametrize("depth, message", [(100_000, "config.json is not readable JSON"),  # beyond json's own limit
                                            (900, "config.json nests deeper than any real model's")])  # within it
def test_a_deeply_nested_config_json_is_one_message(depth, message, llava_dir, tmp_path, no_weight_loads):
    folder = _folder_with(llava_dir, tmp_path / "model", lambda config: None)
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llava", "x": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(InputError, match=message):
        load_model(LoadConfig(folder, device="cpu"))


def test_weights_of_other_shapes_than_the_config_says_are_one_message(llava_dir, tmp_path):
    folder = _folder_with(llava_dir, tmp_path / "model", lambda config: config["text_config"].update(intermediate_size=96))
    with pytest.raises(InputError, match="the shapes of its weights differ from those its config.json describes"):
        load_model(LoadConfig(folder, device="cpu"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_local_app_shows_the_refusal_of_a_crafted_config(crafted_dir, llava_dir, no_weight_loads):
    """Locally there is no allow-list: any folder may be named, and the estimate is what stands in its way."""
    from gradio_client import Client

    from ui.app import build_demo, launch_options
    from ui.settings import Settings

    from .app_api import predict

    settings = Settings()
    demo = build_demo(str(llava_dir), ModelCache(budget=int(8 * GB)), settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        shown = predict(client, "/load_model", model_name=crafted_dir, device="cpu")["model-status"]
    finally:
        demo.close()
    assert "more than the model memory budget of 8.0 GB" in shown and "21483.5 GB" in shown, shown
