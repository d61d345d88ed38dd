"""The demo model's vocabulary, tokenizer, processor and architecture (a standard transformers LLaVA).

A word-level tokenizer over the synthetic scenes' words (descriptions, questions and answers); a
CLIP vision tower (`VISION_LAYERS` layers, `VISION_HIDDEN` wide, 8-px patches on 96-px images: a 12 x 12
grid) and a Llama language model (`TEXT_LAYERS` layers, hidden 128, `TEXT_HEADS` heads). Everything is
built locally: no download. The constants are the shipped model's (tests/test_demo_model.py checks them
against its config.json); `train` can build other sizes.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ..data.synth import ANSWER_WORDS, COLOURS, COLUMNS, QUESTION_WORDS, ROWS, SHAPES, SIZES

IMAGE_SIZE = 96
PATCH_SIZE = 8
VISION_HIDDEN = 64  # the shipped model's; `train --vision-hidden 128` builds a wider vision tower
VISION_LAYERS = 2  # the shipped model's (since v3; v2 had 1)
TEXT_HEAD_DIM = 16  # the shipped model's (128 / 8 heads); `train --text-head-dim 32` builds wider heads
TEXT_LAYERS = 6
TEXT_HEADS = 8
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def vocabulary() -> list[str]:
    """Every word the scenes' descriptions, questions and answers, the default prompt and the chat
    template use."""
    words = ["a", "at", "the", "and", "describe", "image", ".", "user", "assistant", ":"]
    words += list(SIZES) + list(COLOURS) + list(SHAPES) + list(ROWS) + list(COLUMNS)
    words += list(QUESTION_WORDS) + list(ANSWER_WORDS)
    return SPECIAL_TOKENS + sorted(set(words))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues "." style tokens
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    vision_hidden: int = VISION_HIDDEN,
    vision_layers: int = VISION_LAYERS,
    text_head_dim: int = TEXT_HEAD_DIM,
) -> LlavaConfig:
    """The demo's LLaVA config; `vision_hidden`: the CLIP layers' width (their MLP is twice as wide);
    `vision_layers`: how many CLIP layers (the features are the last one's); `text_head_dim`: the width
    of each language-model attention head (q/k/v project to 8 x this; 16 fills the hidden size 128)."""
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")  # one token in, one id out
    if not isinstance(image_token_id, int):
        raise TypeError(f"the tokenizer gave {image_token_id!r} as the id of <image>, not one id")
    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_HEADS,
            num_key_value_heads=TEXT_HEADS,
            head_dim=text_head_dim,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )


def build_model(
    seed: int = 0,
    vision_hidden: int = VISION_HIDDEN,
    vision_layers: int = VISION_LAYERS,
    text_head_dim: int = TEXT_HEAD_DIM,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialized demo model (seeded) and its processor."""
    processor = build_processor()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(
        build_config(processor.tokenizer, vision_hidden, vision_layers, text_head_dim)
    )
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor
