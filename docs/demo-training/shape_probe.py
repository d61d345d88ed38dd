"""Is an object's shape in the image tokens the demo model's language model reads?

Linear probes of the shape (6 classes) of one-object scenes from a window of W x W image tokens
around the object (the CLIP embeddings before its layer, and the projector's output that the
language model reads), beside the same probe on the raw patches' pixels. Usage (from the
repository root):

    python docs/demo-training/shape_probe.py untrained hi_core/assets/demo-model [MODEL_DIR ...]

`untrained`: the demo architecture freshly initialized (seed 0). Prints one accuracy per model and
place (held-out scenes; chance 1/6).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from hi_core.demo.build import IMAGE_SIZE, PATCH_SIZE, build_model
from hi_core.demo.train import pixel_values
from hi_core.model.loading import LoadConfig, load_model
from hi_core.data.synth import SHAPES, make_scene

GRID = IMAGE_SIZE // PATCH_SIZE


def windows(tokens: torch.Tensor, scenes: list, side: int) -> torch.Tensor:
    """(images, GRID * GRID, D) -> (images, side * side * D): the tokens around each object's centre."""
    grid = F.pad(tokens.reshape(len(scenes), GRID, GRID, -1).permute(0, 3, 1, 2), [side // 2] * 4).permute(0, 2, 3, 1)
    out = []
    for image, scene in enumerate(scenes):
        ys, xs = np.nonzero(scene.masks[0])
        row, column = int(ys.mean() // PATCH_SIZE), int(xs.mean() // PATCH_SIZE)
        out.append(grid[image, row : row + side, column : column + side].reshape(-1))
    return torch.stack(out)


@torch.no_grad()
def features(model, processor, scenes: list, place: str, side: int) -> torch.Tensor:
    rows = []
    for start in range(0, len(scenes), 100):
        chunk = scenes[start : start + 100]
        pixels = pixel_values(processor, np.stack([scene.image for scene in chunk]))
        if place == "pixels":
            tokens = pixels.reshape(len(chunk), 3, GRID, PATCH_SIZE, GRID, PATCH_SIZE).permute(0, 2, 4, 1, 3, 5)
            tokens = tokens.reshape(len(chunk), GRID * GRID, -1)
        else:
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            tokens = hidden[0][:, 1:] if place == "embeddings" else model.model.multi_modal_projector(hidden[-1][:, 1:])
        rows.append(windows(tokens, chunk, side))
    return torch.cat(rows)


def probe(x: torch.Tensor, y: torch.Tensor, train: int) -> float:
    torch.manual_seed(0)
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    linear = torch.nn.Linear(x.shape[1], len(SHAPES))
    optimizer = torch.optim.Adam(linear.parameters(), 3e-3, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(linear(x[:train]), y[:train]).backward()
        optimizer.step()
    return float((linear(x[train:]).argmax(1) == y[train:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="'untrained' or a demo model folder")
    parser.add_argument("--scenes", type=int, default=5000, help="one-object scenes (4/5 to fit, 1/5 held out)")
    parser.add_argument("--window", type=int, default=5, help="tokens per side around the object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    scenes = [make_scene(rng, IMAGE_SIZE, max_objects=1) for _ in range(args.scenes)]
    y = torch.tensor([SHAPES.index(scene.objects[0].shape) for scene in scenes])
    train = args.scenes * 4 // 5
    _, processor = build_model(0)
    print(f"pixels: {probe(features(None, processor, scenes, 'pixels', args.window), y, train):.3f}")
    for name in args.models:
        if name == "untrained":
            model, processor = build_model(0)
        else:
            loaded = load_model(LoadConfig(name, device="cpu"))
            model, processor = loaded.model, loaded.processor
        for place in ("embeddings", "projected"):
            print(f"{name} {place}: {probe(features(model, processor, scenes, place, args.window), y, train):.3f}")


if __name__ == "__main__":
    main()
