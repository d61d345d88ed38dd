"""Loading: name resolution, safetensors only, clear errors; a LoRA adapter merged at load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hi_core.model.capture import IMPLEMENTATION
from hi_core.base.errors import InputError
from hi_core.model.inputs import build_inputs
from hi_core.model.loading import LoadConfig, load_model, resolve_source
from hi_core.model.model_cache import ModelCache


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
    # SDPA, or the SDPA-based capture once an analysis has installed it on this shared model (capture.py)
    assert llava.model.config.text_config._attn_implementation in ("sdpa", IMPLEMENTATION)


# --- model folders that cannot be loaded: one InputError each, naming the model and the problem ---------


def broken_model(llava_dir, folder, change):
    """A copy of the tiny model with one thing broken (`change`: a key of BROKEN_MODELS)."""
    shutil.copytree(llava_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if change == "unknown model_type":
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "frobnicator"}))
    elif change == "no model_type":
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    elif change == "config not JSON":
        (folder / "config.json").write_text("{not json")
    elif change == "config a list":
        (folder / "config.json").write_text("[1, 2]")
    elif change == "remote code":
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "custom_vlm", "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForImageTextToText": "modeling_custom.CustomModel"}}))
        (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    elif change == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif change == "garbage weights":
        weights.write_bytes(b"\x00garbage" * 100)
    elif change == "pickled weights":
        torch.save(load_file(weights), folder / "pytorch_model.bin")
        weights.unlink()
    elif change == "no weights":
        weights.unlink()
    elif change == "broken tokenizer":
        (folder / "tokenizer.json").write_text("garbage")
    return folder


BROKEN_MODELS = {  # change -> message
    "unknown model_type": "unsupported model family 'frobnicator': supported families are",
    "no model_type": "config.json has no `model_type`",
    "config not JSON": "config.json is not readable JSON",
    "config a list": "config.json is not a JSON object",
    "remote code": "needs its own Python code (config.json has `auto_map`); allow it with --trust-remote-code",
    "truncated weights": "model.safetensors is damaged or not a safetensors file",
    "garbage weights": "model.safetensors is damaged or not a safetensors file",
    "pickled weights": "has only pickled weights (pytorch_model.bin), which are never loaded",
    "no weights": "has no weights: expected model.safetensors",
    "broken tokenizer": "could not load the processor (tokenizer, image processor) of model",
}


@pytest.mark.parametrize("change", list(BROKEN_MODELS))
def test_a_broken_model_folder_is_one_input_error_naming_the_model(change, llava_dir, tmp_path):
    folder = broken_model(llava_dir, tmp_path / "model", change)
    with pytest.raises(InputError) as raised:
        load_model(LoadConfig(model=str(folder), device="cpu"))
    assert BROKEN_MODELS[change] in str(raised.value) and str(folder) in str(raised.value)


def test_remote_code_is_never_run_even_when_allowed_for_an_unsupported_family(llava_dir, tmp_path):
    folder = broken_model(llava_dir, tmp_path / "model", "remote code")
    with pytest.raises(InputError, match="unsupported model family 'custom_vlm'"):
        load_model(LoadConfig(model=str(folder), device="cpu", trust_remote_code=True))


# --- a LoRA adapter merged at load ------------------------------------------------------------------

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft asks transformers
LORA_TARGETS = r"model\.language_model\.layers\.1\.self_attn\.(q_proj|v_proj)"


@pytest.fixture(scope="module")
def lora_dir(llava_dir, tmp_path_factory):
    """A peft adapter for the tiny LLaVA with random (non-zero) A and B, so that it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    base = load_model(LoadConfig(model=str(llava_dir), device="cpu"))
    torch.manual_seed(0)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(folder)
    return folder


def _logits(loaded, scene, model=None) -> torch.Tensor:
    """The logits of `model` (default: the loaded one) over a scene and its description: (1, T, vocab)."""
    image, _ = scene
    inputs = build_inputs(loaded.adapter, loaded.model, loaded.processor, image, "Describe the image.", "a red square")
    with torch.no_grad():
        return (model or loaded.model)(**inputs.tensors).logits


def test_a_merged_lora_adapter_gives_the_peft_models_logits(llava_dir, lora_dir, scene):
    from peft import PeftModel

    merged = load_model(LoadConfig(model=str(llava_dir), device="cpu", lora=str(lora_dir)))
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())  # merged, not wrapped
    assert merged.name == f"{llava_dir} + LoRA {lora_dir}" and not merged.model.training
    base = load_model(LoadConfig(model=str(llava_dir), device="cpu"))
    plain = _logits(base, scene)
    reference = _logits(base, scene, PeftModel.from_pretrained(base.model, str(lora_dir)).eval())
    assert not torch.allclose(reference, plain, atol=1e-4)  # the adapter does change the outputs
    torch.testing.assert_close(_logits(merged, scene), reference, atol=1e-5, rtol=1e-5)


def test_an_empty_lora_field_means_no_adapter_and_another_adapter_another_cache_entry(llava_dir, lora_dir):
    assert LoadConfig(model="demo", lora="  ") == LoadConfig(model="demo")
    cache = ModelCache()
    plain = cache.get(LoadConfig(model=str(llava_dir), device="cpu", lora=""))
    tuned = cache.get(LoadConfig(model=str(llava_dir), device="cpu", lora=str(lora_dir)))
    assert plain is not tuned and plain.name == str(llava_dir)


@pytest.mark.parametrize("prepare, message", [
    (lambda folder: shutil.rmtree(folder), "does not exist"),
    (lambda folder: (folder / "adapter_config.json").unlink(), "has no adapter_config.json"),
    (lambda folder: torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
     or (folder / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
])
def test_a_missing_or_pickled_lora_adapter_is_an_input_error(llava_dir, lora_dir, tmp_path, prepare, message):
    folder = tmp_path / "adapter"
    shutil.copytree(lora_dir, folder)
    prepare(folder)
    with pytest.raises(InputError, match=message):
        load_model(LoadConfig(model=str(llava_dir), device="cpu", lora=str(folder)))


def test_a_lora_adapter_for_another_model_is_an_input_error(llava_dir, lora_dir, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(lora_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"target_modules": r"model\.no_such_module"}))
    with pytest.raises(InputError, match="could not apply the LoRA adapter"):
        load_model(LoadConfig(model=str(llava_dir), device="cpu", lora=str(folder)))
