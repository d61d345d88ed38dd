"""Train the demo model: `python -m hi_core.demo train --out DIR` (`evaluation.run`: train, save, evaluate).

Training streams fresh synthetic scenes (seeded; batch b of step s is a pure function of the data
seed) for two tasks in every batch: captioning (the default prompt, loss on the description
tokens) and closed-form VQA (the question as the prompt, loss on the answer tokens); the step's
loss is the mean over each task's target tokens, summed over the two tasks, so the one-word answers
weigh as much as the long descriptions. Batches are built by hand (normalize the 96-px images,
prefix + target + </s>), which equals the processor's output and keeps data generation cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..base.errors import InputError, check_number, check_whole
from ..base.outputs import write_json
from ..data.synth import QUESTION_KINDS, SHAPES, Question, Scene, make_scene, make_vqa
from ..families.base import chat_prompt
from ..model.inputs import DEFAULT_PROMPT
from .build import IMAGE_SIZE, PATCH_SIZE, TEXT_HEAD_DIM, VISION_HIDDEN, VISION_LAYERS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training and evaluation settings. The shipped model (v3) was made by two runs, descriptions alone
    and then both tasks from those weights (`init`): its card gives both commands."""

    steps: int = 4500
    batch_size: int = 16
    vqa_share: float = 0.5  # share of each batch's rows that are questions (the rest: descriptions)
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    seed: int = 0  # weight initialization
    data_seed: int = 0  # training scenes
    eval_seed: int = 10_000  # held-out scenes (descriptions; questions use eval_seed + 1)
    eval_scenes: int = 200
    eval_questions: int = 50  # held-out questions per kind
    eval_single: int = 100  # held-out scenes of one object (attributes seen; seed eval_seed + 2)
    hi_scenes: int = 100  # held-out scenes (and questions) scored for the HI profile
    log_every: int = 50
    vision_hidden: int = VISION_HIDDEN  # the CLIP layers' width (build.build_config)
    vision_layers: int = VISION_LAYERS  # how many CLIP layers
    text_head_dim: int = TEXT_HEAD_DIM  # each language-model head's width (build.build_config)
    patch_shape_weight: float = 0.0  # weight of the image tokens' shape loss (`PatchShapeLoss`); 0: none
    init: str = ""  # a trained demo model's folder to start from (same architecture); "": from scratch (seed)

    def __post_init__(self) -> None:
        check_number("vqa_share", self.vqa_share, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        check_number("patch_shape_weight", self.patch_shape_weight, "a number >= 0", lambda v: v >= 0)
        check_number("lr", self.lr, "a number in (0, 1]", lambda v: 0 < v <= 1)
        check_number("weight_decay", self.weight_decay, "a number >= 0", lambda v: v >= 0)
        check_number(
            "vision_hidden",
            self.vision_hidden,
            "a multiple of 4 (its 4 heads), at least 4",
            lambda v: v == int(v) and v >= 4 and v % 4 == 0,
        )
        check_number(
            "text_head_dim",
            self.text_head_dim,
            "even (rotary embeddings) and at least 2",
            lambda v: v == int(v) and v >= 2 and v % 2 == 0,
        )
        for name in ("steps", "batch_size", "vision_layers", "log_every"):
            check_whole(name, getattr(self, name))
        for name in (
            "warmup",
            "seed",
            "data_seed",
            "eval_seed",
            "eval_scenes",
            "eval_questions",
            "eval_single",
            "hi_scenes",
        ):
            check_whole(name, getattr(self, name), 0)


@dataclass(frozen=True)
class Example:
    """One training row: a scene's image (H, W, 3) uint8, the prompt, the target text, and the
    shape under each image token (`patch_shapes`)."""

    image: np.ndarray
    prompt: str
    target: str
    task: str  # "caption" or "vqa"
    shapes: np.ndarray  # (grid * grid,) int


def patch_shapes(scene: Scene) -> np.ndarray:
    """(grid * grid,) the shape under each image token, row-major: 1 + the index in SHAPES of the
    object covering most of the patch when it covers at least a quarter of it, else 0 (background)."""
    grid = IMAGE_SIZE // PATCH_SIZE
    cover = scene.masks.reshape(len(scene.objects), grid, PATCH_SIZE, grid, PATCH_SIZE).mean(
        axis=(2, 4)
    )  # (objects, g, g)
    labels = np.array([SHAPES.index(obj.shape) + 1 for obj in scene.objects])[cover.argmax(axis=0)]
    return np.where(cover.max(axis=0) >= 0.25, labels, 0).reshape(-1)


def prefix_ids(processor: Any, prompt: str = DEFAULT_PROMPT) -> list[int]:
    """Token ids of the prefix (same for every 96-px image): chat template with the image expanded."""
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    return processor(text=chat_prompt(processor, prompt), images=[blank], return_tensors="pt")["input_ids"][0].tolist()


class Prefixes:
    """`prefix_ids` per prompt, computed once each (the scenes ask about a hundred-odd questions)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._ids: dict[str, list[int]] = {}

    def __call__(self, prompt: str) -> list[int]:
        if prompt not in self._ids:
            self._ids[prompt] = prefix_ids(self.processor, prompt)
        return self._ids[prompt]


def pixel_values(processor: Any, images: np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) normalized like the CLIP processor, from (B, H, W, 3) uint8 of the model's size."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - mean) / std


def caption_example(scene: Scene) -> Example:
    return Example(scene.image, DEFAULT_PROMPT, scene.text, "caption", patch_shapes(scene))


def vqa_example(scene: Scene, question: Question) -> Example:
    return Example(scene.image, question.text, question.answer, "vqa", patch_shapes(scene))


def make_batch(processor: Any, prefixes: Prefixes, examples: list[Example]) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels (loss on target + </s> only) / pixel_values, right-padded,
    and `vqa` (B,) bool: which rows are questions."""
    tokenizer = processor.tokenizer
    sequences, starts = [], []
    for example in examples:
        prefix = prefixes(example.prompt)
        target = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prefix + target)
        starts.append(len(prefix))
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(examples), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (sequence, start) in enumerate(zip(sequences, starts)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, start : len(sequence)] = torch.tensor(sequence[start:])
        attention_mask[row, : len(sequence)] = 1
    images = np.stack([example.image for example in examples])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values(processor, images),
        "vqa": torch.tensor([e.task == "vqa" for e in examples]),
    }


