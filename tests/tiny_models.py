"""Tiny models of every supported family, built offline from configs with local tokenizers.

Each builder writes a folder in the layout of a Hub checkpoint (config, safetensors weights,
tokenizer, image processor, chat template) so tests also go through `hi_core.loading`.
Sizes: hidden 64, 2 language layers, 4 heads (2 KV heads: grouped-query attention is exercised).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "a an the red green blue yellow white black big small circle square triangle star cat dog "
    "image picture describe what is in this of on at top bottom left right center and with "
    "user assistant system . , : ? ! \n"
).split(" ")

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_tokenizer(special_tokens: list[str], extra_special: dict[str, str] | None = None, **kwargs) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over WORDS, with the given special tokens first."""
    base = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [w for w in WORDS if w.strip()] + ["\n"]
    vocab = {token: i for i, token in enumerate(base + special_tokens + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=extra_special or {},
        **kwargs,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    return tokenizer


def tiny_text_config(vocab_size: int, model_type: str = "llama", **overrides) -> dict:
    config = dict(
        model_type=model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
    )
    config.update(overrides)
    return config


def tiny_clip_vision_config(image_size: int, patch_size: int) -> dict:
    """A one-layer CLIP vision tower (LLaVA and LLaVA-NeXT)."""
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-init random weights, so attention is far from uniform and tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def build_llava(folder: Path, image_size: int = 48, patch_size: int = 8) -> Path:
    """LLaVA 1.5: CLIP vision tower (shortest-edge resize + center crop) and a Llama."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=tiny_clip_vision_config(image_size, patch_size),
        text_config=tiny_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    _randomize(model, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
