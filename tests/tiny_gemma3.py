"""A tiny Gemma 3 (SigLIP vision tower + average-pooling projector + Gemma 3 text), written as a
Hub-like folder, built offline.

Ours: 56-px images, 4-px patches (14 x 14), pooled 2 x 2 to a 7 x 7 grid of 49 image tokens
(`mm_tokens_per_image` 49, the processor's `image_seq_length` 49); a text model whose first layer
slides over 16 tokens (the image alone is 49), so the sliding mask meets the image's
bidirectional block. The projector's weight starts at zero in a fresh model (every image token
would embed alike): `_randomize` gives it random weights like every other matrix.

`tester=True` builds the config of transformers' own Gemma 3 model tester
(`Gemma3Vision2TextModelTester` with the text config of `GemmaModelTester`, tests/models/gemma3),
with our vocabulary and token ids: 20-px images, 5-px patches, `mm_tokens_per_image` 2, which its
projector pools to int(sqrt(2)) = 1 token per side. `mm_tokens_per_image` can be overridden.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import random_model, save_folder, tiny_text_config, tiny_vision_config, word_tokenizer

IMAGE_SIZE = 56
PATCH = 4
TOKENS = 49  # 7 x 7
SLIDING_WINDOW = 16

SPECIAL = ["<start_of_image>", "<image_soft_token>", "<end_of_image>", "<start_of_turn>", "<end_of_turn>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
)

# transformers' Gemma3Vision2TextModelTester (5.24): its vision config, minus training-only fields,
# and the Gemma3TextConfig that GemmaModelTester (CausalLMModelTester defaults) builds.
TESTER_VISION = dict(
    model_type="siglip_vision_model", image_size=20, patch_size=5, num_channels=3, hidden_size=32,
    num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, dropout=0.1, attention_dropout=0.1,
    initializer_range=0.02,
)
TESTER_TEXT = dict(
    model_type="gemma3_text", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    head_dim=16, intermediate_size=37, max_position_embeddings=512, initializer_range=0.02, pad_token_id=0,
    bos_token_id=1, eos_token_id=2,
)
TESTER_TOKENS = 2


def gemma3_tokenizer():
    return word_tokenizer(
        SPECIAL,
        extra_special={"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"},
    )


def build_gemma3(folder: Path, tester: bool = False, mm_tokens_per_image: int | None = None,
                 image_seq_length: int | None = None) -> Path:
    """Gemma 3; `image_seq_length` (the processor's tokens per image) defaults to `mm_tokens_per_image`."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = gemma3_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    if tester:
        vision = TESTER_VISION
        text = {**TESTER_TEXT, "vocab_size": len(tokenizer)}
        tokens = TESTER_TOKENS if mm_tokens_per_image is None else mm_tokens_per_image
    else:
        vision = tiny_vision_config(IMAGE_SIZE, PATCH, model_type="siglip_vision_model")  # with its pooling head
        text = tiny_text_config(
            len(tokenizer), model_type="gemma3_text", head_dim=16, sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        )
        tokens = TOKENS if mm_tokens_per_image is None else mm_tokens_per_image
    size = vision["image_size"]
    image_processor = Gemma3ImageProcessorPil(size={"height": size, "width": size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=tokens if image_seq_length is None else image_seq_length,
    )
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=tokens,
        image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
    )
    model = random_model(Gemma3ForConditionalGeneration, config)  # also the projector, which a fresh model starts at zero
    if not tester:
        # Random attention over 196 patches, then the projector's RMSNorm, spreads a local change
        # over every token; weaker mixing keeps each region's change on its own cells, which the
        # embedding-change oracle needs (the grid is what it checks, not the tower).
        with torch.no_grad():
            for layer in model.model.vision_tower.encoder.layers:
                layer.self_attn.out_proj.weight.mul_(0.1)
    return save_folder(folder, model, processor)
