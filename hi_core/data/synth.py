"""Synthetic scenes with exact object masks, described or questioned: the demo model's training data.

Each scene has one to `max_objects` coloured shapes of two sizes on a textured background; later
objects may occlude earlier ones, and each object's mask is its *visible* pixels. The description
names every object with its size, colour, shape and position on a 3 x 3 layout, e.g.
"a big red circle at the top left and a small blue star at the center". One object is the key
object (its mask and its phrase, e.g. "big red circle"). Scenes are a pure function of the seed.

Objects are listed in drawing order by default (random, as the demo model learned them), or in
reading order (top to bottom, then left to right): a caption style the demo model never saw, which
makes a small fine-tuning task for it.

Closed-form VQA (`make_question`, `make_vqa`): a templated question about one object of a scene,
with a one-word or fixed-form answer and that object's mask (the object the model must look at to
answer). Four kinds the demo model is trained on, in `QUESTION_KINDS`:

- colour: "What colour is the star?" -> "red" (the scene has exactly one star);
- shape: "What shape is at the top left?" -> "circle" (one object per cell, always unique);
- position: "Where is the red star?" -> "top left" (exactly one red star);
- exists: "Is there a blue star?" -> "yes" / "no". The scene has exactly one star, and the answer
  says whether it is blue; a "no" asks the star's shape with another colour. So a "no" still has
  an object it is about, the star whose colour was checked, and its mask is that star's: every
  VQA record has a non-empty mask and is scored like the others. Questions about a combination
  absent altogether (no star at all) are not asked.

One more kind, in `NEW_KINDS`, asks in words the demo model knows a question it was never trained
on, a task to fine-tune it on (`dataset synth --task vqa --kinds colour_at`):

- colour_at: "What colour is at the top left?" -> "red" (one object per cell, always unique);
- size: "Is the star big?" / "Is the star small?" -> "yes" / "no" (the scene has exactly one star;
  either size asked with the same chance).

Questions are only asked about visible objects, and only when the object they name is the only
one matching the question in the scene (visible or hidden), so every answer is right for the
image as drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

from ..base.errors import check_choice, check_number

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "cyan": (40, 210, 220),
    "magenta": (210, 50, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.11, "big": 0.19}  # radius as a share of the image side
MIN_SIZE, MAX_SIZE = 16, 4096  # image side in pixels
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")

#: In which order a description lists the objects: as drawn (random), or top-to-bottom, left-to-right.
Order = Literal["drawing", "reading"]
#: The closed-form question kinds (module docstring).
QuestionKind = Literal["colour", "shape", "position", "exists", "colour_at", "size"]
#: The kinds the demo model is trained on (and `dataset synth --task vqa` writes by default).
QUESTION_KINDS: tuple[QuestionKind, ...] = ("colour", "shape", "position", "exists")
#: Kinds the demo model never saw in training: new tasks to fine-tune it on.
NEW_KINDS: tuple[str, ...] = tuple(kind for kind in get_args(QuestionKind) if kind not in QUESTION_KINDS)
QUESTION_WORDS = ("what", "colour", "is", "shape", "where", "there", "?")
ANSWER_WORDS = ("yes", "no")


def position_phrase(row: int, column: int) -> str:
    """Words for a cell of the 3 x 3 layout: "top left", "top", ..., "center", ..., "bottom right"."""
    if row == 1 and column == 1:
        return "center"
    if row == 1:
        return COLUMNS[column]
    if column == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLUMNS[column]}"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    row: int
    column: int

    @property
    def phrase(self) -> str:
        """The object's noun phrase without the article, e.g. "big red circle"."""
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def description(self) -> str:
        return f"a {self.phrase} at the {position_phrase(self.row, self.column)}"


