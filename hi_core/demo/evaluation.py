"""Evaluate the trained demo model and write its model card (`evaluate`); `run` is the whole
`python -m hi_core.demo train`: train (`train.py`), save, evaluate.

Evaluation on held-out scenes (other seeds): greedy captions -> BLEU-4, ROUGE-L, CIDEr,
exact-caption and object-name accuracy; greedy answers -> accuracy (normalized exact match) per
question kind; Head Impact of every head on the key objects (the key phrase's rows) and on the
asked objects (the answer's rows), beside the same architecture untrained. Results go into the
folder's model card.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..base.errors import InputError
from ..base.outputs import write_json
from ..data.synth import QUESTION_KINDS, Question, Scene, make_scene, make_vqa, position_phrase
from ..families.llava import LlavaAdapter
from ..figures.plots import overlay_grid
from ..method.analysis import AnalysisConfig, analyze_image
from ..model.captioning import generate_captions, generate_description
from ..model.inputs import DEFAULT_PROMPT
from ..model.loading import LoadedModel
from ..model.metrics import answer_correct, caption_metrics
from .build import IMAGE_SIZE, TEXT_HEADS, TEXT_LAYERS, build_model
from .train import TrainConfig, save_trained, start_from, train


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
