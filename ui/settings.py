"""What a visitor may do: the deployment policy, one settings object read from flags and environment.

Locally (`python app.py`) everything stays open: any model name (Hub id or folder), any LoRA folder,
no caps beyond the library's own. In public (on a Hugging Face Space, where `SPACE_ID` is set, or
with `--public` / `HI_PUBLIC=1`) a visitor can load only the allow-listed models, never a path on
the server; messages never name the server's files; images, uploads, datasets, fine-tunes, the queue
and the temporary files are bounded. Every limit is a field below with its environment variable, and
docs/hosting.md's table lists them with their defaults.

The app reads `Settings.from_env(args)` once at start-up; the object is frozen (shared by every
session of a threaded server).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from hi_core.base.errors import InputError
from hi_core.model.model_memory import GB, memory_budget
from hi_core.tuning.finetune import FinetuneConfig

#: Small released models of supported families a public deployment offers by default, smallest
#: first, with their config's `model_type` (all under 2.5B parameters, safetensors, no remote code).
RELEASED_MODEL_TYPES = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": "idefics3",
    "HuggingFaceTB/SmolVLM2-500M-Video-Instruct": "smolvlm",
    "llava-hf/llava-interleave-qwen-0.5b-hf": "llava",  # its language model: Qwen2
    "Qwen/Qwen3.5-0.8B": "qwen3_5",  # hybrid: Gated DeltaNet + softmax-attention layers
    "OpenGVLab/InternVL3-1B-hf": "internvl",
    "Qwen/Qwen3-VL-2B-Instruct": "qwen3_vl",
    "Qwen/Qwen2-VL-2B-Instruct": "qwen2_vl",
}
DEFAULT_ALLOWED_MODELS = ("demo", *RELEASED_MODEL_TYPES)
#: The allow-list's ~2 B models, whose vision towers attend over every patch of the image at once: the view budget
#: for them is `Settings.large_model_view_pixels` (Qwen2-VL-2B on 2 CPU threads, a 1024 x 768 photo: ~14 s at
#: 262,144 px, ~134 s at 1,048,576 px; bench/README.md).
LARGE_VIEW_MODELS = frozenset({"Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"})

_TRUE = {"1", "true", "yes", "on"}
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()]+){2,}[\\/]?")


@dataclass(frozen=True)
class Settings:
    """The deployment policy. `None` in a limit means "no limit" (the local default)."""

    public: bool = False
    allowed_models: tuple[str, ...] = DEFAULT_ALLOWED_MODELS  # enforced only when public
    max_image_pixels: int = 50_000_000  # an upload's pixels, read from its header before decoding
    max_image_side: int = 2048  # images are brought to at most this side on arrival (the models see less)
    max_upload_mb: float | None = None  # per uploaded file (Gradio's max_file_size)
    max_request_kb: float | None = None  # a request's body on every route but the upload (`request_limit`)
    max_dataset_images: int | None = None  # records scored per dataset run
    max_finetune_steps: int | None = None
    max_lora_rank: int | None = None
    max_batch_size: int | None = None  # fine-tune and dataset scoring
    # The Explorer's per-token view keeps each response token's map of every head: at most this many maps
    # (layers x heads x tokens) for the whole server, all sessions together, e.g. 97 tokens on a 28 x 12-head model
    # (72 MiB on a 24 x 24 grid)
    max_token_maps: int | None = 65_536
    max_editor_layers: int | None = (
        None  # brush layers the image editor may send with its image (checked before decoding)
    )
    max_text_chars: int | None = (
        100_000  # a description, prompt or key phrase, in characters, checked before tokenizing
    )
    max_index_mb: float | None = None  # an uploaded dataset's data.jsonl, in MB, checked before it is read
    max_index_lines: int | None = (
        None  # an uploaded dataset's data.jsonl, in lines, counted before any record is parsed
    )
    session_idle_s: int | None = None  # a session's state (results, maps, run folder) is freed after this idle time
    max_upload_cache_mb: float | None = None  # Gradio's upload cache, in MB: swept of its oldest files beyond this
    max_validation_minutes: float | None = None  # a Validate run, estimated from its first pass, refused beyond this
    queue_size: int | None = None  # events waiting in the queue; more are turned away with a message
    concurrency: int = 2  # events of one kind running at once (the dataset and fine-tune: 1)
    max_run_storage_mb: float = 2048  # unpacked uploads, downloads and adapters on disk, all sessions; oldest go first
    cache_ttl_s: int = 3600  # Gradio's upload cache: files older than this are deleted (checked as often)
    # model weights held in memory at once (cached models + fine-tunes' private copies); None: half the machine's
    model_memory_gb: float | None = None
    # a view budget: the processor makes at most ~this many pixels of an image (fewer tiles / image tokens: SmolVLM-256M
    # analyzes a 1024 x 768 photo in ~6 s instead of ~20 s on 2 cores, its 4 tiles instead of 12)
    max_view_pixels: int | None = None
    large_model_view_pixels: int | None = None  # the view budget of LARGE_VIEW_MODELS (at most max_view_pixels)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (not math.isfinite(value) or value <= 0)
            ):
                raise InputError(f"setting {item.name} must be a positive number, got {value!r}")
            if value is None and "None" not in str(item.type):  # e.g. HI_MAX_IMAGE_SIDE="": that bound has no "off"
                raise InputError(f"setting {item.name} must be a positive number: it has no 'no limit'")
        if not self.allowed_models:
            raise InputError("setting allowed_models is empty: name at least one model (e.g. demo)")

    @classmethod
    def public_defaults(cls) -> Settings:
        """The limits a public deployment starts from (each can still be overridden by its variable)."""
        return cls(
            public=True,
            max_image_pixels=24_000_000,
            max_image_side=1536,
            max_view_pixels=1_048_576,
            large_model_view_pixels=262_144,
            max_upload_mb=50,
            max_request_kb=1024,
            max_dataset_images=200,
            max_finetune_steps=500,
            max_lora_rank=64,
            max_batch_size=32,
            queue_size=32,
            concurrency=2,
            max_run_storage_mb=1024,
            max_editor_layers=4,
            max_text_chars=2_000,
            max_index_mb=4,
            max_index_lines=10_000,
            session_idle_s=1800,
            max_upload_cache_mb=2048,
            max_validation_minutes=10,
        )

    @classmethod
    def from_env(cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment (`HI_*` variables, `SPACE_ID`) and the app's flags.

        Public when `SPACE_ID` is set (a Hugging Face Space), or `HI_PUBLIC=1`, or `--public`.
        Each field can be set by `HI_<FIELD>` (e.g. `HI_MAX_IMAGE_PIXELS=10000000`,
        `HI_ALLOWED_MODELS=demo,owner/name`); an empty value in a limit means "no limit".
        """
        environ = os.environ if environ is None else environ
        public = bool(environ.get("SPACE_ID")) or environ.get("HI_PUBLIC", "").lower() in _TRUE
        public = public or bool(getattr(args, "public", False))
        base = cls.public_defaults() if public else cls()
        # field name -> its value from the environment as `_parse` reads it: the allow-list (a tuple of names) or a
        # limit (a number; None: no limit), each for a field of its own type; Settings checks the numbers
        overrides: dict[str, Any] = {}
        for item in fields(cls):
            raw = environ.get(f"HI_{item.name.upper()}")
            if raw is None or item.name == "public":
                continue
            overrides[item.name] = _parse(item.name, raw)
        allowed = getattr(args, "allow_model", None)
        if allowed:
            overrides["allowed_models"] = tuple(
                dict.fromkeys([*overrides.get("allowed_models", base.allowed_models), *allowed])
            )
        return replace(base, **overrides)

    # --- the checks handlers make ----------------------------------------------------------------

    def check_model(self, name: str) -> str:
        """The model name to load, or an InputError that says nothing about the server's files."""
        name = (name or "").strip()
        if not name:
            raise InputError("choose a model")
        if self.public and name not in self.allowed_models:
            raise InputError(f"this deployment offers only these models: {', '.join(self.allowed_models)}")
        return name

    def view_pixels(self, model: str) -> int | None:
        """The view budget `model` loads with: `max_view_pixels`, or for LARGE_VIEW_MODELS `large_model_view_pixels`
        when that is lower (None: the model's own settings)."""
        budgets = [self.max_view_pixels]
        if model in LARGE_VIEW_MODELS:
            budgets.append(self.large_model_view_pixels)
        return min((budget for budget in budgets if budget is not None), default=None)

    def check_finetune(self, config: FinetuneConfig) -> None:
        for value, limit, what in (
            (config.steps, self.max_finetune_steps, "steps"),
            (config.rank, self.max_lora_rank, "LoRA rank"),
            (config.batch_size, self.max_batch_size, "batch size"),
        ):
            if limit is not None and value > limit:
                raise InputError(f"{what} is {value}; this deployment allows at most {limit}")

    def check_batch_size(self, batch_size: int) -> None:
        if self.max_batch_size is not None and batch_size > self.max_batch_size:
            raise InputError(f"batch size is {batch_size}; this deployment allows at most {self.max_batch_size}")

    def dataset_limit(self, asked: int | None) -> int | None:
        """The number of records to score: what the visitor asked for, within the deployment's cap."""
        if self.max_dataset_images is None:
            return asked
        return min(asked or self.max_dataset_images, self.max_dataset_images)

    @property
    def model_memory(self) -> int:
        """The model cache's budget in bytes: `model_memory_gb`, else `hi_core.model.model_memory.DEFAULT_SHARE` of the
        machine's memory."""
        return int(self.model_memory_gb * GB) if self.model_memory_gb else memory_budget({})

    @property
    def max_file_size(self) -> int | None:
        """Gradio's `launch(max_file_size=...)`, in bytes."""
        return None if self.max_upload_mb is None else int(self.max_upload_mb * 1024 * 1024)


def scrub_paths(message: str) -> str:
    """A message with every absolute path replaced by its last component (`/tmp/gradio/ab12/m.png` -> `m.png`).

    Library messages name the user's files, which is right on the command line; in the app the files
    are the server's (uploads in Gradio's cache, run folders), and their paths are nobody's business.
    """
    return _ABSOLUTE_PATH.sub(lambda match: re.split(r"[\\/]", match.group(0).rstrip("\\/"))[-1], message)


def _parse(name: str, raw: str) -> object:
    raw = raw.strip()
    if name == "allowed_models":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if raw == "":
        return None  # no limit
    try:
        number = float(raw)
    except ValueError:
        raise InputError(f"environment variable HI_{name.upper()} must be a number, got {raw!r}") from None
    return int(number) if number.is_integer() else number
