"""Train, evaluate and save the demo model: `python -m hi_core.demo train --out DIR`.

Training streams fresh synthetic scenes (seeded; batch b of step s is a pure function of the data
seed) for two tasks in every batch: captioning (the default prompt, loss on the description
tokens) and closed-form VQA (the question as the prompt, loss on the answer tokens); the step's
loss is the mean over each task's target tokens, summed over the two tasks, so the one-word answers
weigh as much as the long descriptions. Batches are built by hand (normalize the 96-px images,
prefix + target + </s>), which equals the processor's output and keeps data generation cheap.

Evaluation on held-out scenes (other seeds): greedy captions -> BLEU-4, ROUGE-L, CIDEr,
exact-caption and object-name accuracy; greedy answers -> accuracy (normalized exact match) per
question kind; Head Impact of every head on the key objects (the key phrase's rows) and on the
asked objects (the answer's rows), beside the same architecture untrained. Results go into the
folder's model card.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
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
from ..data.synth import QUESTION_KINDS, SHAPES, Question, Scene, make_scene, make_vqa, position_phrase
from ..families.base import chat_prompt
from ..families.llava import LlavaAdapter
from ..figures.plots import overlay_grid
from ..method.analysis import AnalysisConfig, analyze_image
from ..model.captioning import generate_captions, generate_description
from ..model.inputs import DEFAULT_PROMPT
from ..model.loading import LoadedModel
from ..model.metrics import answer_correct, caption_metrics
from .build import (
    IMAGE_SIZE,
    PATCH_SIZE,
    TEXT_HEAD_DIM,
    TEXT_HEADS,
    TEXT_LAYERS,
    VISION_HIDDEN,
    VISION_LAYERS,
    build_model,
)

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
    shapes: np.ndarray | None = None  # (grid * grid,) int


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
        examples.append(vqa_example(*make_vqa(rng, str(rng.choice(QUESTION_KINDS)), IMAGE_SIZE)))
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


def held_out_scenes(config: TrainConfig) -> list[Scene]:
    rng = np.random.default_rng(config.eval_seed)
    return [make_scene(rng, IMAGE_SIZE) for _ in range(config.eval_scenes)]


def held_out_questions(config: TrainConfig) -> list[tuple[Scene, Question]]:
    """`eval_questions` questions of every kind on fresh scenes, the kinds interleaved (so any
    first n hold every kind)."""
    rng = np.random.default_rng(config.eval_seed + 1)
    return [make_vqa(rng, kind, IMAGE_SIZE) for _ in range(config.eval_questions) for kind in QUESTION_KINDS]


def caption_report(loaded: LoadedModel, scenes: list[Scene]) -> dict[str, Any]:
    """Greedy captions of held-out scenes against their references."""
    captions = generate_captions(loaded, [Image.fromarray(s.image) for s in scenes], DEFAULT_PROMPT, max_new_tokens=48)
    generated = {str(i): caption for i, caption in enumerate(captions)}
    references = {str(i): [s.text] for i, s in enumerate(scenes)}
    named = [obj.phrase in generated[str(i)] for i, s in enumerate(scenes) for obj in s.objects]
    report: dict[str, Any] = caption_metrics(references, generated)
    report["exact_captions"] = float(np.mean([generated[str(i)] == s.text for i, s in enumerate(scenes)]))
    report["object_names"] = float(np.mean(named))
    report["examples"] = [{"reference": s.text, "generated": generated[str(i)]} for i, s in enumerate(scenes[:5])]
    return report


#: The attributes `single_object_report` checks.
ATTRIBUTES = ("shape", "colour", "size", "position")
#: "at the <position>" in a description; the longest phrases first, so "top left" is not read as "top".
_POSITION = re.compile(
    r"\bat the ({})\b".format(
        "|".join(
            sorted(
                {position_phrase(row, column) for row in range(3) for column in range(3)},
                key=lambda phrase: (-len(phrase), phrase),
            )
        )
    )
)


def single_object_report(loaded: LoadedModel, scenes: list[Scene]) -> dict[str, Any]:
    """What the model sees of one object alone: the share of one-object scenes whose greedy
    description states the object's shape, colour, size and position (the words as a whole), and
    all four at once. Separates perception from the binding of attributes in several-object scenes."""
    captions = generate_captions(loaded, [Image.fromarray(s.image) for s in scenes], DEFAULT_PROMPT, max_new_tokens=24)
    right: dict[str, list[bool]] = {attribute: [] for attribute in ATTRIBUTES}
    for scene, caption in zip(scenes, captions):
        obj, words = scene.objects[0], caption.split()
        right["shape"].append(obj.shape in words)
        right["colour"].append(obj.colour in words)
        right["size"].append(obj.size in words)
        right["position"].append(position_phrase(obj.row, obj.column) in _POSITION.findall(caption))
    report = {attribute: float(np.mean(values)) for attribute, values in right.items()}
    report["all"] = float(np.mean([all(values) for values in zip(*right.values())]))
    report["scenes"] = len(scenes)
    return report


def vqa_report(loaded: LoadedModel, pairs: list[tuple[Scene, Question]]) -> dict[str, Any]:
    """Greedy answers to held-out questions: accuracy (normalized exact match) per kind and overall."""
    rows = []
    for scene, question in tqdm(pairs, desc="answers", mininterval=30):
        try:
            answer = generate_description(loaded, Image.fromarray(scene.image), question.text, max_new_tokens=4)
        except InputError:  # an empty answer
            answer = ""
        rows.append((question, answer, answer_correct(question.answer, answer)))
    by_kind = {kind: float(np.mean([right for q, _, right in rows if q.kind == kind])) for kind in QUESTION_KINDS}
    return {
        "accuracy": float(np.mean([right for _, _, right in rows])),
        "by_kind": by_kind,
        "questions_per_kind": {kind: sum(q.kind == kind for q, _, _ in rows) for kind in QUESTION_KINDS},
        "examples": [{"question": q.text, "answer": q.answer, "generated": a} for q, a, _ in rows[:8]],
    }


def hi_profile(loaded: LoadedModel, items: list[tuple[np.ndarray, np.ndarray, str, AnalysisConfig]]) -> dict[str, Any]:
    """Head Impact of every head over (image, mask, text, config) items, averaged. `best_hi` is the
    best head's mean on the items it was chosen on; `held_out_hi` chooses the head on the first
    half of the items and scores it on the second half (no selection bias: the max over 48 noisy
    means is optimistic, most of all for the untrained model)."""
    his, chances, analyses = [], [], []
    for image, mask, text, config in tqdm(items, desc="head impact", mininterval=30):
        analysis = analyze_image(loaded, Image.fromarray(image), mask, text, config)
        his.append(analysis.hi)
        chances.append(analysis.chance)
        analyses.append(analysis)
    mean_hi = np.mean(his, axis=0)  # (layers, heads)
    best = np.unravel_index(int(np.argmax(mean_hi)), mean_hi.shape)
    half = len(his) // 2
    chosen = np.unravel_index(int(np.argmax(np.mean(his[:half], axis=0))), mean_hi.shape)
    return {
        "mean_hi": mean_hi.round(4).tolist(),
        "best_head": [int(best[0]), int(best[1])],
        "best_hi": float(mean_hi[best]),
        "held_out_head": [int(chosen[0]), int(chosen[1])],
        "held_out_hi": float(np.mean(his[half:], axis=0)[chosen]),
        "chance": float(np.mean(chances)),
        "heads_sorted": sorted(mean_hi.reshape(-1).round(4).tolist(), reverse=True),
        "layer_max": mean_hi.max(axis=1).round(4).tolist(),
        "_analyses": analyses,
    }


def caption_items(scenes: list[Scene]) -> list[tuple[np.ndarray, np.ndarray, str, AnalysisConfig]]:
    """The key object of each scene, scored on the rows that produce its phrase in the description."""
    return [(s.image, s.masks[s.key], s.text, AnalysisConfig(key_phrase=s.key_phrase)) for s in scenes]


def vqa_items(pairs: list[tuple[Scene, Question]]) -> list[tuple[np.ndarray, np.ndarray, str, AnalysisConfig]]:
    """The asked object of each question, scored on the rows that produce the reference answer."""
    return [(s.image, s.masks[q.target], q.answer, AnalysisConfig(prompt=q.text)) for s, q in pairs]


def _loaded(model: Any, processor: Any, name: str) -> LoadedModel:
    return LoadedModel(
        name=name, model=model.eval(), processor=processor, adapter=LlavaAdapter(), device=torch.device("cpu")
    )


def _figure(scenes: list[Scene], profile: dict[str, Any], path: Path) -> None:
    layer, head = profile["best_head"]
    analyses = profile["_analyses"]
    shown = list(range(min(8, len(analyses))))
    figure = overlay_grid(
        [scenes[i].image for i in shown],
        [analyses[i].maps[layer, head] for i in shown],
        [scenes[i].masks[scenes[i].key] for i in shown],
        [f"{scenes[i].key_phrase}: HI {analyses[i].hi[layer, head]:.2f}" for i in shown],
        suptitle=f"demo model, layer {layer} head {head}: attention while producing the key phrase",
    )
    figure.savefig(path, dpi=110)


def _hi_row(name: str, profile: dict[str, Any]) -> str:
    layer, head = profile["best_head"]
    ratio = profile["best_hi"] / profile["chance"]
    top = ", ".join(f"{v:.2f}" for v in profile["heads_sorted"][:5])
    return (
        f"| {name} | layer {layer}, head {head} | {profile['best_hi']:.3f} | {profile['held_out_hi']:.3f} | "
        f"{profile['chance']:.3f} | {ratio:.1f}x | {top} |"
    )


def _target(profile: dict[str, Any]) -> str:
    """The card's target, on unseen scenes as it says: the held-out HI of the head chosen on the other half."""
    met = profile["held_out_hi"] >= 0.5 and profile["held_out_hi"] >= 3 * profile["chance"]
    return "met" if met else "**not met**"


