"""Tiny Idefics3 and SmolVLM models, written as Hub-like folders, built offline.

Geometry: 48-px tiles, 4-px vision patches (12 x 12 per tile), pixel shuffle by 2, so every tile
and the global view hold 6 x 6 language-model tokens. The image processor first resizes the
longest edge to 144 px. With image splitting on, a 120x60 image becomes 144x72, then 144x96
(whole tiles), i.e. 2 rows x 3 columns of tiles plus the global view (the whole image squashed to
48x48); with it off, only the squashed 48x48 global view remains.

Idefics3's processor saves and reloads normally. SmolVLM's owns a video processor, which cannot
be built without torchvision, so its folder gets the tokenizer, the image processor
(`SmolVLMImageProcessorPil`) and `chat_template.jinja` saved separately (the layout of a Hub
checkpoint), and `hi_core.model.loading` assembles the processor itself. SmolVLM's processor also needs
the `num2words` package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_models import _randomize, save_folder, special_token_ids, tiny_text_config, tiny_vision_config, word_tokenizer

TILE = 48  # pixels per tile side (vision image_size, processor max_image_size)
PATCH = 4
SCALE = 2  # pixel-shuffle factor
LONGEST_EDGE = 3 * TILE  # the processor's first resize (longest edge)
TOKENS_PER_SIDE = TILE // PATCH // SCALE  # 6
IMAGE_SEQ_LEN = TOKENS_PER_SIDE**2

SPECIAL = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]

# The chat template of Idefics3 / SmolVLM checkpoints, with `<s>` as the begin-of-text token.
CHAT_TEMPLATE = (
    "<s>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _tokenizer():
    return word_tokenizer(
        SPECIAL,
        extra_special={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )


def _processor_kwargs(split: bool) -> dict:
    return dict(
        size={"longest_edge": LONGEST_EDGE},
        max_image_size={"longest_edge": TILE},
        do_image_splitting=split,
    )


def _config_kwargs(tokenizer) -> dict:
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    assert isinstance(image_token_id, int) and image_token_id > 3
    return dict(
        vision_config=tiny_vision_config(TILE, PATCH),
        text_config=tiny_text_config(len(tokenizer), **special_token_ids(tokenizer)),
        image_token_id=image_token_id,
        scale_factor=SCALE,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save_model(folder: Path, model) -> None:
    _randomize(model, seed=0)
    # Keep the vision tower's attention weak next to its residual stream, so each language-model
    # image token depends mostly on its own pixels: the region oracle (a changed region moves its
    # own cells' embeddings far more than the others) needs that locality.
    with torch.no_grad():
        for layer in model.model.vision_model.encoder.layers:
            layer.self_attn.out_proj.weight.mul_(0.02)
    model.save_pretrained(folder)


def build_idefics3(folder: Path, split: bool = True) -> Path:
    """Idefics3: SigLIP-style vision tower, pixel-shuffle connector, Llama text model."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = _tokenizer()
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**_processor_kwargs(split)),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    config = Idefics3Config(**_config_kwargs(tokenizer))
    torch.manual_seed(0)
    _save_model(folder, Idefics3ForConditionalGeneration(config))
    return save_folder(folder, processor)


def build_smolvlm(folder: Path, split: bool = True) -> Path:
    """SmolVLM: the Idefics3 architecture with its own processor (which owns a video processor)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    tokenizer = _tokenizer()
    image_processor = SmolVLMImageProcessorPil(**_processor_kwargs(split))
    config = SmolVLMConfig(**_config_kwargs(tokenizer))
    torch.manual_seed(0)
    _save_model(folder, SmolVLMForConditionalGeneration(config))
    # The processor's own settings (a Hub folder has them in processor_config.json).
    settings = '{"processor_class": "SmolVLMProcessor", "image_seq_len": %d}\n' % IMAGE_SEQ_LEN
    return save_folder(folder, tokenizer, image_processor,
                       files={"chat_template.jinja": CHAT_TEMPLATE, "processor_config.json": settings})
