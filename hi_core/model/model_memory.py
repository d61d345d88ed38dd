"""What a model's weights take in memory, known before it is loaded, and the budget they must fit.

A model's size is its parameter count times the bytes of the dtype it loads in. The count is what loading
allocates: the model its configuration describes, built on PyTorch's `meta` device, where no tensor holds
memory (2.2 B parameters of Qwen2-VL-2B counted in ~0.1 s), or a local folder's safetensors headers where
they hold more. The configuration, not the weight files, decides: weights missing from the files are
initialized, so a config.json that claims 200 layers of hidden size 65536 beside a few KB of weights would
ask for 21 TB. Before transformers sees a configuration, its raw JSON is bounded (`check_config_json`): a
layer count in the millions would take minutes to build even on `meta` (transformers' configs make a list
per layer), so anything deeper than `MAX_LAYERS` is refused as no real model. Activations, the
processor's buffers and Python come on top of the weights (SmolVLM-256M: ~1 GB of float32 weights, ~2 GB
peak while analyzing a 1024 x 768 photo).

The budget (`memory_budget`): `HI_MODEL_MEMORY_GB` if set, else `DEFAULT_SHARE` of the machine's memory
(its cgroup limit where there is one, as in a container or a Space; else the physical memory). On a
free CPU Space (16 GB) that is 8 GB: one 2 B model in bfloat16 and a fine-tune's private copy of it, or
SmolVLM-256M many times over; a 2 B model in float32 (8.8 GB) would leave no room to run it. A model
for a GPU must fit the GPU's memory, and the machine's, which its weights pass through while loading
(`check_device_fits`).

`plan` picks the dtype within the budget: a model asked for in the default dtype ("auto") on the CPU
loads in float32 when its weights fit, else in bfloat16 (half the memory; on CPUs without bfloat16
units, such as AVX2-only ones, several times slower), else it is refused with both numbers named.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..base.errors import InputError, first_line

GB = 1e9  # the budget and the messages are in decimal gigabytes, as memory sizes are sold
DEFAULT_SHARE = 0.5  # of the machine's memory for model weights; the rest for activations, the server, the OS
BUDGET_VARIABLE = "HI_MODEL_MEMORY_GB"
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
MAX_CONFIG_BYTES = 1_000_000  # a config.json; released ones take a few KB
MAX_NESTING = 32  # levels of objects and lists in a config.json
MAX_LAYERS = 512  # in one stack (a language model's, a vision tower's); the deepest released models have ~130
_LAYER_COUNT = re.compile(r"(layers|depth|n_layer)$")  # num_hidden_layers, depth (Qwen-VL towers), n_layer, ...


def machine_memory() -> int:
    """Bytes of memory this process can have: the cgroup's limit where one is set, else the physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:  # "max", or a huge number, means no limit
            return int(text)
    return physical


def memory_budget(environ: dict[str, str] | None = None) -> int:
    """The bytes model weights may take: `HI_MODEL_MEMORY_GB`, else `DEFAULT_SHARE` of `machine_memory()`."""
    value = (os.environ if environ is None else environ).get(BUDGET_VARIABLE, "").strip()
    if not value:
        return int(DEFAULT_SHARE * machine_memory())
    try:
        gigabytes = float(value)
    except ValueError:
        raise InputError(f"{BUDGET_VARIABLE}={value!r} is not a number of gigabytes") from None
    if not 0 < gigabytes < float("inf"):
        raise InputError(f"{BUDGET_VARIABLE}={value!r} must be a positive number of gigabytes")
    return int(gigabytes * GB)


def describe(size: int) -> str:
    return f"{size / GB:.1f} GB" if size >= GB else f"{size / 1e6:.0f} MB"


