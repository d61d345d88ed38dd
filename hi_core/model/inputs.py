"""The sequence of DESIGN 1.1: prefix (prompt + image + generation prompt) followed by the response.

The response tokens are `tokenizer(R, add_special_tokens=False).input_ids`, appended after the
prefix, so one forward pass teacher-forces the description. The processor gets the image as it is
(the model's own pixels: no reduction before it), and a sequence longer than the language model's
context (`max_position_embeddings` of its text config) is refused. Also here: which response
tokens a key phrase selects, which query rows (`producing` / `reading`) stand for them, and
`to_model_device` (the tensors on the model's device and dtype, for any forward pass).

Texts are measured before anything reads them: a text whose characters could not fit the model's
context even at `MAX_CHARS_PER_TOKEN` per token is refused from its length alone (a 20 MB string never
reaches the tokenizer), and messages quote at most `text_head` of a text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..base.errors import InputError, check_choice
from ..families import FamilyAdapter, ImageLayout
from .images import check_image_size

Queries = Literal["producing", "reading"]

DEFAULT_PROMPT = "Describe the image."
# Natural-language tokens average ~4 characters, and few vocabularies hold tokens longer than 32: a text longer than
# this many characters per token of the context cannot fit it, and is refused without tokenizing it.
MAX_CHARS_PER_TOKEN = 32
MAX_TEXT_CHARS = 1_000_000  # the same bound for a model whose config names no context length
TEXT_HEAD = 40  # characters of a text a message quotes


def text_head(text: str, limit: int = TEXT_HEAD) -> str:
    """A text as a message quotes it: whole when short, else its first `limit` characters and '…'."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def check_text_length(field: str, text: str, limit: int | None) -> None:
    """Refuse (InputError) a `field` text longer than `limit` characters (None: any length), from its length alone:
    the message names the length and the limit, and quotes only the text's head."""
    if limit is not None and len(text) > limit:
        raise InputError(
            f"the {field} is {len(text):,} characters long, more than the {limit:,} allowed "
            f"(it begins {text_head(text)}): shorten it"
        )


def check_text_fits(model: Any, **texts: str) -> None:
    """Refuse a text (named by its keyword: prompt=..., description=...) whose length alone shows that it cannot fit
    the language model's context (`MAX_CHARS_PER_TOKEN` characters per token), before it is tokenized."""
    limit = context_length(model)
    chars = MAX_TEXT_CHARS if limit is None else limit * MAX_CHARS_PER_TOKEN
    for field, text in texts.items():
        check_text_length(field, text, chars)


@dataclass
class ModelInputs:
    """One sequence ready for the forward pass.

    tensors: processor outputs with the response appended (input_ids (1, T), attention_mask, ...).
    prefix_length: number of prefix tokens; response token i sits at position prefix_length + i.
    response_offsets: (start, end) character span of each response token in `response_text`.
    """

    tensors: dict[str, torch.Tensor]
    prefix_length: int
    response_text: str
    response_offsets: list[tuple[int, int]]
    layout: ImageLayout

    @property
    def num_response_tokens(self) -> int:
        return len(self.response_offsets)

    def query_positions(self, token_indices: np.ndarray, queries: Queries) -> np.ndarray:
        """Sequence positions of the query rows for the selected response tokens.

        `producing`: the row that produced token i (position prefix_length + i - 1);
        `reading`: the row of token i itself (position prefix_length + i).
        """
        check_choice("queries", queries, Queries)
        shift = -1 if queries == "producing" else 0
        return self.prefix_length + np.asarray(token_indices, dtype=np.int64) + shift


def is_per_token(value: Any, input_ids: torch.Tensor) -> bool:
    """Whether `value` is one of the processor's per-token tensors (attention_mask, token_type_ids, ...): 2-D with
    the shape of the sequence's `input_ids`, so it grows with the sequence, where image tensors do not."""
    return isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == input_ids.shape


def extend_sequence(tensors: dict[str, Any], new_ids: list[int], adapter: FamilyAdapter) -> dict[str, Any]:
    """The processor's tensors of one sequence with `new_ids` appended: `input_ids` gets them, every other
    per-token tensor its response value over them (`adapter.response_token_values`, else its last value, as a
    mask's 1), and the image tensors stay as they are."""
    input_ids = tensors["input_ids"]
    extended: dict[str, Any] = {}
    for key, value in tensors.items():
        if key == "input_ids":
            value = torch.cat([value, torch.tensor([new_ids], dtype=value.dtype)], dim=1)
        elif is_per_token(value, input_ids):
            fill = adapter.response_token_values.get(key, int(value[0, -1]))
            value = torch.cat([value, torch.full((1, len(new_ids)), fill, dtype=value.dtype)], dim=1)
        extended[key] = value
    return extended


def _response_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each response token: from the fast tokenizer, else by decoding prefixes."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]
    offsets, start = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        offsets.append((start, max(end, start)))
        start = max(end, start)
    return offsets


