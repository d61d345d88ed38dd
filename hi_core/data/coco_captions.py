"""Which object a COCO caption names (DESIGN 5), the caption side of `coco.convert_coco` (whose docstring states the
rules): the words captions use for the 80 categories (`SYNONYMS`, `plural`, `vocabulary`), the categories a caption
names (`find_mentions`), and an image's key object among its instances (`choose_key_object`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The 80 COCO categories and the words captions use for them (singular; plurals are derived),
# after the synonym list of the captioning-hallucination literature (CHAIR, Rohrbach et al. 2018),
# without its entries that name another thing (goat as sheep, container as bowl, street light as
# traffic light, bag as handbag).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "man",
        "woman",
        "people",
        "boy",
        "girl",
        "child",
        "kid",
        "baby",
        "toddler",
        "adult",
        "guy",
        "lady",
        "gentleman",
        "teenager",
        "player",
        "skier",
        "snowboarder",
        "skateboarder",
        "surfer",
        "rider",
        "biker",
        "cyclist",
        "pitcher",
        "batter",
        "catcher",
        "umpire",
        "chef",
        "worker",
        "officer",
        "policeman",
        "soldier",
        "tourist",
        "traveler",
        "passenger",
        "student",
        "bride",
        "groom",
        "mother",
        "father",
        "driver",
        "spectator",
    ),
    "bicycle": ("bike", "unicycle", "tricycle"),
    "car": ("automobile", "sedan", "suv", "taxi", "cab", "van", "minivan", "jeep"),
    "motorcycle": ("motorbike", "motor bike", "motor cycle", "dirt bike", "scooter", "moped"),
    "airplane": ("plane", "jet", "aircraft", "airliner", "jetliner", "aeroplane", "air plane"),
    "bus": ("minibus", "double decker"),
    "train": ("locomotive",),
    "truck": ("pickup", "pickup truck", "lorry", "firetruck", "fire truck"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry", "motorboat", "speedboat"),
    "traffic light": ("stoplight", "stop light", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": ("meter",),
    "bench": (),
    "bird": (
        "pigeon",
        "seagull",
        "gull",
        "duck",
        "goose",
        "swan",
        "parrot",
        "owl",
        "sparrow",
        "crow",
        "pelican",
        "heron",
        "flamingo",
        "rooster",
    ),
    "cat": ("kitten", "kitty", "feline"),
    "dog": ("puppy", "pup", "doggy", "canine"),
    "horse": ("pony", "foal", "colt", "mare", "stallion"),
    "sheep": ("lamb", "ewe", "ram"),
    "cow": ("cattle", "calf", "bull", "ox", "heifer"),
    "elephant": (),
    "bear": ("grizzly", "polar bear"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("knapsack", "rucksack"),
    "umbrella": ("parasol",),
    "handbag": ("purse",),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("suit case", "luggage"),
    "frisbee": (),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("ball", "tennis ball", "soccer ball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "bottle": (),
    "wine glass": ("wineglass",),
    "cup": ("mug",),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "hamburger", "cheeseburger"),
    "orange": (),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake", "cheesecake"),
    "chair": ("armchair", "stool", "seat"),
    "couch": ("sofa", "loveseat", "futon"),
    "potted plant": ("houseplant", "plant"),
    "bed": (),
    "dining table": ("table", "desk"),
    "toilet": ("toilet seat", "urinal"),
    "tv": ("television", "monitor"),
    "laptop": ("computer", "notebook", "macbook"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "keyboard": (),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone", "telephone", "iphone"),
    "microwave": ("microwave oven",),
    "oven": ("stove", "stovetop"),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": ("novel", "paperback"),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddybear", "teddy"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("tooth brush",),
}

# Plurals the rules below would get wrong; a word that is already plural (or has no plural) maps to itself.
_IRREGULAR = {
    "person": "people",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "goose": "geese",
    "ox": "oxen",
    "calf": "calves",
    "people": "people",
    "sheep": "sheep",
    "cattle": "cattle",
    "skis": "skis",
    "scissors": "scissors",
    "luggage": "luggage",
    "broccoli": "broccoli",
}

_WORD = re.compile(r"[A-Za-z]+")


def plural(phrase: str) -> str:
    """The English plural of a noun phrase (its last word inflected), by a small rule set."""
    head, _, last = phrase.rpartition(" ")
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last.endswith("man"):  # man, woman, policeman, gentleman
        last = last[:-3] + "men"
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def vocabulary(category_names: Iterable[str]) -> dict[tuple[str, ...], str]:
    """Lowercase word sequences (singular and plural) -> the category they name.

    A category missing from `SYNONYMS` (a custom COCO-format set) is named by its own name only.
    """
    phrases: dict[tuple[str, ...], str] = {}
    for name in category_names:
        for phrase in (name, *SYNONYMS.get(name, ())):
            for form in (phrase, plural(phrase)):
                words = tuple(word.lower() for word in _WORD.findall(form))
                if words:
                    phrases.setdefault(words, name)
    return phrases


@dataclass(frozen=True)
class Mention:
    """A category named in a caption, at the characters [start, end) of its words."""

    category: str
    start: int
    end: int


def find_mentions(caption: str, phrases: Mapping[tuple[str, ...], str]) -> list[Mention]:
    """The categories a caption names, left to right; at each word the longest matching phrase wins."""
    words = list(_WORD.finditer(caption))
    lowered = [word.group().lower() for word in words]
    longest = max((len(phrase) for phrase in phrases), default=0)
    mentions: list[Mention] = []
    index = 0
    while index < len(words):
        for length in range(min(longest, len(words) - index), 0, -1):
            category = phrases.get(tuple(lowered[index : index + length]))
            if category is not None:
                mentions.append(Mention(category, words[index].start(), words[index + length - 1].end()))
                index += length
                break
        else:
            index += 1
    return mentions


@dataclass(frozen=True)
class KeyObject:
    """The chosen object: its index among the candidates, the caption (stripped), the naming words."""

    index: int
    text: str
    key_phrase: str


def choose_key_object(
    captions: Sequence[str], categories: Sequence[str], areas: Sequence[int], phrases: Mapping[tuple[str, ...], str]
) -> KeyObject | None:
    """The key object among an image's non-crowd instances (`categories[i]`, `areas[i]` in pixels).

    The first caption naming a category with a non-empty instance decides; among the instances of
    the categories it names, the largest wins (the first on ties). None when no caption names one.
    """
    present = {category for category, area in zip(categories, areas) if area > 0}
    for caption in captions:
        text = caption.strip()
        mentions = [mention for mention in find_mentions(text, phrases) if mention.category in present]
        if not mentions:
            continue
        named = {mention.category for mention in mentions}
        best = max((i for i, category in enumerate(categories) if category in named), key=lambda i: areas[i])
        mention = next(mention for mention in mentions if mention.category == categories[best])
        return KeyObject(index=best, text=text, key_phrase=text[mention.start : mention.end])
    return None
