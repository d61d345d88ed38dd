"""What a model's weights take in memory, known before it is loaded, and the budget they must fit.

A model's size is its parameter count times the bytes of the dtype it loads in. The count comes from
the safetensors headers of a local folder (exact, reads a few KB per file), else from its configuration:
the model built on PyTorch's `meta` device, where no tensor holds memory (2.2 B parameters of
Qwen2-VL-2B counted in ~2 s). Activations, the processor's buffers and Python come on top of the weights
(SmolVLM-256M: ~1 GB of float32 weights, ~2 GB peak while analyzing a 1024 x 768 photo).

The budget (`memory_budget`): `HI_MODEL_MEMORY_GB` if set, else `DEFAULT_SHARE` of the machine's memory
(its cgroup limit where there is one, as in a container or a Space; else the physical memory). On a
free CPU Space (16 GB) that is 8 GB: one 2 B model in bfloat16 and a fine-tune's private copy of it, or
SmolVLM-256M many times over; a 2 B model in float32 (8.8 GB) would leave no room to run it.

`plan` picks the dtype within the budget: a model asked for in the default dtype ("auto") on the CPU
loads in float32 when its weights fit, else in bfloat16 (half the memory; on CPUs without bfloat16
units, such as AVX2-only ones, several times slower), else it is refused with both numbers named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError

GB = 1e9  # the budget and the messages are in decimal gigabytes, as memory sizes are sold
DEFAULT_SHARE = 0.5  # of the machine's memory for model weights; the rest for activations, the server, the OS
BUDGET_VARIABLE = "HI_MODEL_MEMORY_GB"
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


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


def config_parameters(source: str, trust_remote_code: bool = False) -> int:
    """The parameter count of the model a configuration describes, counted on the `meta` device (no memory)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"could not read the size of model {source!r} from its configuration: {error}") from None
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_count(source: str, trust_remote_code: bool = False) -> int:
    """A model's parameters: from a local folder's safetensors headers, else from its configuration."""
    folder = Path(source)
    counted = safetensors_parameters(folder) if folder.is_dir() else None
    return counted if counted is not None else config_parameters(source, trust_remote_code)


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
            return MemoryPlan(torch.bfloat16, half, f"in bfloat16: in float32 its weights ({describe(full)}) would not fit "
                                                    f"the model memory budget of {describe(budget)}")
        dtype = torch.bfloat16
    size = parameters * dtype.itemsize
    if size > budget:
        raise InputError(
            f"model {name!r} needs {describe(size)} for its {parameters / 1e9:.2f} B parameters in "
            f"{str(dtype).removeprefix('torch.')}, more than the model memory budget of {describe(budget)} "
            f"({BUDGET_VARIABLE}): choose a smaller model"
        )
    return MemoryPlan(dtype, size)
