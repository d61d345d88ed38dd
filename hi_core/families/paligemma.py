"""PaliGemma: image tokens first, one per SigLIP patch, row-major over a fixed square grid.

- Prefix: PaliGemma has no chat template; its own prompt format, which the processor builds, is
  image tokens + `<bos>` + prompt + `"\\n"`.
- Attention: the text model attends bidirectionally over the prefix and causally over the
  suffix, as `token_type_ids` says (0 = prefix, 1 = suffix). A response is a suffix (the
  processor encodes `suffix=` with type 1, and generation appends type 1), so the appended
  response tokens get `token_type_ids` 1; with 0 they would join the bidirectional prefix.
- Geometry: `SiglipImageProcessor` resizes the whole image to a square, ignoring the aspect
  ratio (no crop, no pad); the grid is (image_size / patch_size)^2 whatever the image. The mask
  goes through the same pipeline, as for LLaVA, whose grid and mask code this adapter reuses.
- PaliGemma 2 is the same family (`model_type: paligemma`) with a Gemma 2 text model: its
  attention logits are soft-capped and its layers alternate sliding-window and full attention.
  Gemma 2 has no SDPA implementation, so its text model loads with eager attention
  (`loading.attention_implementation`) and the capture reproduces the cap exactly (`capture`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image

from .llava import LlavaAdapter


class PaliGemmaAdapter(LlavaAdapter):
    name = "paligemma"
    model_types = ("paligemma",)
    response_token_values: ClassVar[dict[str, int]] = {
        **LlavaAdapter.response_token_values,
        "token_type_ids": 1,
    }

    def prefix_inputs(self, processor: Any, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        """`<image>` + prompt, which the processor expands to image tokens + `<bos>` + prompt + "\\n"."""
        inputs = dict(processor(text=processor.image_token + prompt, images=[image], return_tensors="pt"))
        # The processor also returns training `labels` (all -100 without a suffix): not a model input here.
        inputs.pop("labels", None)
        return inputs
