"""The processor of a model folder, also where transformers' own cannot be built without torchvision.

Processors that own a video processor (Qwen2-VL, Qwen3-VL, SmolVLM, InternVL, LLaVA-OneVision) cannot be
built without torchvision; for those the processor is assembled from its tokenizer and image processor with
no video processor (images are all we need). Mistral 3's `PixtralProcessor` cannot even be imported without
it, so ours stands in (`pixtral_inputs`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoProcessor

from .pixtral_inputs import PixtralImageTextProcessor

if TYPE_CHECKING:
    from transformers import ProcessorMixin

logger = logging.getLogger(__name__)


def _processor_without_video(source: str, config: Any, trust_remote_code: bool) -> Any:
    """The family's processor built from its tokenizer and image processor, with no video processor."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    # transformers annotates every auto mapping's values as (slow, fast) tokenizer pairs; PROCESSOR_MAPPING's are
    # processor classes.
    processor_class: type[ProcessorMixin]
    processor_class = PROCESSOR_MAPPING[type(config)]  # type: ignore[assignment]  # values mis-annotated as pairs
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = Path(source) / "chat_template.jinja"
    if template_file.is_file():
        chat_template = template_file.read_text()
    # The processor's own settings from processor_config.json (e.g. SmolVLM's `image_seq_len`,
    # without which it expands `<image>` to the class default, not the model's token count).
    saved, _ = processor_class.get_processor_dict(source, trust_remote_code=trust_remote_code)
    accepted = inspect.signature(processor_class.__init__).parameters
    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template"}
    settings = {key: value for key, value in saved.items() if key in accepted and key not in skip}
    return build_processor_without_video(processor_class, image_processor, tokenizer, chat_template, **settings)


def build_processor_without_video(
    processor_class: type[ProcessorMixin],
    image_processor: Any,
    tokenizer: Any,
    chat_template: str | None,
    **settings: Any,
) -> Any:
    """Instantiate a processor that declares a video processor, passing None for it."""
    no_video = _accepting_no_video(processor_class)  # type: ignore[arg-type]  # mypy#11470: a class isn't Hashable
    return no_video(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template,
        **settings,
    )


@functools.cache
def _accepting_no_video(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of `processor_class` that accepts None for its video processor, which we never use (images
    only): ProcessorMixin checks every declared attribute's class. A subclass, not a patch of the class, so that
    nothing process-wide changes while other threads build processors; one per class (cached)."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name == "video_processor":
            return None
        return processor_class.check_argument_for_proper_class(self, argument_name, argument)

    namespace = {
        "check_argument_for_proper_class": check_argument_for_proper_class,
        "__module__": processor_class.__module__,
    }
    return type(processor_class.__name__, (processor_class,), namespace)


#: Families whose transformers processor cannot be imported at all without torchvision (not only its
#: video processor); our own processor stands in for it, for text and images.
OWN_PROCESSORS: dict[str, Callable[[str, bool], Any]] = {"mistral3": PixtralImageTextProcessor.from_pretrained}


def load_processor(source: str, config: Any, trust_remote_code: bool = False) -> Any:
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError) as error:
        # Without torchvision the video processor fails: an ImportError for Qwen2-VL / SmolVLM, a
        # ValueError ("... requires `torchvision`") from the video processor's auto class for InternVL.
        if "torchvision" not in str(error).lower():
            raise
        if config.model_type in OWN_PROCESSORS:
            logger.info("building our own %s processor (transformers' needs torchvision)", config.model_type)
            return OWN_PROCESSORS[config.model_type](source, trust_remote_code)
        logger.info("building the processor without its video processor (torchvision is missing)")
        return _processor_without_video(source, config, trust_remote_code)
