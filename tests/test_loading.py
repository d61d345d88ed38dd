"""Loading: name resolution, safetensors only, clear errors; a LoRA adapter merged at load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from hi_core.errors import InputError
from hi_core.inputs import build_inputs
from hi_core.loading import LoadConfig, ModelCache, load_model, resolve_source


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
