"""Pixtral-style model inputs (Mistral 3) without torchvision: transformers' image processor, our token expansion.

transformers 5.24's `PixtralProcessor` cannot even be imported without torchvision (its module
imports the torchvision image processor for one helper), so `AutoProcessor` fails on every
Mistral 3 folder on such machines. `PixtralImageTextProcessor` does for one prompt what that
processor does, with the same attributes and outputs:
- the image geometry stays transformers' own, `PixtralImageProcessorPil` (importable without
  torchvision): `resize` -> `get_resize_output_image_size` shrinks the image, never enlarges it, so
  that it fits `size["longest_edge"]` keeping its aspect ratio (each side floored), then rounds each
  side *up* to a multiple of the patch (one bicubic resize, so each axis has its own scale); then
  rescale and normalize. As in `PixtralProcessor._process_images`, the patch it is given is
  `patch_size * spatial_merge_size`, the pixels of one language-model token;
- the token expansion mirrors `PixtralProcessor.replace_image_token`: each `[IMG]` of the text
  becomes rows of `width / (patch * merge)` `[IMG]` tokens, each row closed by `[IMG_BREAK]`, the
  last row's break replaced by `[IMG_END]`, where (height, width) is the resized image size
  (`image_sizes`); the expanded text is then tokenized whole, as `ProcessorMixin.__call__` does.
The model's forward takes `input_ids`, `attention_mask`, `pixel_values` (images, 3, H, W; zero-padded
to the largest in a batch) and `image_sizes` (images, 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from ..base.errors import InputError

#: The settings of `processor_config.json` this processor reads (the same names as `PixtralProcessor`'s).
SETTINGS = ("patch_size", "spatial_merge_size", "image_token", "image_break_token", "image_end_token")


def image_token_text(height: int, width: int, cell: int, image: str, image_break: str, image_end: str) -> str:
    """The text an `[IMG]` placeholder becomes for an image resized to height x width px, one token per
    `cell` x `cell` px (`PixtralProcessor.replace_image_token`)."""
    rows, cols = height // cell, width // cell
    tokens = ([image] * cols + [image_break]) * rows
    tokens[-1] = image_end
    return "".join(tokens)


class PixtralImageTextProcessor:
    """`PixtralProcessor` for text with images, built without torchvision (see the module docstring)."""

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: str | None = None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.patch_size = int(patch_size)
        self.spatial_merge_size = int(spatial_merge_size)
        self.chat_template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def cell(self) -> int:
        """Pixels per language-model token along each axis: patch x spatial merge."""
        return self.patch_size * self.spatial_merge_size

    def __call__(
        self, text: str | list[str], images: list[Any] | None = None, return_tensors: str = "pt"
    ) -> BatchFeature:
        """input_ids and attention_mask of the text with every `[IMG]` expanded, plus pixel_values and
        image_sizes of the images (in the order of their placeholders)."""
        texts = [text] if isinstance(text, str) else list(text)
        images = list(images or [])
        placeholders = sum(sample.count(self.image_token) for sample in texts)
        if placeholders != len(images):
            raise InputError(f"the prompt has {placeholders} {self.image_token} placeholders for {len(images)} images")
        pixels: dict[str, Any] = {}
        if images:
            pixels = self.image_processor(
                images, patch_size={"height": self.cell, "width": self.cell}, return_tensors=return_tensors
            )
            replacements = iter(
                image_token_text(
                    int(height), int(width), self.cell, self.image_token, self.image_break_token, self.image_end_token
                )
                for height, width in pixels["image_sizes"]
            )
            texts = ["".join(_expanded(sample, self.image_token, replacements)) for sample in texts]
        encoded = self.tokenizer(texts, return_tensors=return_tensors)
        return BatchFeature({**encoded, **pixels}, tensor_type=return_tensors)

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str, trust_remote_code: bool = False) -> PixtralImageTextProcessor:
        """From a Hub id or folder holding a `PixtralProcessor`'s files: tokenizer, `preprocessor_config.json`,
        `processor_config.json` (patch size, merge, token strings) and the chat template."""
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        saved, _ = ProcessorMixin.get_processor_dict(source, trust_remote_code=trust_remote_code)
        settings = {key: saved[key] for key in SETTINGS if key in saved}
        return cls(image_processor, tokenizer, chat_template=saved.get("chat_template"), **settings)

    def save_pretrained(self, folder: str | Path) -> None:
        """The files `from_pretrained` (and `PixtralProcessor.from_pretrained`) read, as in a Hub folder."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        settings = {"processor_class": "PixtralProcessor", **{key: getattr(self, key) for key in SETTINGS}}
        (folder / "processor_config.json").write_text(json.dumps(settings, indent=2) + "\n")
        if self.chat_template is not None:
            (folder / "chat_template.jinja").write_text(self.chat_template)


def _expanded(text: str, placeholder: str, replacements: Any) -> list[str]:
    """`text` cut at each placeholder, the next replacement put in its place."""
    pieces = text.split(placeholder)
    out = [pieces[0]]
    for piece in pieces[1:]:
        out += [next(replacements), piece]
    return out