@dataclass(frozen=True)
class Scene:
    """image: (H, W, 3) uint8; masks: (objects, H, W) bool, visible pixels of each object."""

    image: np.ndarray
    masks: np.ndarray
    objects: tuple[SceneObject, ...]
    key: int

    @property
    def text(self) -> str:
        """The description in drawing order (the demo model's training captions)."""
        return self.caption("drawing")

    def caption(self, order: Order = "drawing") -> str:
        """The description with the objects in drawing order or in reading order (row, then column)."""
        check_choice("order", order, Order)
        objects = self.objects if order == "drawing" else sorted(self.objects, key=lambda obj: (obj.row, obj.column))
        return " and ".join(obj.description for obj in objects)

    @property
    def key_phrase(self) -> str:
        return self.objects[self.key].phrase


def listed_positions(caption: str) -> list[tuple[int, int]] | None:
    """The (row, column) cells a caption of the scenes' form ("a big red circle at the top left and
    ...") lists its objects at, in the caption's order; None when a part names no position."""
    cells = {position_phrase(row, column): (row, column) for row in range(3) for column in range(3)}
    listed = []
    for part in caption.split(" and "):
        words = part.strip().split(" at the ", 1)
        if len(words) != 2 or words[1].strip() not in cells:
            return None
        listed.append(cells[words[1].strip()])
    return listed


def in_reading_order(caption: str) -> bool:
    """Whether a caption lists its objects in reading order (top to bottom, then left to right) by the
    positions it writes: the fine-tuning task of `--order reading`. False when a position is missing."""
    listed = listed_positions(caption)
    return listed is not None and listed == sorted(listed)


