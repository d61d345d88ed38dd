"""Model + processor from `demo`, a Hub id or a local folder, with the family adapter.

Loading is plain transformers (`AutoProcessor` + `AutoModelForImageTextToText`), weights from
safetensors only, `trust_remote_code` off unless asked for. Processors that own a video processor
(Qwen2-VL, SmolVLM) cannot be built without torchvision; for those the processor is assembled
from its tokenizer and image processor with no video processor (images are all we need).
A LoRA adapter (a peft folder, as `finetune` writes) can be merged into the weights at load
(`LoadConfig.lora`): the result is a plain model of the same family, analyzed like any other.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .errors import InputError, check_choice
from .families import FamilyAdapter, adapter_for

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # package data: the demo model and the examples
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

    def __post_init__(self) -> None:
        if self.lora is not None and not self.lora.strip():
            object.__setattr__(self, "lora", None)  # an empty field in a form: no adapter
        check_choice("device", self.device, Device)
        check_choice("dtype", self.dtype, DType)
        if not self.model.strip():
            raise InputError("model is empty: give `demo`, a Hub id (owner/name) or a local folder")


@dataclass
class LoadedModel:
    """A model ready for analysis: the transformers model (eval mode), its processor, its adapter."""

    name: str
    model: Any
    processor: Any
    adapter: FamilyAdapter
    device: torch.device

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


def _processor_without_video(source: str, config: Any, trust_remote_code: bool) -> Any:
    """The family's processor built from its tokenizer and image processor, with no video processor."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    processor_class = PROCESSOR_MAPPING[type(config)]
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = Path(source) / "chat_template.jinja"
    if template_file.is_file():
        chat_template = template_file.read_text()
    # The processor's own settings from processor_config.json (e.g. SmolVLM's `image_seq_len`,
    # without which it expands `<image>` to the class default, not the model's token count).
    saved, _ = processor_class.get_processor_dict(source, trust_remote_code=trust_remote_code)
    accepted = inspect.signature(processor_class.__init__).parameters
    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template"}
    settings = {key: value for key, value in saved.items() if key in accepted and key not in skip}
    return build_processor_without_video(processor_class, image_processor, tokenizer, chat_template, **settings)


def build_processor_without_video(
    processor_class: type, image_processor: Any, tokenizer: Any, chat_template: str | None, **settings: Any
) -> Any:
    """Instantiate a processor that declares a video processor, passing None for it."""
    # ProcessorMixin checks every declared attribute's class; it must accept None for the video
    # processor, which we never use (images only).
    original = processor_class.check_argument_for_proper_class

    def check(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name == "video_processor":
            return None
        return original(self, argument_name, argument)

    processor_class.check_argument_for_proper_class = check
    try:
        return processor_class(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **settings,
        )
    finally:
        processor_class.check_argument_for_proper_class = original


def load_processor(source: str, config: Any, trust_remote_code: bool = False) -> Any:
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        logger.info("building the processor without its video processor (torchvision is missing)")
        return _processor_without_video(source, config, trust_remote_code)


def load_model(config: LoadConfig) -> LoadedModel:
    """Load model, processor and family adapter; bad names and unsupported families are input errors."""
    source = resolve_source(config.model)
    try:
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except OSError as error:
        raise InputError(f"could not load the configuration of model {config.model!r}: {error}") from None
    adapter = adapter_for(model_config.model_type)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    try:
        processor = load_processor(source, model_config, config.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=config.trust_remote_code,
            attn_implementation="sdpa",
        )
    except OSError as error:
        raise InputError(f"could not load model {config.model!r}: {error}") from None
    model.to(device)
    if config.lora is not None:
        model = merge_lora(model, config.lora)
    name = config.model if config.lora is None else f"{config.model} + LoRA {config.lora}"
    return LoadedModel(name=name, model=model.eval(), processor=processor, adapter=adapter, device=device)


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
        raise InputError(f"LoRA adapter folder {folder!r} has no {missing[0]} (expected a peft adapter saved as safetensors)")
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InputError(f"could not apply the LoRA adapter {folder!r} to this model: {error}") from None


class ModelCache:
    """Loaded models shared across sessions (the app), least recently used dropped first."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._models: OrderedDict[LoadConfig, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: LoadConfig) -> LoadedModel:
        with self._lock:  # one load at a time; a second session asking for the same model waits for it
            if config in self._models:
                self._models.move_to_end(config)
                return self._models[config]
            loaded = load_model(config)
            self._models[config] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded

    def __contains__(self, config: LoadConfig) -> bool:
        return config in self._models
