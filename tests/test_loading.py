"""Loading: name resolution, safetensors only, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from hi_core.errors import InputError
from hi_core.loading import LoadConfig, load_model, resolve_source


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/folder", "does not exist"),
        ("not-a-hub-id", "does not exist"),
        ("owner/name/extra", "does not exist"),
    ],
)
def test_bad_model_names_are_input_errors(name, message):
    with pytest.raises(InputError, match=message):
        resolve_source(name)


def test_hub_ids_pass_through_unchanged():
    assert resolve_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"


def test_folder_without_config_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="has no config.json"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize("field, value", [("device", "tpu"), ("dtype", "int8")])
def test_load_config_validates_options(field, value):
    with pytest.raises(InputError, match=f"{field} must be one of"):
        LoadConfig(model="demo", **{field: value})


def test_loaded_model_is_in_eval_mode_with_its_family(llava):
    assert llava.family == "llava" and not llava.model.training
    assert llava.model.config.text_config._attn_implementation == "sdpa"


def test_pickled_weights_are_refused(llava_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(llava_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="could not load model"):
        load_model(LoadConfig(model=str(folder), device="cpu"))
