"""Independent oracles shared by the per-family tests.

- `eager_rows`: the same rows taken from eager attention with `output_attentions=True`.
- `language_model_input`: the input of the language model's first decoder layer.
- `embedding_change`: how much each image token's input embedding to the language model changes
  when one region of the image changes; the changed region must light up the right grid cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageTextToText

from hi_core.model.inputs import to_model_device
from hi_core.model.inputs import ModelInputs


@torch.no_grad()
def eager_rows(folder: str, inputs: ModelInputs, query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """(layers, heads, queries, keys) attention probabilities from eager attention."""
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    outputs = model(**to_model_device(inputs.tensors, model), output_attentions=True, use_cache=False)
    attentions = torch.stack([a[0] for a in outputs.attentions])  # (layers, heads, T, T)
    rows = attentions[:, :, torch.as_tensor(query_positions)]
    return rows[..., torch.as_tensor(key_positions)].numpy()


@torch.no_grad()
def language_model_input(loaded: Any, tensors: dict) -> torch.Tensor:
    """(T, hidden): the input of the first decoder layer (image features scattered into the text)."""
    captured = []

    def hook(module, args, kwargs):
        captured.append(kwargs.get("hidden_states", args[0] if args else None)[0].detach().clone())

    handle = loaded.adapter.decoder_layers(loaded.model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        loaded.model(**to_model_device(tensors, loaded.model), use_cache=False)
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def embedding_change(loaded: Any, inputs_a: ModelInputs, inputs_b: ModelInputs) -> np.ndarray:
    """(gh, gw) norm of the change of the language model's input embedding at each grid cell.

    The two inputs must differ only in their image; the layout of `inputs_a` maps tokens to cells.
    """
    change = (language_model_input(loaded, inputs_a.tensors) - language_model_input(loaded, inputs_b.tensors))
    return change.norm(dim=-1).numpy()[inputs_a.layout.positions]  # (T,) -> (gh, gw)
