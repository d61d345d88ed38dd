"""A tiny PaliGemma (SigLIP vision tower + Gemma), written as a Hub-like folder, built offline.

The processor is built before the config: `PaliGemmaProcessor` adds 1024 `<locNNNN>` and 128
`<segNNN>` tokens to the tokenizer, and the text model's vocabulary must include them.
Geometry: `SiglipImageProcessorPil` squashes any image to 56 x 56; 8-px patches -> a 7 x 7 grid.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import _randomize, tiny_text_config, word_tokenizer

IMAGE_SIZE = 56
PATCH = 8


def build_paligemma(folder: Path, image_size: int = IMAGE_SIZE, patch_size: int = PATCH) -> Path:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_seq_length=(image_size // patch_size) ** 2
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            vision_use_head=False,
        ),
        # Gemma's default head_dim is 256: set it to hidden / heads.
        text_config=tiny_text_config(len(tokenizer), model_type="gemma", head_dim=16),
        image_token_id=processor.image_token_id,
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    assert config.text_config.use_bidirectional_attention  # PaliGemma's bidirectional prefix
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)
    _randomize(model, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
