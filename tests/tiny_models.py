"""Tiny models of every supported family, built offline from configs with local tokenizers.

Each builder writes a folder in the layout of a Hub checkpoint (config, safetensors weights,
tokenizer, image processor, chat template) so tests also go through `hi_core.model.loading`.
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


def word_level_tokenizer(vocab: dict[str, int], special_tokens: list[str], extra_special: dict[str, str] | None = None,
                         **kwargs) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-split word-level tokenizer over `vocab` (`<s>`, `</s>`, `<pad>`, `<unk>`
    among its tokens), with `special_tokens` kept whole."""
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


def word_tokenizer(special_tokens: list[str], extra_special: dict[str, str] | None = None, **kwargs) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over WORDS, with the given special tokens first."""
    base = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [w for w in WORDS if w.strip()] + ["\n"]
    vocab = {token: i for i, token in enumerate(base + special_tokens + words)}
    return word_level_tokenizer(vocab, special_tokens, extra_special, **kwargs)


def special_token_ids(tokenizer) -> dict:
    """The tokenizer's bos, eos and pad ids, as a text config names them."""
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


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


def tiny_vision_config(image_size: int, patch_size: int, **extra) -> dict:
    """A one-layer vision tower of hidden 32 with 2 heads (`extra`: its model_type and the like)."""
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        **extra,
    )


def tiny_clip_vision_config(image_size: int, patch_size: int) -> dict:
    """A one-layer CLIP vision tower (LLaVA and LLaVA-NeXT)."""
    return tiny_vision_config(image_size, patch_size, model_type="clip_vision_model")


def tiny_siglip_vision_config(image_size: int, patch_size: int) -> dict:
    """A one-layer SigLIP vision tower without its pooling head (PaliGemma, LLaVA-OneVision)."""
    return tiny_vision_config(image_size, patch_size, model_type="siglip_vision_model", vision_use_head=False)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-init random weights, so attention is far from uniform and tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def random_model(model_class, config, seed: int = 0) -> torch.nn.Module:
    """`model_class(config)` built under torch seed 0, then given `_randomize`'s weights from `seed`."""
    torch.manual_seed(0)
    model = model_class(config)
    _randomize(model, seed=seed)
    return model


def save_folder(folder: Path, *parts, files: dict[str, str] | None = None) -> Path:
    """A Hub checkpoint's layout: each part's `save_pretrained` (model, processor or tokenizer and image
    processor) into `folder`, and the text `files` (chat template, processor settings) beside them."""
    folder = Path(folder)
    for part in parts:
        part.save_pretrained(folder)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


def llava_parts(image_size: int, patch_size: int) -> tuple:
    """What LLaVA 1.5 and LLaVA-NeXT share: the tokenizer, the processor's settings (CLIP's CLS token
    counted, dropped by the "default" strategy) and the config's (a CLIP tower and a Llama)."""
    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    processor = dict(
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = dict(
        vision_config=tiny_clip_vision_config(image_size, patch_size),
        text_config=tiny_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return tokenizer, processor, config


def build_llava(folder: Path, image_size: int = 48, patch_size: int = 8) -> Path:
    """LLaVA 1.5: CLIP vision tower (shortest-edge resize + center crop) and a Llama."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    _, processor_settings, config_settings = llava_parts(image_size, patch_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(image_processor=image_processor, **processor_settings)
    model = random_model(LlavaForConditionalGeneration, LlavaConfig(**config_settings))
    return save_folder(folder, model, processor)
