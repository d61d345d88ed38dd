"""Model + processor from `demo`, a Hub id or a local folder, with the family adapter.

Loading is plain transformers (`AutoModelForImageTextToText`, the processor as `processors` builds it),
weights from safetensors only, `trust_remote_code` off unless asked for. A model's size is known before
any weight is allocated (`model_memory`), and a model that cannot fit the memory budget is refused (`model_cache`).
A LoRA adapter (a peft folder, as `finetune` writes) can be merged into the weights at load
(`LoadConfig.lora`): the result is a plain model of the same family, analyzed like any other.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ..base.errors import InputError, check_choice, check_whole, first_line
from ..families import FamilyAdapter, adapter_for, supported_families
from .capture import check_capturable
from .hub import check_hub_model
from .model_memory import read_config_json
from .processors import load_processor

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # package data: the demo model and the examples
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LoadConfig:
    """Which model to load and how. `model` is `demo`, a Hub id (owner/name) or a local folder;
    `lora`, if given, a peft LoRA adapter folder (safetensors) merged into the model's weights."""

    model: str
    device: Device = "auto"
    dtype: DType = "auto"
    trust_remote_code: bool = False
    lora: str | None = None
    max_view_pixels: int | None = None  # a view budget: the processor makes at most ~this many pixels per image

    def __post_init__(self) -> None:
        if self.lora is not None and not self.lora.strip():
            object.__setattr__(self, "lora", None)  # an empty field in a form: no adapter
        check_choice("device", self.device, Device)
        check_whole("max_view_pixels", self.max_view_pixels, optional=True)
        check_choice("dtype", self.dtype, DType)
        if not self.model.strip():
            raise InputError("model is empty: give `demo`, a Hub id (owner/name) or a local folder")


@dataclass
class LoadedModel:
    """A model ready for analysis: the transformers model (eval mode), its processor, its adapter; `note`
    says why it loaded as it did where that was not what was asked (a dtype chosen to fit memory)."""

    name: str
    model: Any
    processor: Any
    adapter: FamilyAdapter
    device: torch.device
    note: str = ""
    view_budget: str | None = None  # what `LoadConfig.max_view_pixels` set in the processor, in words

    @property
    def family(self) -> str:
        return self.adapter.name


