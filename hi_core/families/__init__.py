"""Model families: one adapter per family, looked up by the config's `model_type`: where a family's image
tokens are, how they map onto the image, its decoder layers and attention modules.

May import: hi_core.base.
"""

from __future__ import annotations

from ..base.errors import InputError
from .base import VIEWS, FamilyAdapter, ImageLayout, View
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter, SmolVLMAdapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .mistral3 import Mistral3Adapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS: tuple[type[FamilyAdapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
    Qwen3_5Adapter,
    PaliGemmaAdapter,
    Gemma3Adapter,
    Idefics3Adapter,
    SmolVLMAdapter,
    InternVLAdapter,
    Mistral3Adapter,
)


def supported_families() -> list[str]:
    return [adapter.name for adapter in ADAPTERS]


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter of a config's `model_type`; an unknown family is an input error naming ours."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter()
    raise InputError(
        f"unsupported model family {model_type!r}: supported families are {', '.join(supported_families())}"
    )


__all__ = ["ADAPTERS", "VIEWS", "FamilyAdapter", "ImageLayout", "View", "adapter_for", "supported_families"]
