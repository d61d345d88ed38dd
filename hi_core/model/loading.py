"""Model + processor from `demo`, a Hub id or a local folder, with the family adapter.

Loading is plain transformers (`AutoModelForImageTextToText`, the processor as `processors` builds it),
weights from safetensors only, `trust_remote_code` off unless asked for. A model's size is known before
any weight is allocated (`model_memory`), and a model that cannot fit the memory budget is refused.
A LoRA adapter (a peft folder, as `finetune` writes) can be merged into the weights at load
(`LoadConfig.lora`): the result is a plain model of the same family, analyzed like any other.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ..base.errors import InputError, check_choice, check_whole, first_line
from ..families import FamilyAdapter, adapter_for, supported_families
from .capture import check_capturable
from .hub import check_hub_model
from .model_memory import (
    MemoryPlan,
    check_device_fits,
    describe,
    memory_budget,
    parameter_count,
    plan,
    read_config_json,
)
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
    model.to(device)
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


def count_parameters(config: LoadConfig) -> int:
    """The parameters of the model `config` names, before loading it (`model_memory.parameter_count`)."""
    source = resolve_source(config.model)
    if Path(source).is_dir():
        check_model_folder(source, config.model, config.trust_remote_code)
    else:
        check_hub_model(source)
    return parameter_count(source, config.trust_remote_code, config.model)


class ModelCache:
    """Loaded models shared across sessions (the app), within a memory budget; least recently used dropped first.

    A cached model is returned at once, also while another model loads: loading happens outside
    the cache's lock, one load at a time (a load can take minutes and gigabytes), and sessions
    asking for a model that is being loaded wait for that load instead of starting another.
    `on_wait(position)` is called while a load waits for others (position 1: next).

    Memory (`hi_core.model.model_memory`): a model's weights are sized before it loads (`count(config)`
    parameters x its dtype), and models on the CPU are held within `budget` bytes (default:
    `memory_budget()`), the weights of the cached models plus those `private` reserves for copies
    outside the cache (a fine-tune's). Least recently used models are dropped before a load until the new one
    fits; one that cannot fit is refused with both numbers. A model asked for in the default dtype on
    the CPU loads in float32 when it fits, else in bfloat16 (`LoadedModel.note` says so). A dropped
    model's memory is freed once no session still uses it. `capacity`: at most this many models (None: any).
    """

    def __init__(
        self, capacity: int | None = None, budget: int | None = None, count: Callable[[LoadConfig], int] | None = None
    ) -> None:
        self.capacity = capacity
        self.budget = memory_budget() if budget is None else budget
        self._count = count or count_parameters
        self._models: OrderedDict[LoadConfig, LoadedModel] = OrderedDict()
        self._sizes: dict[LoadConfig, int] = {}  # bytes of each cached model's weights on the CPU
        self._reserved = 0  # bytes of the private copies now loaded or running
        self._lock = threading.Lock()  # guards the dictionaries, _reserved and _waiting; held only for bookkeeping
        self._loading = threading.Lock()  # one load at a time
        self._waiting: list[LoadConfig] = []  # loads queued behind the running one, in arrival order

    def get(self, config: LoadConfig, on_wait: Callable[[int], None] | None = None) -> LoadedModel:
        with self._lock:
            if config in self._models:
                self._models.move_to_end(config)
                return self._models[config]
            self._waiting.append(config)
        try:
            while not self._loading.acquire(timeout=0.5):
                if on_wait is not None:
                    with self._lock:
                        position = self._waiting.index(config) + 1
                    on_wait(position)
        finally:
            with self._lock:
                self._waiting.remove(config)
        try:
            with self._lock:  # loaded by the session we waited for?
                if config in self._models:
                    self._models.move_to_end(config)
                    return self._models[config]
            memory = self._admit(config)
            loaded = load_model(self._as_planned(config, memory))
            if memory is not None and memory.note:
                loaded = replace(loaded, note=memory.note)
            with self._lock:
                self._models[config] = loaded
                self._sizes[config] = memory.size if memory is not None else 0
                while self.capacity is not None and len(self._models) > self.capacity:
                    self._drop_oldest()
            return loaded
        finally:
            self._loading.release()

    @contextmanager
    def private(self, config: LoadConfig) -> Iterator[LoadConfig]:
        """Room in the budget for a copy of a model loaded outside the cache (a fine-tune trains its own), held
        while the block runs: cached models are dropped to make it, and it is refused when it cannot fit. Yields
        the config to load (the dtype chosen as `get` would)."""
        with self._loading:
            memory = self._admit(config)
            size = memory.size if memory is not None else 0
            with self._lock:
                self._reserved += size
        try:
            yield self._as_planned(config, memory)
        finally:
            with self._lock:
                self._reserved -= size

    def _admit(self, config: LoadConfig) -> MemoryPlan | None:
        """The dtype and size `config` loads in (None: not on the CPU, where only the device's memory bounds it), after
        dropping the least recently used models until it fits; refused when it cannot. Called holding `_loading`."""
        device = resolve_device(config.device)
        if device.type != "cpu":
            check_device_fits(config.model, self._count(config), resolve_dtype(config.dtype, device), device)
            return None
        asked = None if config.dtype == "auto" else resolve_dtype(config.dtype, device)
        memory = plan(config.model, self._count(config), asked, self.budget)
        dropped = False
        with self._lock:
            while self._models and self._held() + memory.size > self.budget:
                self._drop_oldest()
                dropped = True
            held = self._held()
        if dropped:
            gc.collect()  # the dropped models' memory back before the next one loads (if no session holds them)
        if held + memory.size > self.budget:
            raise InputError(
                f"model {config.model!r} needs {describe(memory.size)} and {describe(held)} of the model memory budget "
                f"of {describe(self.budget)} is held by fine-tunes running now: try again when they end"
            )
        return memory

    @staticmethod
    def _as_planned(config: LoadConfig, memory: MemoryPlan | None) -> LoadConfig:
        if memory is None or config.dtype != "auto" or memory.dtype == torch.float32:
            return config
        return replace(config, dtype=str(memory.dtype).removeprefix("torch."))

    def _held(self) -> int:
        return sum(self._sizes.values()) + self._reserved

    def _drop_oldest(self) -> None:
        config, _ = self._models.popitem(last=False)
        self._sizes.pop(config, None)

    def __contains__(self, config: LoadConfig) -> bool:
        with self._lock:
            return config in self._models
