"""Qwen3.5 (dense and MoE): Qwen3-VL's image layout over a hybrid language model.

The image side is Qwen3-VL's (and so Qwen2-VL's): the same `Qwen2VLImageProcessor` geometry, a run
of `<|image_pad|>` tokens filling the grid `image_grid_thw[1:] // spatial_merge_size` row-major,
in the order of the model's 3-D rope positions (`Qwen3_5Model.get_rope_index` is Qwen3-VL's).

The language model mixes two kinds of token mixers, one per decoder layer as
`text_config.layer_types` says: `linear_attention` layers hold a Gated DeltaNet
(`layer.linear_attn`: a causal convolution and a gated delta-rule recurrence, no attention
probabilities to capture) and `full_attention` layers a softmax attention (`layer.self_attn`,
computed through transformers' attention interface, so the capture sees it). Only the softmax
layers are scored; the others keep their place, so layer l is the model's own layer l in the
maps, the JSON, the app and LoRA targeting (`attention_modules` answers None for them).
"""

from __future__ import annotations

from typing import Any

from ..base.errors import InputError
from .qwen3_vl import Qwen3VLAdapter

#: The layer types of `text_config.layer_types` this adapter knows: softmax attention, or not.
SOFTMAX_LAYER_TYPES = ("full_attention",)
OTHER_LAYER_TYPES = ("linear_attention",)


class Qwen3_5Adapter(Qwen3VLAdapter):
    name = "qwen3_5"
    model_types = ("qwen3_5", "qwen3_5_moe")

    def check_loaded(self, model: Any, processor: Any) -> None:
        """Qwen3-VL's checks, and a language model whose layer kinds are known, with at least one
        softmax-attention layer where `layer_types` puts them (`attention_modules` finds them by module)."""
        super().check_loaded(model, processor)
        layer_types = list(getattr(model.config.get_text_config(), "layer_types", None) or [])
        unknown = sorted({kind for kind in layer_types if kind not in SOFTMAX_LAYER_TYPES + OTHER_LAYER_TYPES})
        if unknown:
            raise InputError(
                f"the language model has layers of type {', '.join(map(repr, unknown))}; expected "
                f"{' or '.join(map(repr, SOFTMAX_LAYER_TYPES + OTHER_LAYER_TYPES))}"
            )
        expected = [index for index, kind in enumerate(layer_types) if kind in SOFTMAX_LAYER_TYPES]
        found = list(self.scored_layers(model))
        if not found or found != expected:
            raise InputError(
                f"expected softmax attention (self_attn) in the language model's layers {expected} (its layer_types), "
                f"found it in layers {found}" + ("" if found else ": no layer could be scored")
            )
