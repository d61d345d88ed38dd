"""Train, evaluate and save the demo model: `python -m hi_core.demo train --out DIR`.

Training streams fresh synthetic scenes (seeded; batch b of step s is a pure function of the data
seed), with the loss on the description tokens only. Batches are built by hand (normalize the
96-px images, prefix + caption + </s>), which equals the processor's output and keeps data
generation cheap. Evaluation on held-out scenes (another seed): greedy captions -> BLEU-4,
ROUGE-L, CIDEr, exact-caption and object-name accuracy; Head Impact of every head on the key
objects, beside the same architecture untrained. Results go into the folder's model card.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..analysis import AnalysisConfig, analyze_image
from ..captioning import generate_description
from ..families.llava import LlavaAdapter
from ..inputs import DEFAULT_PROMPT
from ..loading import LoadedModel
from ..metrics import caption_metrics
from ..outputs import write_json
from ..plots import overlay_grid
from ..synth import Scene, make_scene
from .build import IMAGE_SIZE, build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training and evaluation settings; the defaults made the shipped model."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    seed: int = 0  # weight initialization
    data_seed: int = 0  # training scenes
    eval_seed: int = 10_000  # held-out scenes
    eval_scenes: int = 200
    hi_scenes: int = 100  # held-out scenes scored for the HI profile
    log_every: int = 50


def prefix_ids(processor: Any, prompt: str = DEFAULT_PROMPT) -> list[int]:
    """Token ids of the prefix (same for every 96-px image): chat template with the image expanded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    return processor(text=text, images=[blank], return_tensors="pt")["input_ids"][0].tolist()


def pixel_values(processor: Any, images: np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) normalized like the CLIP processor, from (B, H, W, 3) uint8 of the model's size."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - mean) / std


def make_batch(processor: Any, prefix: list[int], scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels (loss on description + </s> only) / pixel_values."""
    tokenizer = processor.tokenizer
    captions = [tokenizer(scene.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for scene in scenes]
    length = len(prefix) + max(len(c) for c in captions)
    input_ids = torch.full((len(scenes), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(scenes), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(scenes), length), dtype=torch.long)
    for row, caption in enumerate(captions):
        sequence = prefix + caption
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, len(prefix) : len(sequence)] = torch.tensor(caption)
        attention_mask[row, : len(sequence)] = 1
    images = np.stack([scene.image for scene in scenes])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values(processor, images)}


def train(model: Any, processor: Any, config: TrainConfig) -> list[float]:
    """Train in place; returns the loss of every step."""
    prefix = prefix_ids(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    rng = np.random.default_rng(config.data_seed)
    losses: list[float] = []
    model.train()
    progress = tqdm(range(config.steps), desc="training", unit="step")
    for step in progress:
        batch = make_batch(processor, prefix, [make_scene(rng, IMAGE_SIZE) for _ in range(config.batch_size)])
        loss = model(**batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % config.log_every == 0 or step == config.steps - 1:
            progress.set_postfix(loss=f"{np.mean(losses[-config.log_every:]):.3f}")
    model.eval()
    return losses


def held_out_scenes(config: TrainConfig) -> list[Scene]:
    rng = np.random.default_rng(config.eval_seed)
    return [make_scene(rng, IMAGE_SIZE) for _ in range(config.eval_scenes)]


def caption_report(loaded: LoadedModel, scenes: list[Scene]) -> dict[str, Any]:
    """Greedy captions of held-out scenes against their references."""
    generated = {str(i): generate_description(loaded, Image.fromarray(s.image), max_new_tokens=40) for i, s in enumerate(tqdm(scenes, desc="captions"))}
    references = {str(i): [s.text] for i, s in enumerate(scenes)}
    named = [obj.phrase in generated[str(i)] for i, s in enumerate(scenes) for obj in s.objects]
    report: dict[str, Any] = caption_metrics(references, generated)
    report["exact_captions"] = float(np.mean([generated[str(i)] == s.text for i, s in enumerate(scenes)]))
    report["object_names"] = float(np.mean(named))
    report["examples"] = [{"reference": s.text, "generated": generated[str(i)]} for i, s in enumerate(scenes[:5])]
    return report


def hi_profile(loaded: LoadedModel, scenes: list[Scene]) -> dict[str, Any]:
    """Head Impact of every head on each scene's key object (its phrase's tokens), averaged."""
    his, chances, analyses = [], [], []
    for scene in tqdm(scenes, desc="head impact"):
        analysis = analyze_image(
            loaded, Image.fromarray(scene.image), scene.masks[scene.key], scene.text, AnalysisConfig(key_phrase=scene.key_phrase)
        )
        his.append(analysis.hi)
        chances.append(analysis.chance)
        analyses.append(analysis)
    mean_hi = np.mean(his, axis=0)  # (layers, heads)
    best = np.unravel_index(int(np.argmax(mean_hi)), mean_hi.shape)
    return {
        "mean_hi": mean_hi.round(4).tolist(),
        "best_head": [int(best[0]), int(best[1])],
        "best_hi": float(mean_hi[best]),
        "chance": float(np.mean(chances)),
        "heads_sorted": sorted(mean_hi.reshape(-1).round(4).tolist(), reverse=True),
        "_analyses": analyses,
    }


def _loaded(model: Any, processor: Any, name: str) -> LoadedModel:
    return LoadedModel(name=name, model=model.eval(), processor=processor, adapter=LlavaAdapter(), device=torch.device("cpu"))


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


def model_card(config: TrainConfig, losses: list[float], seconds: float, parameters: int, captions: dict, trained: dict, untrained: dict) -> str:
    layer, head = trained["best_head"]
    return f"""# HI Explorer demo model