def context_length(model: Any) -> int | None:
    """The language model's context in tokens (`max_position_embeddings`), None if it has none."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    return int(limit) if limit else None


def to_model_device(tensors: dict[str, Any], model: Any) -> dict[str, Any]:
    """The tensors on the model's device, floating-point ones in the model's dtype (others as they are)."""
    moved = {}
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.to(model.device)
            if value.is_floating_point():
                value = value.to(model.dtype)
        moved[key] = value
    return moved


def special_tokens(processor: Any) -> set[str]:
    """The strings the tokenizer reads as control tokens (image placeholders, turn markers, ...)."""
    tokenizer = processor.tokenizer
    found = set(tokenizer.all_special_tokens)
    found |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    found |= {getattr(processor, name, None) for name in ("image_token", "video_token", "boi_token", "eoi_token")}
    return {token for token in found if isinstance(token, str) and token.strip()}


def check_plain_text(processor: Any, **texts: str) -> None:
    """Refuse a text (named by its keyword: prompt=..., description=...) holding a special token: typed into a
    prompt or a description, `<image>` (say) would become a second image placeholder or a turn marker, not
    words, and break the sequence's layout."""
    specials = special_tokens(processor)
    for field, text in texts.items():
        typed = sorted(token for token in specials if token in text)
        if typed:
            raise InputError(
                f"the {field} contains {typed[0]!r}, a special token of this model's tokenizer "
                "(read as a control token, not as text): remove it"
            )


def build_inputs(
    adapter: FamilyAdapter,
    model: Any,
    processor: Any,
    image: Image.Image,
    prompt: str,
    response_text: str,
    view: str = "combined",
) -> ModelInputs:
    """Prefix for (image, prompt) plus the response tokens, with every per-token tensor extended; its image tokens
    laid out for `view` (`FamilyAdapter.view_layout`).

    Refused (InputError) when prefix + response exceed the language model's context, or when the prompt
    or the description hold one of the tokenizer's special tokens.
    """
    check_text_fits(model, prompt=prompt, description=response_text)
    if not response_text.strip():
        raise InputError("the description text is empty: give a text to score, or generate one")
    check_plain_text(processor, prompt=prompt, description=response_text)
    check_image_size(image.size)
    tensors = adapter.prefix_inputs(processor, image, prompt)
    tokenizer = processor.tokenizer
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    if not response_ids:
        raise InputError(f"the description {text_head(response_text)} has no tokens for this model's tokenizer")
    input_ids = tensors["input_ids"]
    if input_ids.shape[0] != 1:
        raise RuntimeError("build_inputs makes one sequence at a time")
    prefix_length = int(input_ids.shape[1])
    extra = len(response_ids)
    limit = context_length(model)
    if limit is not None and prefix_length + extra > limit:
        raise InputError(
            f"prompt, image and description are {prefix_length + extra} tokens ({prefix_length} + {extra} of the "
            f"description), more than the model's context of {limit} tokens: shorten the description"
        )
    extended = extend_sequence(tensors, list(response_ids), adapter)
    layout = adapter.view_layout(model, processor, extended, view, image.size)
    return ModelInputs(
        tensors=extended,
        prefix_length=prefix_length,
        response_text=response_text,
        response_offsets=_response_offsets(tokenizer, response_text, response_ids),
        layout=layout,
    )


def phrase_span(text: str, phrase: str) -> tuple[int, int] | None:
    """(start, end) of the phrase's first occurrence in `text`, case-insensitive: as whole words if it
    occurs so ("man" in "a snowman and a man" is the second word), else anywhere; None if absent."""
    whole = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE)
    if whole is not None:
        return whole.span()
    start = text.lower().find(phrase.lower())
    return None if start < 0 else (start, start + len(phrase))


def key_phrase_tokens(inputs: ModelInputs, key_phrase: str | None) -> np.ndarray:
    """Indices of the response tokens to average over: all, or those overlapping the key phrase.

    The phrase is matched at its first whole-word occurrence in the response (else its first
    occurrence; case-insensitive, `phrase_span`); a token is selected when its character span
    overlaps the phrase's span.
    """
    count = inputs.num_response_tokens
    if key_phrase is None or not key_phrase.strip():
        return np.arange(count)
    phrase, text = key_phrase.strip(), inputs.response_text
    span = phrase_span(text, phrase) if len(phrase) <= len(text) else None  # a longer one cannot occur: no regex built
    if span is None:
        raise InputError(f"key phrase {text_head(phrase)} does not occur in the description {text_head(text)}")
    start, end = span
    selected = [i for i, (a, b) in enumerate(inputs.response_offsets) if a < end and b > start]
    if not selected:
        raise InputError(f"key phrase {text_head(phrase)} covers no token of the description")
    return np.asarray(selected, dtype=np.int64)