def _shape_loss_line(config: TrainConfig) -> str:
    if not config.patch_shape_weight:
        return ""
    return (
        f", plus {config.patch_shape_weight} x the image tokens' shape loss (`PatchShapeLoss`: a linear probe of the\n"
        "  projector's output predicts the shape under each image token; the probe is dropped after training,\n"
        "  and no attention head is given a target)"
    )


def model_card(report: dict[str, Any]) -> str:
    config = TrainConfig(**report["config"])
    captions, vqa, single = report["captions"], report["vqa"], report["single_object"]
    kinds = " | ".join(QUESTION_KINDS)
    return f"""# HI Explorer demo model

A tiny LLaVA (`LlavaForConditionalGeneration`) trained from scratch by `python -m hi_core.demo train`
to describe synthetic scenes and to answer closed-form questions about them (`hi_core/data/synth.py`),
so that its attention heads really look at the objects they name or are asked about. It exists so
the app and the CLI work offline, on CPU, with `--model demo`.

## Architecture ({report["parameters"]:,} parameters, float32 safetensors)
- Vision: CLIP, {config.vision_layers} layer{"s" if config.vision_layers > 1 else ""}, hidden {config.vision_hidden}, \
4 heads, 96x96 images, 8-px patches -> a 12x12 grid of image tokens.
- Projector: LLaVA's 2-layer MLP.
- Language model: Llama, {TEXT_LAYERS} layers, hidden 128, {TEXT_HEADS} heads (head size {config.text_head_dim}), \
tied embeddings;
  word-level tokenizer of the scenes' words.
- Prompt: the chat template `USER: <image>\n{{prompt}} ASSISTANT:`; default prompt "Describe the image.",
  or a question ("What colour is the star?").

## Training
- Command: `{report["command"]}`{_init_line(report)}
- Data: {config.steps * config.batch_size:,} generated examples \
({config.steps} steps x batch {config.batch_size}, data seed {config.data_seed}),
  {1 - config.vqa_share:.0%} descriptions and {config.vqa_share:.0%} questions per batch; \
scenes of 1-3 objects (6 shapes, 8 colours,
  2 sizes, 3x3 positions) on textured backgrounds. Loss: mean over the description tokens plus mean over
  the answer tokens (each with its </s>){_shape_loss_line(config)}.
- AdamW lr {config.lr}, {config.warmup} warm-up steps then cosine decay, \
weight decay {config.weight_decay}, init seed {config.seed}.
- Final loss (mean of the last 100 steps, the two tasks' sum): {report["final_loss"]:.4f};
  {report["train_seconds"] / 60:.1f} minutes on {report["threads"]} CPU thread(s) \
(a 2-core machine shared with other jobs).

## Held-out descriptions ({config.eval_scenes} scenes, seed {config.eval_seed}, greedy)
| BLEU-4 | ROUGE-L | CIDEr | exact captions | object names |
|---|---|---|---|---|
| {captions["bleu4"]:.3f} | {captions["rouge_l"]:.3f} | {captions["cider"]:.3f} | \
{captions["exact_captions"]:.3f} | {captions["object_names"]:.3f} |

Object names: the share of objects whose "size colour shape" phrase appears in the generated caption.

One object alone ({single["scenes"]} held-out scenes of one object, seed {config.eval_seed + 2}): the share of
descriptions that state its attribute right, which separates what the model sees from how it binds
attributes in several-object scenes.

| shape | colour | size | position | all four |
|---|---|---|---|---|
| {" | ".join(f"{single[k]:.3f}" for k in (*ATTRIBUTES, "all"))} |

## Held-out questions ({config.eval_questions} per kind, seed {config.eval_seed + 1}, greedy; \
accuracy = normalized exact match)
| all | {kinds} |
|---|{"---|" * len(QUESTION_KINDS)}
| {vqa["accuracy"]:.3f} | {" | ".join(f"{vqa['by_kind'][k]:.3f}" for k in QUESTION_KINDS)} |

Kinds: colour ("What colour is the star?" -> "red"), shape ("What shape is at the top left?" ->
"circle"), position ("Where is the red star?" -> "top left"), exists ("Is there a blue star?" ->
"yes"/"no"; the scene has one star and the answer says whether it is blue). Normalization: lower
case, punctuation and articles dropped.

## Head Impact profile ({config.hi_scenes} held-out scenes per task; producing rows, `area` binarization)
Descriptions: the rows that produce the key object's phrase, against its mask. Questions: the rows
that produce the reference answer, against the mask of the object asked about.

| | best head | best HI | held-out best HI | chance | best / chance | top 5 heads' HI |
|---|---|---|---|---|---|---|
{_hi_row("descriptions, trained", report["hi_trained"])}
{_hi_row(f"descriptions, untrained (same architecture, seed {config.seed})", report["hi_untrained"])}
{_hi_row("questions, trained", report["hi_vqa_trained"])}
{_hi_row("questions, untrained", report["hi_vqa_untrained"])}

Held-out best HI: the head chosen on the first half of the scenes, scored on the other half.
The target (best head HI >= 0.5 and >= 3x chance on unseen scenes) is {_target(report["hi_trained"])} on
descriptions and {_target(report["hi_vqa_trained"])} on answers.

Best HI per layer (descriptions, trained): `{report["hi_trained"]["layer_max"]}`
Best HI per layer (questions, trained): `{report["hi_vqa_trained"]["layer_max"]}`

`top_head.png` shows the best description head's map over held-out scenes, with the key object's
outline. `eval.json` holds every number above and every head's mean HI.
"""