A tiny LLaVA (`LlavaForConditionalGeneration`) trained from scratch by `python -m hi_core.demo train`
to describe synthetic scenes (`hi_core/synth.py`), so that its attention heads really look at the
objects they name. It exists so the app and the CLI work offline, on CPU, with `--model demo`.

## Architecture ({parameters:,} parameters, float32 safetensors)
- Vision: CLIP, 2 layers, hidden 64, 4 heads, 96x96 images, 8-px patches -> a 12x12 grid of image tokens.
- Projector: LLaVA's 2-layer MLP.
- Language model: Llama, 3 layers, hidden 128, 4 heads, tied embeddings; word-level tokenizer of the scenes' words.
- Prompt: the chat template `USER: <image>\\n{{prompt}} ASSISTANT:`, default prompt "Describe the image.".

## Training
- Data: {config.steps * config.batch_size:,} generated scenes (data seed {config.data_seed}, {config.steps} steps x batch {config.batch_size}), 1-3 objects
  (6 shapes, 8 colours, 2 sizes, 3x3 positions) on textured backgrounds; loss on the description tokens only.
- AdamW lr {config.lr}, {config.warmup} warm-up steps then cosine decay, weight decay {config.weight_decay}, init seed {config.seed}.
- Final loss (mean of the last 100 steps): {np.mean(losses[-100:]):.4f}; {seconds / 60:.1f} minutes on CPU.

## Held-out captions ({config.eval_scenes} scenes, seed {config.eval_seed}, greedy)
| BLEU-4 | ROUGE-L | CIDEr | exact captions | object names |
|---|---|---|---|---|
| {captions['bleu4']:.3f} | {captions['rouge_l']:.3f} | {captions['cider']:.3f} | {captions['exact_captions']:.3f} | {captions['object_names']:.3f} |

Object names: the share of objects whose "size colour shape" phrase appears in the generated caption.

## Head Impact profile ({config.hi_scenes} held-out scenes; producing rows of the key phrase, `area` binarization)
| | best head | best HI | chance | top 5 heads' HI |
|---|---|---|---|---|
| trained | layer {layer}, head {head} | {trained['best_hi']:.3f} | {trained['chance']:.3f} | {', '.join(f'{v:.2f}' for v in trained['heads_sorted'][:5])} |
| untrained (same architecture, seed {config.seed}) | layer {untrained['best_head'][0]}, head {untrained['best_head'][1]} | {untrained['best_hi']:.3f} | {untrained['chance']:.3f} | {', '.join(f'{v:.2f}' for v in untrained['heads_sorted'][:5])} |

All heads' mean HI (trained, layers x heads): `{trained['mean_hi']}`

`top_head.png` shows the best head's map over held-out scenes, with the key object's outline.
`eval.json` holds every number above.
"""


def run(out: Path, config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate against the untrained model, save weights + processor + card into `out`."""
    model, processor = build_model(config.seed)
    untrained_model, _ = build_model(config.seed)
    parameters = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    losses = train(model, processor, config)
    seconds = time.perf_counter() - started
    scenes = held_out_scenes(config)
    loaded = _loaded(model, processor, "demo")
    captions = caption_report(loaded, scenes)
    trained = hi_profile(loaded, scenes[: config.hi_scenes])
    untrained = hi_profile(_loaded(untrained_model, processor, "untrained"), scenes[: config.hi_scenes])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _figure(scenes, trained, out / "top_head.png")
    report = {
        "config": asdict(config),
        "parameters": parameters,
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses[-100:])),
        "loss_every_50": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
        "captions": captions,
        "hi_trained": {k: v for k, v in trained.items() if not k.startswith("_")},
        "hi_untrained": {k: v for k, v in untrained.items() if not k.startswith("_")},
    }
    write_json(out / "eval.json", report)
    (out / "README.md").write_text(model_card(config, losses, seconds, parameters, captions, trained, untrained))
    return report