def _polygon(shape: str, centre: np.ndarray, radius: float) -> np.ndarray:
    angles = {
        "square": np.deg2rad([45, 135, 225, 315]),
        "diamond": np.deg2rad([0, 90, 180, 270]),
        "triangle": np.deg2rad([90, 210, 330]),
    }
    if shape == "star":
        angles_ = np.deg2rad(np.arange(10) * 36 + 90)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
        points = np.stack([np.cos(angles_) * radii, -np.sin(angles_) * radii], axis=1)
    elif shape == "cross":
        a, b = radius, radius * 0.38
        points = np.array(
            [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        )
    else:
        scale = radius * (1.0 if shape != "square" else 1.25)
        points = np.stack([np.cos(angles[shape]) * scale, -np.sin(angles[shape]) * scale], axis=1)
    return np.round(points + centre).astype(np.int32)


def draw_shape(canvas: np.ndarray, shape: str, centre: np.ndarray, radius: float, value) -> None:
    """Draw a filled shape (no anti-aliasing, so masks are exact)."""
    if shape == "circle":
        cv2.circle(canvas, (int(centre[0]), int(centre[1])), round(radius), value, thickness=-1, lineType=cv2.LINE_8)
    else:
        cv2.fillPoly(canvas, [_polygon(shape, centre, radius)], value, lineType=cv2.LINE_8)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dull textured background: a smooth colour field plus noise, sometimes stripes."""
    low = rng.random((4, 4, 3)).astype(np.float32)
    field = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32, copy=False) * 70 + 25
    field += rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    if rng.random() < 0.5:
        period = rng.integers(6, 16)
        stripes = (np.arange(size) // period % 2).astype(np.float32) * 18
        field += stripes[None, :, None] if rng.random() < 0.5 else stripes[:, None, None]
    return np.clip(field, 0, 255).astype(np.uint8)


def check_scene_options(size: int, max_objects: int = 3) -> None:
    """Scenes need room for their smallest shape (a few pixels wide) and fit in memory; at most one
    object per cell of the 3 x 3 layout."""
    check_number(
        "size",
        size,
        f"a whole number of pixels in [{MIN_SIZE}, {MAX_SIZE}]",
        lambda v: v == int(v) and MIN_SIZE <= v <= MAX_SIZE,
    )
    check_number("max_objects", max_objects, "a whole number in [1, 9]", lambda v: v == int(v) and 1 <= v <= 9)


def make_scene(rng: np.random.Generator, size: int = 96, max_objects: int = 3) -> Scene:
    """One random scene; objects sit in distinct cells of the 3 x 3 layout."""
    check_scene_options(size, max_objects)
    count = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=count, replace=False)
    image = background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)  # 0 = background, i + 1 = object i (visible)
    objects = []
    cell = size / 3
    for index, flat in enumerate(cells):
        row, column = divmod(int(flat), 3)
        obj = SceneObject(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(list(SIZES))),
            row=row,
            column=column,
        )
        radius = SIZES[obj.size] * size
        jitter = rng.uniform(-0.12, 0.12, 2) * cell
        centre = np.array([(column + 0.5) * cell, (row + 0.5) * cell]) + jitter
        draw_shape(image, obj.shape, centre, radius, COLOURS[obj.colour])
        draw_shape(label, obj.shape, centre, radius, index + 1)
        objects.append(obj)
    masks = np.stack([label == i + 1 for i in range(count)])
    visible = [i for i in range(count) if masks[i].any()]
    key = int(rng.choice(visible))
    return Scene(image=image, masks=masks, objects=tuple(objects), key=key)


@dataclass(frozen=True)
class Question:
    """A closed-form question about one object of a scene: `text` asked, `answer` expected, and
    `target`, the index of the object the question is about (whose mask scores the answer)."""

    kind: str
    text: str
    answer: str
    target: int


def make_question(rng: np.random.Generator, scene: Scene, kind: QuestionKind) -> Question | None:
    """A random question of this kind about a visible object of the scene, or None when the scene
    has no object the kind can ask about unambiguously (module docstring)."""
    check_choice("kind", kind, QuestionKind)
    objects = scene.objects

    def unique(index: int, same) -> bool:
        return sum(same(other, objects[index]) for other in objects) == 1

    same_shape = lambda a, b: a.shape == b.shape  # noqa: E731
    same_kind = lambda a, b: a.shape == b.shape and a.colour == b.colour  # noqa: E731
    visible = [i for i in range(len(objects)) if scene.masks[i].any()]
    if kind in ("shape", "colour_at"):
        candidates = visible
    elif kind == "position":
        candidates = [i for i in visible if unique(i, same_kind)]
    else:
        candidates = [i for i in visible if unique(i, same_shape)]
    if not candidates:
        return None
    target = int(rng.choice(candidates))
    obj = objects[target]
    if kind == "colour":
        return Question(kind, f"What colour is the {obj.shape}?", obj.colour, target)
    if kind == "shape":
        return Question(kind, f"What shape is at the {position_phrase(obj.row, obj.column)}?", obj.shape, target)
    if kind == "colour_at":
        return Question(kind, f"What colour is at the {position_phrase(obj.row, obj.column)}?", obj.colour, target)
    if kind == "position":
        return Question(kind, f"Where is the {obj.colour} {obj.shape}?", position_phrase(obj.row, obj.column), target)
    if kind == "size":
        asked = str(rng.choice(list(SIZES)))
        return Question(kind, f"Is the {obj.shape} {asked}?", "yes" if asked == obj.size else "no", target)
    if rng.random() < 0.5:
        return Question(kind, f"Is there a {obj.colour} {obj.shape}?", "yes", target)
    other = str(rng.choice([colour for colour in COLOURS if colour != obj.colour]))
    return Question(kind, f"Is there a {other} {obj.shape}?", "no", target)


def make_vqa(
    rng: np.random.Generator, kind: QuestionKind, size: int = 96, max_objects: int = 3
) -> tuple[Scene, Question]:
    """A random scene and a question of this kind about it (scenes the kind cannot ask about are
    drawn again, from the same generator: the pair is a pure function of the generator's state)."""
    check_choice("kind", kind, QuestionKind)
    while True:
        scene = make_scene(rng, size, max_objects)
        question = make_question(rng, scene, kind)
        if question is not None:
            return scene, question