def save_trained(out: Path, model: Any, processor: Any, report: dict[str, Any]) -> None:
    """Weights, processor and the training half of eval.json, written before any evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / "eval.json", report)


def evaluate(out: Path) -> dict[str, Any]:
    """Evaluate the model saved in `out` (and the same architecture untrained) on held-out scenes
    and questions; complete eval.json, write the model card and the figure."""
    from ..model.loading import LoadConfig, load_model

    report = json.loads((out / "eval.json").read_text())
    config = TrainConfig(**report["config"])
    loaded = load_model(LoadConfig(str(out), device="cpu"))
    untrained_model, processor = build_model(
        config.seed, config.vision_hidden, config.vision_layers, config.text_head_dim
    )
    untrained = _loaded(untrained_model, processor, "untrained")
    scenes, pairs = held_out_scenes(config), held_out_questions(config)
    report["captions"] = caption_report(loaded, scenes)
    single = np.random.default_rng(config.eval_seed + 2)
    report["single_object"] = single_object_report(
        loaded, [make_scene(single, IMAGE_SIZE, max_objects=1) for _ in range(config.eval_single)]
    )
    report["vqa"] = vqa_report(loaded, pairs)
    profiles = {  # the description profiles keep v1's keys (bench/finetune.py reads hi_trained)
        "hi_trained": hi_profile(loaded, caption_items(scenes[: config.hi_scenes])),
        "hi_untrained": hi_profile(untrained, caption_items(scenes[: config.hi_scenes])),
        "hi_vqa_trained": hi_profile(loaded, vqa_items(pairs[: config.hi_scenes])),
        "hi_vqa_untrained": hi_profile(untrained, vqa_items(pairs[: config.hi_scenes])),
    }
    report |= {name: {k: v for k, v in profile.items() if not k.startswith("_")} for name, profile in profiles.items()}
    _figure(scenes, profiles["hi_trained"], out / "top_head.png")
    write_json(out / "eval.json", report)
    (out / "README.md").write_text(model_card(report))
    return report


def _init_line(report: dict[str, Any]) -> str:
    parent = report.get("init_from")
    if not parent:
        return ""
    return (
        f"\n- Started from the weights of a model trained by `{parent['command']}` ({parent['train_seconds'] / 60:.1f} "
        f"minutes, final loss {parent['final_loss']:.4f}); this command continued it"
    )


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


def run(
    out: Path, config: TrainConfig, command: str = "python -m hi_core.demo train", threads: int | None = None
) -> dict[str, Any]:
    """Train (from scratch, or on from `config.init`), save weights + processor into `out`, then evaluate
    (`evaluate`) and write the card."""
    model, processor = build_model(config.seed, config.vision_hidden, config.vision_layers, config.text_head_dim)
    init_from = start_from(model, Path(config.init)) if config.init else None
    parameters = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    losses = train(model, processor, config)
    seconds = time.perf_counter() - started
    save_trained(
        out,
        model,
        processor,
        {
            "config": asdict(config),
            "init_from": init_from,
            "command": command,
            "threads": threads or torch.get_num_threads(),
            "parameters": parameters,
            "train_seconds": seconds,
            "final_loss": float(np.mean(losses[-100:])),
            "loss_every_50": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
        },
    )
    return evaluate(out)
