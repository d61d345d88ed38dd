"""Tiny PaliGemma (SigLIP vision tower + Gemma) and PaliGemma 2 (+ Gemma 2) models, written as
Hub-like folders, built offline.

The processor is built before the config: `PaliGemmaProcessor` adds 1024 `<locNNNN>` and 128
`<segNNN>` tokens to the tokenizer, and the text model's vocabulary must include them.
Geometry: `SiglipImageProcessorPil` squashes any image to 56 x 56; 8-px patches -> a 7 x 7 grid.

PaliGemma 2 keeps `model_type: paligemma`; its Gemma 2 text model soft-caps the attention logits
and alternates sliding-window and full layers. Ours caps at 1.5 and slides over 16 tokens, so the
cap changes most rows and a 60-token sequence is longer than the window. `tester=True` builds
instead the config of transformers' own PaliGemma 2 model tester (tests/models/paligemma2), with
our vocabulary and image token: 20-px images, 5-px patches (4 x 4), one KV head, head_dim 8.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_models import random_model, save_folder, tiny_siglip_vision_config, tiny_text_config, word_tokenizer

IMAGE_SIZE = 56
PATCH = 8


def _processor(image_size: int, patch_size: int):
    """PaliGemma's processor (which adds the `<locNNNN>` and `<segNNN>` tokens to the tokenizer) over a
    word tokenizer, squashing images to image_size x image_size."""
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_seq_length=(image_size // patch_size) ** 2
    )
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_paligemma(folder: Path, image_size: int = IMAGE_SIZE, patch_size: int = PATCH) -> Path:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor = _processor(image_size, patch_size)
    tokenizer = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=tiny_siglip_vision_config(image_size, patch_size),
        # Gemma's default head_dim is 256: set it to hidden / heads.
        text_config=tiny_text_config(len(tokenizer), model_type="gemma", head_dim=16),
        image_token_id=processor.image_token_id,
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    assert config.text_config.use_bidirectional_attention  # PaliGemma's bidirectional prefix
    return save_folder(folder, random_model(PaliGemmaForConditionalGeneration, config), processor)


# transformers' PaliGemma2VisionText2TextModelTester (5.24), minus the training-only fields.
TESTER_VISION = dict(
    model_type="siglip_vision_model", image_size=20, patch_size=5, num_channels=3, hidden_size=32,
    projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    dropout=0.1, attention_dropout=0.1, initializer_range=0.02,
)
TESTER_TEXT = dict(
    model_type="gemma2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
    head_dim=8, intermediate_size=37, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512,
    initializer_range=0.02, pad_token_id=1,
)
SLIDING_WINDOW = 16
SOFTCAP = 1.5


def build_paligemma2(folder: Path, tester: bool = False, text_overrides: dict | None = None) -> Path:
    """PaliGemma 2: SigLIP + Gemma 2 (soft-capped attention, sliding-window layers)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    image_size, patch_size = (TESTER_VISION["image_size"], TESTER_VISION["patch_size"]) if tester else (IMAGE_SIZE, PATCH)
    processor = _processor(image_size, patch_size)
    tokenizer = processor.tokenizer
    if tester:
        vision, text, projection = TESTER_VISION, {**TESTER_TEXT, "vocab_size": len(tokenizer)}, 32
    else:
        vision = tiny_siglip_vision_config(image_size, patch_size)
        text = tiny_text_config(
            len(tokenizer), model_type="gemma2", head_dim=16, sliding_window=SLIDING_WINDOW,
            attn_logit_softcapping=SOFTCAP, layer_types=["sliding_attention", "full_attention"],
        )
        projection = 64
    text.update(text_overrides or {})
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        projection_dim=projection,
        hidden_size=text["hidden_size"],
        vocab_size=len(tokenizer),
    )
    return save_folder(folder, random_model(PaliGemmaForConditionalGeneration, config), processor)


def build_paligemma_with_sinks(folder: Path) -> Path:
    """A PaliGemma whose text model is gpt-oss: attention sinks (`s_aux`), which the capture refuses."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor = _processor(IMAGE_SIZE, PATCH)
    tokenizer = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=tiny_siglip_vision_config(IMAGE_SIZE, PATCH),
        text_config=tiny_text_config(len(tokenizer), model_type="gpt_oss", head_dim=16, num_local_experts=2,
                                     num_experts_per_tok=1, use_bidirectional_attention=False),
        image_token_id=processor.image_token_id,
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    return save_folder(folder, PaliGemmaForConditionalGeneration(config), processor)  # weights never read
