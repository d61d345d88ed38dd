"""Qwen3-VL (dense and MoE): `<|image_pad|>` tokens on a dynamic, aspect-preserving grid, as Qwen2-VL.

The token layout is Qwen2-VL's: the image processor (the same `Qwen2VLImageProcessor`, with
16-px patches for the released models) smart-resizes the image to multiples of patch * merge
pixels, the vision tower's merger joins each merge x merge block of patches into one
language-model token (2x2 in the released models; transformers' own tester uses 1), and the
`<|image_pad|>` run between `<|vision_start|>` and `<|vision_end|>` fills the grid
`image_grid_thw[1:] // spatial_merge_size` row-major, in the order of the model's 3-D rope
positions. What Qwen3-VL adds does not move tokens: DeepStack adds features of earlier vision
layers to the same image positions after the first decoder layers, and the vision tower's
learned position grid is interpolated to the image's. The MoE variant only changes the text
model's MLPs; its decoder layers' self-attention is the dense model's.

So the adapter is Qwen2-VL's (grid, mask through the processor's own pipeline, load-time checks
of the image token and patch geometry); only the family's name and model types differ.
"""

from __future__ import annotations

from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    name = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