def resolve_source(name: str) -> str:
    """The folder or Hub id to load for a model name; a missing local folder is an input error."""
    if name == "demo":
        if not DEMO_MODEL_DIR.is_dir():
            raise InputError(f"the demo model is not installed (expected a folder at {DEMO_MODEL_DIR})")
        return str(DEMO_MODEL_DIR)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"model folder {name!r} has no config.json")
        return str(path)
    if path.exists():
        raise InputError(f"model {name!r} is a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or not _HUB_ID.match(name):
        raise InputError(f"model folder {name!r} does not exist (and it is not a Hub id of the form owner/name)")
    return name


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _adapter(model_type: str, name: str) -> FamilyAdapter:
    """The family adapter; an unsupported family is an input error naming the model and our families."""
    try:
        return adapter_for(model_type)
    except InputError as error:
        raise InputError(f"model {name!r}: {error}") from None


def check_model_folder(folder: str | Path, name: str, trust_remote_code: bool = False) -> None:
    """Refuse a local model folder we cannot load, in one message naming the model and the problem,
    before anything slow is read: config.json that is not a JSON object or has no `model_type`,
    a family we do not support, a model that needs its own code without `trust_remote_code`,
    no safetensors weights (pickled ones are never loaded) or a safetensors file that is damaged. The model's size
    is checked apart (`ModelCache`, `model_memory`)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    config = read_config_json(str(folder), name)  # also refuses a file too large, or layers beyond any real model
    if not isinstance(config, dict):
        raise InputError(f"model {name!r}: config.json is not a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InputError(
            f"model {name!r}: config.json has no `model_type`; supported families are {', '.join(supported_families())}"
        )
    if "auto_map" in config and not trust_remote_code:
        raise InputError(
            f"model {name!r} ({model_type}) needs its own Python code (config.json has `auto_map`); "
            "allow it with --trust-remote-code only if you trust its source"
        )
    _adapter(model_type, name)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(path.name for pattern in PICKLED_WEIGHTS for path in folder.glob(pattern))
        if pickled:
            raise InputError(
                f"model {name!r} has only pickled weights ({', '.join(pickled)}), which are never loaded "
                "(they can run code): convert them to model.safetensors"
            )
        raise InputError(f"model {name!r} has no weights: expected model.safetensors (or its shards) in the folder")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise InputError(f"model {name!r}: {path.name} is damaged or not a safetensors file ({error})") from None


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def load_model(config: LoadConfig) -> LoadedModel:
    """Load model, processor and family adapter; bad names and unsupported families are input errors."""
    from safetensors import SafetensorError

    source = resolve_source(config.model)
    if Path(source).is_dir():
        check_model_folder(source, config.model, config.trust_remote_code)
    else:
        check_hub_model(source)  # seconds, where transformers would retry for half a minute
    try:
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError, KeyError) as error:  # missing, not JSON, unknown model_type, remote code refused
        raise InputError(f"could not load the configuration of model {config.model!r}: {first_line(error)}") from None
    adapter = _adapter(model_config.model_type, config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    try:
        processor = load_processor(source, model_config, config.trust_remote_code)
    except (OSError, ValueError, KeyError) as error:  # a missing or damaged tokenizer or processor file
        raise InputError(
            f"could not load the processor (tokenizer, image processor) of model {config.model!r}: {first_line(error)}"
        ) from None
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=attention_implementation(model_config, adapter),
        )
    except (OSError, ValueError, KeyError, SafetensorError) as error:  # missing or damaged files of the model
        raise InputError(f"could not load model {config.model!r}: {first_line(error)}") from None
    except RuntimeError as error:  # weights of other shapes than config.json says: transformers' report, then this
        if "mismatched_sizes" not in str(error):
            raise
        raise InputError(
            f"could not load model {config.model!r}: the shapes of its weights differ from those its "
            "config.json describes"
        ) from None
    adapter.check_loaded(model, processor)
    try:
        check_capturable(model, adapter)
    except InputError as error:
        raise InputError(f"model {config.model!r}: {error}") from None
    model.to(device)  # type: ignore[arg-type]  # typeshed's functools.wraps does not bind self (transformers' .to)
    if config.lora is not None:
        model = merge_lora(model, config.lora)
    name = config.model if config.lora is None else f"{config.model} + LoRA {config.lora}"
    budget = None if config.max_view_pixels is None else adapter.limit_view(processor, config.max_view_pixels)
    return LoadedModel(
        name=name, model=model.eval(), processor=processor, adapter=adapter, device=device, view_budget=budget
    )


def attention_implementation(model_config: Any, adapter: FamilyAdapter) -> str | dict[str, str]:
    """`sdpa`, or, when the language model has no SDPA implementation (Gemma 2, whose soft-capped
    logits SDPA cannot compute), eager for the language model and SDPA for the rest; the capture
    replaces either at its first use (`capture.install_capture`)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    text_config = model_config.get_text_config()
    if text_config is model_config:
        return "sdpa"
    try:
        text_model_class = MODEL_MAPPING[type(text_config)]
    except (KeyError, ValueError):  # a text model transformers does not map: let it fail or load as sdpa
        return "sdpa"
    if getattr(text_model_class, "_supports_sdpa", True):
        return "sdpa"
    return {"": "sdpa", adapter.text_config_key(None): "eager"}


LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


def merge_lora(model: Any, folder: str) -> Any:
    """`model` with the LoRA adapter saved in `folder` (peft's `save_pretrained`) merged into its
    weights; the returned model has no LoRA layers left. Safetensors only: a folder with just
    `adapter_model.bin` (a pickle) is refused before anything is read."""
    from peft import PeftModel

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"LoRA adapter folder {folder!r} does not exist")
    missing = [name for name in LORA_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(
            f"LoRA adapter folder {folder!r} has no {missing[0]} (expected a peft adapter saved as safetensors)"
        )
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InputError(f"could not apply the LoRA adapter {folder!r} to this model: {error}") from None