def safetensors_parameters(folder: Path) -> int | None:
    """The parameter count written in a folder's safetensors headers (None: no safetensors file there)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as handle:  # an 8-byte little-endian header length, then the JSON header
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= 100_000_000:
                raise InputError(f"{path.name} is not a safetensors file (header length {length})")
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for side in entry["shape"]:
                    count *= int(side)
                total += count
    return total


def read_config_json(source: str, name: str | None = None) -> object:
    """The raw config.json of a local folder or a Hub id, bounded in size and checked by `check_config_json`;
    `name` (default: `source`) names the model in the messages."""
    name = source if name is None else name
    try:
        if Path(source).is_dir():
            path = Path(source) / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json"))
        size = path.stat().st_size
        text = path.read_bytes() if size <= MAX_CONFIG_BYTES else b""
        config = json.loads(text) if text else None
    except (OSError, ValueError, RecursionError) as error:  # missing, not UTF-8, not JSON, nested too deep
        raise InputError(f"model {name!r}: config.json is not readable JSON ({first_line(error, 300)})") from None
    if size > MAX_CONFIG_BYTES:
        raise InputError(
            f"model {name!r}: config.json has {size:,} bytes, more than any real model's "
            f"(at most {MAX_CONFIG_BYTES:,} are read)"
        )
    check_config_json(config, name)
    return config


def check_config_json(config: object, name: str, where: str = "") -> None:
    """Refuse a configuration (raw JSON) whose layer counts are beyond any real model's (`MAX_LAYERS`), before
    transformers builds anything from it: it builds per-layer lists, and modules, for every layer."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    if (
        where.count(".") >= MAX_NESTING
    ):  # real configs nest 2-3 levels; this keeps the walk off Python's recursion limit
        raise InputError(f"model {name!r}: config.json nests deeper than any real model's ({where.split('.')[0]}...)")
    for key, value in items:
        field = f"{where}.{key}" if where else str(key)
        if isinstance(value, (dict, list)):
            check_config_json(value, name, field)
        elif (
            isinstance(key, str)
            and _LAYER_COUNT.search(key)
            and isinstance(value, int)
            and not isinstance(value, bool)
            and value > MAX_LAYERS
        ):
            raise InputError(
                f"model {name!r}: config.json sets {field} = {value}, more layers than any real model "
                f"(at most {MAX_LAYERS} are accepted)"
            )


def config_parameters(source: str, trust_remote_code: bool = False, name: str | None = None) -> int:
    """The parameter count of the model a configuration describes, counted on the `meta` device (no memory);
    a configuration transformers cannot build is an InputError naming the model (`name`, default: `source`)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    name = source if name is None else name
    read_config_json(source, name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as error:
        # (a ValueError for an unknown model_type, ZeroDivisionError for 0 heads, RuntimeError for a negative
        # size, a validation error for a wrong type), the configuration is at fault, not our code
        raise InputError(
            f"model {name!r}: transformers cannot build a model from its configuration "
            f"({type(error).__name__}: {first_line(error, 300)})"
        ) from None
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_count(source: str, trust_remote_code: bool = False, name: str | None = None) -> int:
    """The parameters loading `source` allocates: its configuration's count (weights missing from the files are
    initialized), or a local folder's safetensors headers' where they hold more."""
    folder = Path(source)
    counted = safetensors_parameters(folder) if folder.is_dir() else None
    return max(config_parameters(source, trust_remote_code, name), counted or 0)


@dataclass(frozen=True)
class MemoryPlan:
    """How a model will load: in `dtype`, its weights taking `size` bytes; `note` says why a dtype was chosen."""

    dtype: torch.dtype
    size: int
    note: str = ""


def plan(name: str, parameters: int, dtype: torch.dtype | None, budget: int) -> MemoryPlan:
    """The dtype and size of `parameters` weights within `budget` bytes. `dtype` None: the CPU default, float32
    when it fits, else bfloat16; refused (InputError naming both numbers) when the weights cannot fit."""
    if dtype is None:
        full = parameters * 4
        if full <= budget:
            return MemoryPlan(torch.float32, full)
        half = parameters * 2
        if half <= budget:
            return MemoryPlan(
                torch.bfloat16,
                half,
                f"in bfloat16: in float32 its weights ({describe(full)}) would not fit "
                f"the model memory budget of {describe(budget)}",
            )
        dtype = torch.bfloat16
    size = parameters * dtype.itemsize
    if size > budget:
        raise InputError(
            f"model {name!r} needs {describe(size)} for its {parameters / 1e9:.2f} B parameters in "
            f"{str(dtype).removeprefix('torch.')}, more than the model memory budget of {describe(budget)} "
            f"({BUDGET_VARIABLE}): choose a smaller model"
        )
    return MemoryPlan(dtype, size)


def check_device_fits(name: str, parameters: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse (InputError naming both numbers) weights that cannot fit `device`'s memory, or the machine's, which
    they pass through while loading. GPU models are not held within the CPU budget: this is the one check."""
    size = parameters * dtype.itemsize
    limits = [(machine_memory(), "the memory of this machine, which the weights pass through while loading")]
    if device.type == "cuda":
        limits.insert(0, (torch.cuda.get_device_properties(device).total_memory, f"the memory of {device}"))
    for limit, what in limits:
        if size > limit:
            raise InputError(
                f"model {name!r} needs {describe(size)} for its {parameters / 1e9:.2f} B parameters in "
                f"{str(dtype).removeprefix('torch.')}, more than {describe(limit)}, {what}: choose a smaller model"
            )