def training_examples(rng: np.random.Generator, config: TrainConfig) -> list[Example]:
    """One step's rows: descriptions first, then questions of random kinds (vqa_share of the rows)."""
    questions = round(config.batch_size * config.vqa_share)
    examples = [caption_example(make_scene(rng, IMAGE_SIZE)) for _ in range(config.batch_size - questions)]
    for _ in range(questions):
        kind = QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS)))]  # the same draw as rng.choice(QUESTION_KINDS)
        examples.append(vqa_example(*make_vqa(rng, kind, IMAGE_SIZE)))
    return examples


def task_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over each task's target tokens, summed over the tasks present."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        use_cache=False,
    ).logits[:, :-1]  # (B, T-1, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counted = (targets != -100).float()
    total = logits.new_zeros(())
    for rows in (~batch["vqa"], batch["vqa"]):
        if rows.any():
            total = total + (token_loss[rows] * counted[rows]).sum() / counted[rows].sum()
    return total


class PatchShapeLoss:
    """An auxiliary loss on the image tokens the language model reads: a linear probe of the
    projector's output predicts the shape under each token (`patch_shapes`), cross-entropy over the
    tokens. Shape is a pattern over several patches that the language model learns slowly to read
    from the tokens (the card's one-object table); this loss makes each token carry the shape of its
    object. The probe is dropped after training: the saved model is a plain LLaVA, and its attention
    heads get no target (where they look is learned from the captions and answers alone)."""

    def __init__(self, model: Any) -> None:
        self.probe = torch.nn.Linear(model.config.text_config.hidden_size, len(SHAPES) + 1)
        self._tokens: torch.Tensor | None = None
        self._hook = model.model.multi_modal_projector.register_forward_hook(self._keep)

    def _keep(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        self._tokens = output  # (images, tokens, hidden)

    def __call__(self, shapes: torch.Tensor) -> torch.Tensor:
        """The loss of the last forward's image tokens against `shapes` (images, tokens)."""
        assert self._tokens is not None, "no forward pass since the last loss"
        tokens, self._tokens = self._tokens, None
        return F.cross_entropy(self.probe(tokens).reshape(-1, self.probe.out_features), shapes.reshape(-1))

    def remove(self) -> None:
        self._hook.remove()


def train(model: Any, processor: Any, config: TrainConfig) -> list[float]:
    """Train in place; returns the task loss of every step (without the auxiliary shape loss)."""
    prefixes = Prefixes(processor)
    shape_loss = PatchShapeLoss(model) if config.patch_shape_weight > 0 else None
    parameters = list(model.parameters()) + (list(shape_loss.probe.parameters()) if shape_loss else [])
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    rng = np.random.default_rng(config.data_seed)
    losses: list[float] = []
    shape_losses: list[float] = []
    model.train()
    progress = tqdm(range(config.steps), desc="training", unit="step", mininterval=30)
    try:
        for step in progress:
            examples = training_examples(rng, config)
            batch = make_batch(processor, prefixes, examples)
            loss = task_loss(model, batch)
            total = loss
            if shape_loss is not None:
                shapes = shape_loss(torch.from_numpy(np.stack([example.shapes for example in examples])))
                total = loss + config.patch_shape_weight * shapes
                shape_losses.append(shapes.item())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if step % config.log_every == 0 or step == config.steps - 1:
                progress.set_postfix(loss=f"{np.mean(losses[-config.log_every :]):.3f}")
                extra = f" shape loss {np.mean(shape_losses[-config.log_every :]):.4f}" if shape_losses else ""
                logger.info("step %d loss %.4f%s", step, np.mean(losses[-config.log_every :]), extra)
    finally:
        if shape_loss is not None:
            shape_loss.remove()
    model.eval()
    return losses


def save_trained(out: Path, model: Any, processor: Any, report: dict[str, Any]) -> None:
    """Weights, processor and the training half of eval.json, written before any evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / "eval.json", report)


def start_from(model: Any, folder: Path) -> dict[str, Any]:
    """Load the weights of the trained demo model in `folder` into `model` (built with the same architecture);
    its training report, to be named in the new card."""
    from transformers import LlavaForConditionalGeneration

    if not (folder / "model.safetensors").is_file() or not (folder / "eval.json").is_file():
        raise InputError(f"--init {folder}: not a trained demo model folder (model.safetensors, eval.json)")
    trained = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).state_dict()
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if {name: tuple(value.shape) for name, value in trained.items()} != shapes:
        raise InputError(f"--init {folder}: its architecture is not the one asked for (vision width/layers, head size)")
    model.load_state_dict(trained)
    parent = json.loads((folder / "eval.json").read_text())
    return {key: parent[key] for key in ("command", "train_seconds", "final_loss", "config")}
