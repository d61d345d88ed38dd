"""What every tab shares, held in one object passed to each tab's builder: the deployment's settings,
the model cache, the run storage, the examples, and the model's work (the only code that runs on a
ZeroGPU worker).

ZeroGPU runs a function decorated with `spaces.GPU` in a forked child process: whatever it changes in
Python objects stays there. So only the model's work is decorated (it takes inputs and returns
arrays); loading, the model cache, run folders and cancel flags stay in the server's process. A free
visitor's daily GPU quota is a few minutes: the durations below are what a call may reserve, not what
it uses.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.causal.head_ablation import ImageAblation, ablate_image
from hi_core.data.dataset_analysis import DatasetAnalysis, DatasetConfig
from hi_core.data.dataset_scoring import score_dataset
from hi_core.data.datasets import read_dataset
from hi_core.method.analysis import AnalysisConfig, ImageAnalysis, analyze_image
from hi_core.model.inputs import check_text_length
from hi_core.model.loading import ASSETS_DIR, Device, LoadConfig, LoadedModel
from hi_core.model.model_cache import ModelCache
from hi_core.model.model_memory import describe

from .budget import TokenMapBudget
from .settings import Settings, scrub_paths
from .storage import RunStorage

if TYPE_CHECKING:
    from .finetune_run import FinetuneSession

try:  # Hugging Face ZeroGPU Spaces: the GPU is attached only inside functions decorated with spaces.GPU
    import spaces
except ImportError:
    spaces = None

GPU_SECONDS = 30  # one analysis, or the gallery's few images
GPU_SECONDS_DATASET = 120  # a dataset of at most Settings.max_dataset_images images

EXAMPLES_DIR = ASSETS_DIR / "examples"
# Every file the app writes lies below this (ui/storage.py): run folders, sessions' downloads, the synthetic set.
UNPACKED = Path(tempfile.gettempdir()) / "hi-explorer-datasets"
UNPACKED_TTL_S = 6 * 3600  # a run's folder older than this is removed when a new run starts
MAX_NAME_CHARS = 4096  # a model's or an adapter's name: a Hub id or a folder (Linux's PATH_MAX)
TUNED = "fine-tune: "  # the LoRA box's value for this session's tuned adapter (the run's name, never its path)


def on_gpu(duration: int):
    """`spaces.GPU(duration=...)` on a ZeroGPU Space; elsewhere the function as it is."""
    return spaces.GPU(duration=duration) if spaces is not None else (lambda function: function)


@dataclass(frozen=True)
class Example:
    """One of the bundled examples (hi_core/assets/examples), as the Explorer shows it."""

    id: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    text: str
    key_phrase: str


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    if not (folder / "data.jsonl").is_file():
        return []
    return [Example(r.id, np.asarray(r.image), r.mask, r.text, r.key_phrase or "") for r in read_dataset(folder)]


@dataclass
class ModelWork:
    """The model's work, decorated for ZeroGPU once at start-up (the decorated functions close over the cache)."""

    analyze: Callable[..., ImageAnalysis]  # (load config, image, mask, text or None, AnalysisConfig, per_token=False)
    score_dataset: Callable[..., DatasetAnalysis]  # (load config, folder, DatasetConfig, progress, stop=None)
    ablate: Callable[..., ImageAblation]  # (load config, image, mask, text, heads, AnalysisConfig)


def model_work(cache: ModelCache) -> ModelWork:
    @on_gpu(GPU_SECONDS)
    def analyze(
        config: LoadConfig,
        image: np.ndarray,
        mask: np.ndarray,
        text: str | None,
        analysis_config: AnalysisConfig,
        per_token: bool = False,
    ) -> ImageAnalysis:
        """One image (on a ZeroGPU Space: in the GPU worker; the model was loaded before); `per_token` also
        keeps every response token's maps (the same forward pass)."""
        return analyze_image(
            cache.get(config), Image.fromarray(image), mask, text, analysis_config, per_token=per_token
        )

    @on_gpu(GPU_SECONDS_DATASET)
    def score(config: LoadConfig, folder: Path, dataset_config: DatasetConfig, progress, stop=None) -> DatasetAnalysis:
        """`stop()` true: Cancel (while data.jsonl is read, and between batches)."""
        analysis = score_dataset(cache.get(config), folder, dataset_config, progress=progress, stop=stop)
        if analysis is None:  # only a data-parallel run's other processes get None; the app scores in one
            raise RuntimeError("score_dataset returned no analysis in the app's single process")
        return analysis

    @on_gpu(GPU_SECONDS)
    def ablate(
        config: LoadConfig,
        image: np.ndarray,
        mask: np.ndarray,
        text: str,
        heads: tuple[tuple[int, int], ...],
        analysis_config: AnalysisConfig,
    ) -> ImageAblation:
        """The image described with and without `heads`, and `text` scored without them."""
        return ablate_image(cache.get(config), Image.fromarray(image), mask, text, heads, analysis_config)

    return ModelWork(analyze, score, ablate)


