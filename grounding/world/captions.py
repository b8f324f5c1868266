"""Reference captions for the synthetic hallucination world.

Each caption mentions a random subset of the visible categories (each with probability `mention_prob`, at
least one) and never an absent one. Nouns come from the CHAIR synonym table (so "bike", "television",
"doughnut" count as their COCO category) and the rest of the words are chosen not to be COCO object words
(no "orange" as a colour, no "table", "computer", "seat" ...), so CHAIR finds exactly the mentioned objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CaptionObject", "NOUNS", "make_captions"]

# category -> [(singular, plural)], the first is the plain name; every phrase is in the CHAIR table
NOUNS: dict[str, list[tuple[str, str]]] = {
    "fork": [("fork", "forks")], "knife": [("knife", "knives")], "spoon": [("spoon", "spoons")],
    "cup": [("cup", "cups")], "bowl": [("bowl", "bowls")], "bottle": [("bottle", "bottles")],
    "wine glass": [("wine glass", "wine glasses")], "banana": [("banana", "bananas")],
    "apple": [("apple", "apples")], "orange": [("orange", "oranges")], "pizza": [("pizza", "pizzas")],
    "donut": [("donut", "donuts"), ("doughnut", "doughnuts")], "cake": [("cake", "cakes")],
    "clock": [("clock", "clocks")], "book": [("book", "books")],
    "scissors": [("pair of scissors", "pairs of scissors")], "umbrella": [("umbrella", "umbrellas")],
    "kite": [("kite", "kites")], "car": [("car", "cars"), ("automobile", "automobiles")],
    "bus": [("bus", "buses")], "chair": [("chair", "chairs")],
    "tv": [("tv", "tvs"), ("television", "televisions")],
    "laptop": [("laptop", "laptops"), ("laptop computer", "laptop computers")], "mouse": [("mouse", "mice")],
    "keyboard": [("keyboard", "keyboards")],
    "cell phone": [("cell phone", "cell phones"), ("phone", "phones"), ("smartphone", "smartphones"),
                   ("mobile phone", "mobile phones")],
    "vase": [("vase", "vases")], "potted plant": [("potted plant", "potted plants"), ("houseplant", "houseplants")],
    "stop sign": [("stop sign", "stop signs")],
    "traffic light": [("traffic light", "traffic lights"), ("traffic signal", "traffic signals"),
                      ("stoplight", "stoplights")],
    "bicycle": [("bicycle", "bicycles"), ("bike", "bikes")], "teddy bear": [("teddy bear", "teddy bears")],
    "toothbrush": [("toothbrush", "toothbrushes")], "sports ball": [("ball", "balls"), ("sports ball", "sports balls")],
}
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@dataclass
class CaptionObject:
    """One visible category: how many instances, an adjective for the largest, and where it is."""

    category: str
    count: int
    adjective: str | None
    where: str  # "on the left", "in the top right corner", ...
    area: float


def _where(cx: float, cy: float) -> str:
    """A spatial phrase for a centre in [0, 1] x [0, 1] image coordinates."""
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    if col and row:
        return f"in the {row} {col} corner"
    if col:
        return f"on the {col}"
    if row:
        return f"at the {row}"
    return "in the middle"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _phrase(obj: CaptionObject, rng: np.random.Generator, spatial: bool = False) -> str:
    options = NOUNS[obj.category]
    singular, plural = options[0] if rng.random() < 0.6 else options[int(rng.integers(len(options)))]
    if obj.count > 1:
        text = f"{_NUMBERS.get(obj.count, 'several')} {plural}" if rng.random() < 0.85 else f"some {plural}"
    else:
        adjective = obj.adjective if obj.adjective and rng.random() < 0.35 else None
        text = _article(f"{adjective} {singular}" if adjective else singular)
    return f"{text} {obj.where}" if spatial and obj.count == 1 else text


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def make_captions(objects: list[CaptionObject], pattern: str, color: str, rng: np.random.Generator, count: int = 5,
                  mention_prob: float = 0.8) -> list[str]:
    """`count` captions for one image; each mentions a random subset (>= 1) of `objects`, nothing else."""
    if not objects:
        raise ValueError("an image needs at least one visible object to be captioned")
    backgrounds = [f"{pattern} {color}", f"{color} {pattern}", pattern, color]
    captions: list[str] = []
    for k in range(count * 4):
        if len(captions) == count:
            break
        keep = [o for o in objects if rng.random() < mention_prob]
        if not keep:
            keep = [objects[int(rng.integers(len(objects)))]]
        order = np.argsort([-o.area * rng.uniform(0.5, 1.5) for o in keep], kind="stable")
        keep = [keep[i] for i in order]
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        listed = _join([_phrase(o, rng) for o in keep])
        first = keep[0]
        plural_first = first.count > 1
        templates = [
            f"a picture of {listed}",
            f"{listed} on {_article(bg)} background",
            f"an image showing {listed}",
            f"there {'are' if plural_first else 'is'} {listed} in this picture",
            f"a photo of {listed} against {_article(bg)} backdrop",
            f"a simple drawing of {listed}",
            f"{listed}, drawn over {_article(bg)} pattern",
            f"in this scene we can see {listed}",
            f"{listed} scattered across {_article(bg)} surface",
            f"a colourful illustration with {listed}",
        ]
        if len(keep) == 1:
            templates += [f"a close-up view of {_phrase(first, rng)}",
                          f"{_phrase(first, rng, spatial=True)} on {_article(bg)} background",
                          f"just {_phrase(first, rng)} {first.where} of the frame"]
        if len(keep) >= 2:
            rest = _join([_phrase(o, rng) for o in keep[1:]])
            second = keep[1]
            templates += [
                f"{_phrase(first, rng, spatial=True)}, with {rest}",
                f"several objects on {_article(bg)} background: {listed}",
                f"{_phrase(first, rng)} and {rest} are shown here",
                f"{_phrase(first, rng)} next to {rest}",
            ]
            if first.count == 1 and second.count == 1 and first.where != second.where:
                templates.append(f"{_phrase(first, rng, spatial=True)} and {_phrase(second, rng, spatial=True)}"
                                 + (f", plus {_join([_phrase(o, rng) for o in keep[2:]])}" if len(keep) > 2 else ""))
        caption = _sentence(templates[int(rng.integers(len(templates)))])
        if caption not in captions or k >= count * 3:
            captions.append(caption)
    return captions