@dataclass(init=False)
class AppContext:
    """The app's shared state: one per served app, read by every session (models are loaded once, here). A part not
    given is made from the settings (and the cache)."""

    settings: Settings
    cache: ModelCache
    examples: list[Example]
    storage: RunStorage
    work: ModelWork
    token_maps: TokenMapBudget  # the Explorer's per-token maps, all sessions together

    def __init__(
        self,
        settings: Settings | None = None,
        cache: ModelCache | None = None,
        examples: list[Example] | None = None,
        storage: RunStorage | None = None,
        work: ModelWork | None = None,
        token_maps: TokenMapBudget | None = None,
    ) -> None:
        self.settings = Settings() if settings is None else settings
        self.cache = ModelCache() if cache is None else cache
        self.examples = load_examples() if examples is None else examples
        self.storage = (
            RunStorage(UNPACKED, self.settings.max_run_storage_mb, UNPACKED_TTL_S) if storage is None else storage
        )
        self.work = model_work(self.cache) if work is None else work
        self.token_maps = TokenMapBudget(self.settings.max_token_maps) if token_maps is None else token_maps

    def model_config(
        self, model_name: str, device: Device, lora: str | None = "", tuned: FinetuneSession | None = None
    ) -> LoadConfig:
        """The model to load, as the deployment allows: the allow-list when public; a LoRA adapter is this
        session's fine-tune (`TUNED` + its run name) or, locally, any adapter folder. A name longer than any path
        is refused from its length (it is quoted in messages)."""
        for what, name in (("model name", model_name), ("LoRA adapter", lora)):
            check_text_length(what, name or "", MAX_NAME_CHARS)
        lora = (lora or "").strip()
        if lora.startswith(TUNED):
            if tuned is None or lora != TUNED + tuned.run_folder.name or not tuned.adapter.is_dir():
                raise InputError(
                    "that tuned model is not this session's latest fine-tune (or its files were cleaned up)"
                )
            lora = str(tuned.adapter)
        elif lora and self.settings.public:
            raise InputError(
                "this deployment applies only the adapter of this session's fine-tune (its 'Use the tuned model')"
            )
        return LoadConfig(
            model=self.settings.check_model(model_name),
            device=device,
            lora=lora or None,
            max_view_pixels=self.settings.view_pixels(model_name.strip()),
        )

    def get_model(self, config: LoadConfig, progress: gr.Progress | None = None) -> LoadedModel:
        """A loaded model from the cache (in this process, never in a GPU worker); a load waits its turn."""

        def waiting(position: int) -> None:
            if progress is not None:
                progress(0.05, desc=f"waiting for {position} other model load(s) to finish")

        if progress is not None and config not in self.cache:
            progress(0.1, desc=f"loading {config.model}")
        return self.cache.get(config, on_wait=waiting)

    def shown(self, name: str) -> str:
        """A model's name as the page shows it: without the server's paths (in public none at all; locally the folders
        the person named stay, the app's own temporary ones, e.g. a tuned model's adapter, go)."""
        if self.settings.public:
            return scrub_paths(name)
        return re.sub(rf"{re.escape(str(UNPACKED))}[^\s'\"]*", lambda match: scrub_paths(match.group(0)), name)

    def loaded_message(self, loaded: LoadedModel) -> str:
        layers, scored = len(loaded.adapter.decoder_layers(loaded.model)), loaded.adapter.scored_layers(loaded.model)
        note = "" if len(scored) == layers else f" (scored: the softmax-attention layers {', '.join(map(str, scored))})"
        weights = sum(parameter.numel() * parameter.element_size() for parameter in loaded.model.parameters())
        dtype = str(loaded.model.dtype).removeprefix("torch.")
        memory = (
            f"{dtype}, {describe(weights)} of weights (models are held within {describe(self.cache.budget)})"
            if loaded.device.type == "cpu"
            else f"{dtype} on {loaded.device.type}"
        )
        chosen = f"; {loaded.note}" if loaded.note else ""
        if self.settings.max_view_pixels is not None:
            chosen += (
                f"; view budget: {loaded.view_budget or 'none needed (this family sees images at one fixed size)'}"
            )
        return (
            f"Loaded `{self.shown(loaded.name)}`: {loaded.family}, {layers} language-model layers{note}; "
            f"{memory}{chosen}."
        )
