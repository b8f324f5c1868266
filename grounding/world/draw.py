"""Procedural drawings for the synthetic hallucination world: one recognisable object per COCO category, and
textured backgrounds.

Each drawer paints one object into a transparent RGBA layer of a given size (already supersampled by the
caller) with parts (a fork has a handle and four tines, a clock a face, ticks and hands) and colour, style and
proportion variation drawn from a NumPy generator. It returns an optional adjective for captions (a colour
name such as "red", or a kind such as "soccer"); colour words never collide with COCO object words (no
"orange").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

__all__ = ["ObjectStyle", "OBJECT_STYLES", "COCO_CATEGORIES", "COLORS", "render_object", "render_background",
           "color_name"]

RGB = tuple[int, int, int]

# COCO 2017 category ids and supercategories of the categories we can draw
COCO_CATEGORIES: dict[str, tuple[int, str]] = {
    "bicycle": (2, "vehicle"), "car": (3, "vehicle"), "bus": (6, "vehicle"), "traffic light": (10, "outdoor"),
    "stop sign": (13, "outdoor"), "umbrella": (28, "accessory"), "sports ball": (37, "sports"),
    "kite": (38, "sports"), "bottle": (44, "kitchen"), "wine glass": (46, "kitchen"), "cup": (47, "kitchen"),
    "fork": (48, "kitchen"), "knife": (49, "kitchen"), "spoon": (50, "kitchen"), "bowl": (51, "kitchen"),
    "banana": (52, "food"), "apple": (53, "food"), "orange": (55, "food"), "pizza": (59, "food"),
    "donut": (60, "food"), "cake": (61, "food"), "chair": (62, "furniture"), "potted plant": (64, "furniture"),
    "tv": (72, "electronic"), "laptop": (73, "electronic"), "mouse": (74, "electronic"),
    "keyboard": (76, "electronic"), "cell phone": (77, "electronic"), "book": (84, "indoor"),
    "clock": (85, "indoor"), "vase": (86, "indoor"), "scissors": (87, "indoor"), "teddy bear": (88, "indoor"),
    "toothbrush": (90, "indoor"),
}

# named colours for objects and backgrounds (names never COCO object words)
COLORS: dict[str, RGB] = {
    "red": (205, 35, 40), "blue": (40, 85, 205), "green": (45, 150, 65), "yellow": (240, 205, 40),
    "purple": (130, 60, 165), "pink": (235, 130, 170), "brown": (125, 78, 40), "black": (35, 35, 40),
    "white": (238, 238, 232), "grey": (128, 130, 136), "silver": (192, 194, 200), "teal": (30, 140, 140),
    "navy": (30, 42, 105), "beige": (222, 202, 162), "gold": (212, 172, 55), "tan": (196, 156, 108),
    "cream": (246, 236, 206), "maroon": (118, 26, 36), "lavender": (182, 162, 222), "olive": (112, 122, 42),
}
_ORANGE: RGB = (250, 140, 20)  # drawn, never named


def color_name(rgb) -> str:
    """A colour word for an RGB triple, by hue, saturation and value (never "orange", a COCO object)."""
    r, g, b = (float(c) / 255 for c in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    sat = (hi - lo) / hi if hi > 0 else 0.0
    if sat < 0.16 or hi - lo < 0.07:
        return "white" if hi > 0.85 else "black" if hi < 0.22 else "grey"
    if hi == r:
        hue = ((g - b) / (hi - lo)) % 6
    elif hi == g:
        hue = (b - r) / (hi - lo) + 2
    else:
        hue = (r - g) / (hi - lo) + 4
    hue *= 60
    if hue < 15 or hue >= 340:
        return "pink" if hi > 0.75 and sat < 0.45 else "red" if hi > 0.45 else "maroon"
    if hue < 45:
        return "brown" if hi < 0.65 else "tan" if sat < 0.5 else "amber"
    if hue < 70:
        return "olive" if hi < 0.6 else "beige" if sat < 0.35 else "yellow"
    if hue < 165:
        return "green"
    if hue < 200:
        return "teal"
    if hue < 255:
        return "blue" if hi > 0.4 else "navy"
    if hue < 290:
        return "purple" if sat > 0.35 or hi < 0.6 else "lavender"
    return "pink" if hi > 0.6 else "purple"


def _clip(v: float) -> int:
    return int(min(255, max(0, round(v))))


def _jit(rng: np.random.Generator, rgb: RGB, amount: float = 16) -> tuple[int, int, int, int]:
    return tuple(_clip(c + rng.uniform(-amount, amount)) for c in rgb) + (255,)  # type: ignore[return-value]


def _shade(rgba, factor: float) -> tuple[int, int, int, int]:
    return tuple(_clip(c * factor) for c in rgba[:3]) + (255,)  # type: ignore[return-value]


def _mix(a, b, t: float) -> tuple[int, int, int, int]:
    return tuple(_clip(x * (1 - t) + y * t) for x, y in zip(a[:3], b[:3])) + (255,)  # type: ignore[return-value]


def _detail(rgba) -> tuple[int, int, int, int]:
    """A colour for lines drawn on a part: darker on light parts, lighter on dark ones."""
    luminance = 0.3 * rgba[0] + 0.59 * rgba[1] + 0.11 * rgba[2]
    return _mix(rgba, (235, 235, 235), 0.45) if luminance < 80 else _shade(rgba, 0.55)


_CLEAR = (0, 0, 0, 0)


class _Pen:
    """Drawing in box fractions: x in [0, 1] of the width, y in [0, 1] of the height."""

    def __init__(self, layer: Image.Image, rng: np.random.Generator):
        self.layer, self.rng = layer, rng
        self.d = ImageDraw.Draw(layer)
        self.w, self.h = layer.size
        self.lw = max(1, round(0.018 * max(self.w, self.h)))  # outline width

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (x * (self.w - 1), y * (self.h - 1))

    def b(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, c), (e, f) = self.p(x0, y0), self.p(x1, y1)
        return [min(a, e), min(c, f), max(a, e), max(c, f)]

    def rect(self, box, fill, outline=None, r: float = 0.0) -> None:
        xy = self.b(*box)
        radius = r * min(xy[2] - xy[0], xy[3] - xy[1])
        width = self.lw if outline else 0
        if radius >= 1:
            self.d.rounded_rectangle(xy, radius=radius, fill=fill, outline=outline, width=width)
        else:
            self.d.rectangle(xy, fill=fill, outline=outline, width=width)

    def ellipse(self, box, fill, outline=None, width: int | None = None) -> None:
        self.d.ellipse(self.b(*box), fill=fill, outline=outline, width=(width or self.lw) if outline else 0)

    def circle(self, cx: float, cy: float, r_px: float, fill, outline=None, width: int | None = None) -> None:
        x, y = self.p(cx, cy)
        self.d.ellipse([x - r_px, y - r_px, x + r_px, y + r_px], fill=fill, outline=outline,
                       width=(width or self.lw) if outline else 0)

    def poly(self, pts, fill, outline=None) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill, outline=outline, width=self.lw if outline else 0)

    def line(self, pts, fill, width: float) -> None:
        """width: a fraction of the shorter side of the box (at least 1 px)."""
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=max(1, round(width * min(self.w, self.h))),
                    joint="curve")

    def line_px(self, pts, fill, width_px: float) -> None:
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=max(1, round(width_px)), joint="curve")

    def pick(self, names: list[str]) -> tuple[str, tuple[int, int, int, int]]:
        name = names[int(self.rng.integers(len(names)))]
        return name, _jit(self.rng, COLORS[name])

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)


# ----------------------------------------------------------------------------------------------- utensils
_METAL = ["silver", "silver", "silver", "grey", "gold"]
_PLASTIC = ["red", "blue", "green", "black", "white", "yellow", "purple", "pink", "teal"]


def _fork(pen: _Pen) -> str | None:
    name, c = pen.pick(_METAL if pen.coin(0.7) else _PLASTIC)
    o = _shade(c, 0.55)
    pen.rect((0.3, 0.5, 0.7, 1.0), c, o, r=0.45)
    pen.poly([(0.3, 0.52), (0.7, 0.52), (0.9, 0.36), (0.1, 0.36)], c, o)
    pen.rect((0.04, 0.27, 0.96, 0.4), c, o, r=0.3)
    for x in (0.04, 0.29, 0.55, 0.8):
        pen.rect((x, 0.0, x + 0.16, 0.32), c, o, r=0.4)
    pen.line([(0.5, 0.6), (0.5, 0.92)], _shade(c, 1.2), 0.12)
    return name


def _knife(pen: _Pen) -> str | None:
    _, blade = pen.pick(["silver", "silver", "grey"])
    name, handle = pen.pick(["brown", "black", "white", "red", "blue", "maroon", "tan"])
    o = _shade(blade, 0.5)
    pen.poly([(0.18, 0.6), (0.18, 0.06), (0.45, 0.0), (0.8, 0.14), (0.95, 0.36), (0.95, 0.6)], blade, o)
    pen.line([(0.22, 0.08), (0.22, 0.56)], _shade(blade, 1.25), 0.14)
    pen.rect((0.1, 0.57, 1.0, 0.63), _shade(blade, 0.8), o)
    pen.rect((0.12, 0.62, 0.95, 1.0), handle, _shade(handle, 0.55), r=0.4)
    rad = 0.09 * pen.w
    for y in (0.7, 0.8, 0.9):
        pen.circle(0.53, y, rad, _shade(blade, 1.1))
    return name


def _spoon(pen: _Pen) -> str | None:
    name, c = pen.pick(_METAL if pen.coin(0.7) else _PLASTIC)
    o = _shade(c, 0.55)
    pen.poly([(0.4, 0.3), (0.6, 0.3), (0.7, 0.93), (0.3, 0.93)], c, o)
    pen.ellipse((0.26, 0.86, 0.74, 1.0), c, o)
    pen.ellipse((0.0, 0.0, 1.0, 0.38), c, o)
    pen.ellipse((0.16, 0.05, 0.84, 0.32), _shade(c, 0.82))
    pen.ellipse((0.3, 0.08, 0.48, 0.2), _shade(c, 1.25))
    return name


def _scissors(pen: _Pen) -> str | None:
    name: str | None
    name, handle = pen.pick(["red", "blue", "black", "yellow", "green", "purple", "pink"])
    if pen.coin(0.2):
        name, handle = None, _jit(pen.rng, _ORANGE)
    _, blade = pen.pick(["silver", "grey"])
    ob = _shade(blade, 0.5)
    pen.poly([(0.32, 0.0), (0.44, 0.02), (0.74, 0.72), (0.62, 0.76), (0.48, 0.56)], blade, ob)
    pen.poly([(0.68, 0.0), (0.56, 0.02), (0.26, 0.72), (0.38, 0.76), (0.52, 0.56)], blade, ob)
    ring = max(2, round(0.09 * pen.w))
    pen.ellipse((0.0, 0.66, 0.46, 1.0), None, handle, width=ring)
    pen.ellipse((0.54, 0.66, 1.0, 1.0), None, handle, width=ring)
    pen.circle(0.5, 0.5, 0.05 * pen.w, _shade(blade, 0.7))
    return name


def _toothbrush(pen: _Pen) -> str | None:
    name, c = pen.pick(["blue", "green", "red", "purple", "pink", "white", "teal", "yellow"])
    o = _shade(c, 0.55)
    pen.poly([(0.05, 0.2), (0.5, 0.2), (0.55, 1.0), (0.0, 1.0)], c, o)
    pen.rect((0.0, 0.0, 0.5, 0.22), c, o, r=0.3)
    bristle = _jit(pen.rng, COLORS["white"], 8)
    accent = _jit(pen.rng, (120, 190, 240), 20)
    n = 6
    for k in range(n):
        y0 = 0.01 + k * 0.19 / n
        pen.rect((0.5, y0, 0.98, y0 + 0.8 * 0.19 / n), accent if k % 2 else bristle, _shade(bristle, 0.7))
    pen.line([(0.25, 0.35), (0.25, 0.9)], _shade(c, 1.3), 0.12)
    return name


# ----------------------------------------------------------------------------------------------- kitchen
def _cup(pen: _Pen) -> str | None:
    name, c = pen.pick(["white", "white", "red", "blue", "yellow", "green", "pink", "teal", "black", "cream"])
    o = _shade(c, 0.55)
    ring = max(2, round(0.08 * pen.h))
    pen.ellipse((0.56, 0.26, 1.0, 0.78), None, o, width=ring + 2)
    pen.ellipse((0.57, 0.27, 0.99, 0.77), None, c, width=ring)
    pen.poly([(0.02, 0.12), (0.74, 0.12), (0.68, 0.94), (0.08, 0.94)], c, o)
    pen.ellipse((0.08, 0.88, 0.68, 1.0), c, o)
    pen.rect((0.09, 0.86, 0.67, 0.95), c)
    style = pen.rng.integers(3)
    if style == 0:
        _, band = pen.pick(["red", "blue", "green", "navy", "gold", "maroon"])
        pen.poly([(0.035, 0.35), (0.725, 0.35), (0.715, 0.47), (0.045, 0.47)], band)
    elif style == 1:
        _, dot = pen.pick(["red", "blue", "navy", "pink", "green"])
        for x, y in ((0.18, 0.42), (0.38, 0.6), (0.56, 0.4), (0.26, 0.76), (0.52, 0.78)):
            pen.circle(x, y, 0.045 * pen.w, dot)
    pen.ellipse((0.02, 0.04, 0.74, 0.2), _shade(c, 1.08), o)
    pen.ellipse((0.07, 0.07, 0.69, 0.17), _jit(pen.rng, (90, 55, 30), 20))
    return name


def _bowl(pen: _Pen) -> str | None:
    name, c = pen.pick(["white", "blue", "red", "green", "yellow", "teal", "brown", "cream", "pink"])
    o = _shade(c, 0.55)
    pen.rect((0.36, 0.86, 0.64, 1.0), _shade(c, 0.85), o, r=0.2)
    pen.d.chord(pen.b(0.0, -0.45, 1.0, 0.93), 0, 180, fill=c, outline=o, width=pen.lw)
    if pen.coin(0.6):
        _, band = pen.pick(["navy", "red", "gold", "blue", "green", "white"])
        pen.line([(0.06, 0.46), (0.5, 0.58), (0.94, 0.46)], band, 0.06)
    pen.ellipse((0.0, 0.08, 1.0, 0.36), _shade(c, 1.05), o)
    inside = _jit(pen.rng, [(220, 190, 120), (170, 60, 40), (240, 235, 215), (110, 150, 60)][pen.rng.integers(4)])
    pen.ellipse((0.05, 0.11, 0.95, 0.33), inside if pen.coin(0.6) else _shade(c, 0.8))
    return name


def _bottle(pen: _Pen) -> str | None:
    kinds = {"green": (40, 120, 55), "brown": (120, 70, 30), "blue": (50, 90, 180), "clear": (200, 215, 225)}
    key = list(kinds)[pen.rng.integers(len(kinds))]
    c = _jit(pen.rng, kinds[key], 12)
    o = _shade(c, 0.55)
    pen.rect((0.03, 0.36, 0.97, 1.0), c, o, r=0.2)
    pen.poly([(0.05, 0.42), (0.95, 0.42), (0.66, 0.24), (0.34, 0.24)], c, o)
    pen.rect((0.33, 0.07, 0.67, 0.28), c, o)
    _, cap = pen.pick(["red", "gold", "white", "blue", "black", "silver"])
    pen.rect((0.29, 0.0, 0.71, 0.1), cap, _shade(cap, 0.6), r=0.2)
    if pen.coin(0.8):
        _, label = pen.pick(["white", "cream", "red", "yellow", "beige", "navy"])
        pen.rect((0.04, 0.54, 0.96, 0.8), label, _shade(label, 0.7))
        _, ink = pen.pick(["red", "black", "blue", "green", "gold"])
        pen.rect((0.2, 0.62, 0.8, 0.7), ink)
    pen.rect((0.14, 0.42, 0.22, 0.95), _shade(c, 1.35))
    return None if key == "clear" else key


def _wine_glass(pen: _Pen) -> str | None:
    glass = _jit(pen.rng, (205, 222, 232), 10)
    o = _jit(pen.rng, (110, 125, 140), 10)
    bowl = [(0.06, 0.0), (0.94, 0.0), (0.97, 0.2), (0.86, 0.38), (0.62, 0.5), (0.38, 0.5), (0.14, 0.38), (0.03, 0.2)]
    pen.rect((0.45, 0.48, 0.55, 0.93), glass, o)
    pen.ellipse((0.16, 0.88, 0.84, 1.0), glass, o)
    pen.poly(bowl, glass, o)
    wine = {"red": (125, 15, 35), "white": (235, 220, 140), "": None}[["red", "red", "white", ""][pen.rng.integers(4)]]
    if wine is not None:
        level = pen.u(0.12, 0.28)
        pts = [(0.04 + 0.02 * level, level), (0.96 - 0.02 * level, level), (0.86, 0.38), (0.62, 0.49), (0.38, 0.49),
               (0.14, 0.38)]
        pen.poly(pts, _jit(pen.rng, wine, 10))
    pen.line([(0.18, 0.05), (0.14, 0.25)], (250, 250, 255, 255), 0.06)
    return None


def _banana(pen: _Pen) -> str | None:
    c = _jit(pen.rng, (238, 208, 60) if pen.coin(0.8) else (190, 205, 70), 14)
    o = _shade(c, 0.6)
    outer = [(t, 0.08 + 0.86 * math.sin(math.pi * t)) for t in np.linspace(0.03, 0.97, 24)]
    inner = [(t, 0.08 + 0.42 * math.sin(math.pi * t)) for t in np.linspace(0.97, 0.03, 24)]
    pen.poly(outer + inner, c, o)
    pen.line([(t, 0.08 + 0.64 * math.sin(math.pi * t)) for t in np.linspace(0.1, 0.9, 16)], _shade(c, 0.85), 0.05)
    stem = _jit(pen.rng, (110, 80, 35), 10)
    pen.poly([(0.0, 0.0), (0.1, 0.06), (0.07, 0.2), (0.0, 0.16)], stem)
    pen.poly([(0.97, 0.07), (1.0, 0.1), (0.98, 0.16), (0.95, 0.13)], _shade(stem, 0.6))
    if pen.coin(0.3):
        for _ in range(5):
            t = pen.u(0.2, 0.8)
            pen.circle(t, 0.08 + 0.7 * math.sin(math.pi * t), 0.02 * pen.w, _shade(stem, 0.9))
    return "yellow" if c[1] > 195 else "green"


def _apple(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "red", "red", "green", "yellow"])
    if name == "green":
        c = _jit(pen.rng, (140, 200, 60), 12)
    o = _shade(c, 0.6)
    pen.ellipse((0.0, 0.14, 0.62, 0.98), c, o)
    pen.ellipse((0.38, 0.14, 1.0, 0.98), c, o)
    pen.ellipse((0.08, 0.22, 0.92, 1.0), c)
    pen.ellipse((0.3, 0.12, 0.7, 0.32), c)
    pen.ellipse((0.42, 0.18, 0.58, 0.28), _shade(c, 0.7))
    pen.ellipse((0.16, 0.3, 0.32, 0.48), _shade(c, 1.35))
    pen.line([(0.5, 0.24), (0.54, 0.0)], _jit(pen.rng, (100, 65, 30), 10), 0.06)
    if pen.coin(0.7):
        leaf = _jit(pen.rng, (60, 150, 50), 15)
        pen.poly([(0.54, 0.1), (0.68, 0.02), (0.84, 0.05), (0.7, 0.14)], leaf, _shade(leaf, 0.6))
    return name


def _orange(pen: _Pen) -> str | None:
    c = _jit(pen.rng, _ORANGE, 12)
    pen.ellipse((0.0, 0.0, 1.0, 1.0), c, _shade(c, 0.7))
    for _ in range(40):
        a, r = pen.u(0, 2 * math.pi), math.sqrt(pen.u(0, 1)) * 0.42
        pen.circle(0.5 + r * math.cos(a), 0.5 + r * math.sin(a), 0.012 * pen.w, _shade(c, 0.85))
    pen.ellipse((0.2, 0.18, 0.38, 0.34), _shade(c, 1.25))
    green = _jit(pen.rng, (70, 130, 40), 12)
    pen.ellipse((0.44, 0.02, 0.56, 0.1), green)
    if pen.coin(0.5):
        pen.poly([(0.52, 0.05), (0.7, -0.02), (0.82, 0.02), (0.66, 0.09)], green)
    return None


def _pizza(pen: _Pen) -> str | None:
    crust = _jit(pen.rng, (205, 145, 70), 14)
    cheese = _jit(pen.rng, (250, 205, 95), 10)
    pep = _jit(pen.rng, (170, 40, 30), 12)
    if pen.coin(0.65):  # whole pizza
        pen.ellipse((0.0, 0.0, 1.0, 1.0), crust, _shade(crust, 0.65))
        pen.ellipse((0.08, 0.08, 0.92, 0.92), cheese)
        for _ in range(int(pen.rng.integers(6, 11))):
            a, r = pen.u(0, 2 * math.pi), pen.u(0.05, 0.33)
            pen.circle(0.5 + r * math.cos(a), 0.5 + r * math.sin(a), 0.055 * pen.w, pep, _shade(pep, 0.7))
        for a in np.linspace(0, math.pi, int(pen.rng.integers(3, 5)), endpoint=False) + pen.u(0, 1):
            dx, dy = 0.42 * math.cos(a), 0.42 * math.sin(a)
            pen.line([(0.5 - dx, 0.5 - dy), (0.5 + dx, 0.5 + dy)], _shade(cheese, 0.8), 0.012)
    else:  # a slice: crust along the top, tip at the bottom
        cx, cy, big = pen.w / 2, pen.h - 1, pen.h - 1
        pen.d.pieslice([cx - big, cy - big, cx + big, cy + big], 240, 300, fill=crust, outline=_shade(crust, 0.65),
                       width=pen.lw)
        small = 0.85 * big
        pen.d.pieslice([cx - small, cy - small, cx + small, cy + small], 241, 299, fill=cheese)
        for y in sorted(pen.rng.uniform(0.25, 0.75, size=3)):
            x = 0.5 + pen.u(-0.5, 0.5) * (1 - y) * 0.45
            pen.circle(x, y, 0.07 * pen.w, pep, _shade(pep, 0.7))
    if pen.coin(0.5):
        basil = _jit(pen.rng, (50, 120, 40), 10)
        for _ in range(4):
            a, r = pen.u(0, 2 * math.pi), pen.u(0.05, 0.3)
            x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
            if pen.layer.getpixel((int(x * (pen.w - 1)), int(y * (pen.h - 1))))[3]:
                pen.circle(x, y, 0.03 * pen.w, basil)
    return None


def _donut(pen: _Pen) -> str | None:
    dough = _jit(pen.rng, (205, 150, 85), 12)
    icings = {"pink": (240, 140, 180), "brown": (95, 55, 30), "white": (245, 240, 235), "yellow": (245, 220, 90)}
    name = list(icings)[pen.rng.integers(len(icings))]
    icing = _jit(pen.rng, icings[name], 10)
    pen.ellipse((0.0, 0.0, 1.0, 1.0), dough, _shade(dough, 0.7))
    k, phase = int(pen.rng.integers(7, 11)), pen.u(0, 6.28)
    pts = [(0.5 + (0.41 + 0.035 * math.sin(k * a + phase)) * math.cos(a),
            0.5 + (0.41 + 0.035 * math.sin(k * a + phase)) * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 60)]
    pen.poly(pts, icing)
    pen.ellipse((0.3, 0.3, 0.7, 0.7), dough)
    for _ in range(16):
        a, r = pen.u(0, 2 * math.pi), pen.u(0.25, 0.38)
        x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
        b = pen.u(0, math.pi)
        sprinkle = _jit(pen.rng, list(COLORS.values())[pen.rng.integers(len(COLORS))], 0)
        pen.line([(x, y), (x + 0.04 * math.cos(b), y + 0.04 * math.sin(b))], sprinkle, 0.02)
    pen.ellipse((0.36, 0.36, 0.64, 0.64), _CLEAR)
    return name


def _cake(pen: _Pen) -> str | None:
    frostings = {"white": (245, 242, 235), "pink": (240, 150, 185), "brown": (100, 60, 35), "yellow": (245, 225, 130)}
    name = list(frostings)[pen.rng.integers(len(frostings))]
    top = _jit(pen.rng, frostings[name], 8)
    sponge = _jit(pen.rng, [(225, 185, 120), (120, 70, 40)][pen.rng.integers(2)], 10)
    o = _shade(sponge, 0.6)
    pen.ellipse((0.02, 0.82, 0.98, 1.0), sponge, o)
    pen.rect((0.02, 0.42, 0.98, 0.91), sponge)
    pen.line([(0.02, 0.42), (0.02, 0.91)], o, 0.015)
    pen.line([(0.98, 0.42), (0.98, 0.91)], o, 0.015)
    pen.rect((0.02, 0.64, 0.98, 0.7), top)
    pen.ellipse((0.02, 0.32, 0.98, 0.54), top, _shade(top, 0.75))
    for x in np.linspace(0.08, 0.92, 7):
        pen.ellipse((x - 0.05, 0.42, x + 0.05, 0.56 + pen.u(0.0, 0.08)), top)
    for x in np.linspace(0.3, 0.7, int(pen.rng.integers(1, 4))):
        _, wax = pen.pick(["red", "blue", "pink", "white", "yellow", "green"])
        pen.rect((x - 0.025, 0.14, x + 0.025, 0.42), wax)
        pen.ellipse((x - 0.035, 0.02, x + 0.035, 0.14), _jit(pen.rng, (255, 200, 50), 8))
    return name


# ----------------------------------------------------------------------------------------------- indoor
def _clock(pen: _Pen) -> str | None:
    name, rim = pen.pick(["black", "red", "blue", "brown", "silver", "green", "gold", "white"])
    face = _jit(pen.rng, (245, 242, 230), 8)
    pen.ellipse((0.0, 0.0, 1.0, 1.0), rim, _shade(rim, 0.6))
    pen.ellipse((0.08, 0.08, 0.92, 0.92), face)
    ink = (30, 30, 35, 255)
    for k in range(12):
        a = k * math.pi / 6
        r0 = 0.32 if k % 3 == 0 else 0.36
        pen.line([(0.5 + r0 * math.cos(a), 0.5 + r0 * math.sin(a)), (0.5 + 0.4 * math.cos(a), 0.5 + 0.4 * math.sin(a))],
                 ink, 0.03 if k % 3 == 0 else 0.015)
    hour, minute = pen.u(0, 2 * math.pi), pen.u(0, 2 * math.pi)
    pen.line([(0.5, 0.5), (0.5 + 0.2 * math.sin(hour), 0.5 - 0.2 * math.cos(hour))], ink, 0.045)
    pen.line([(0.5, 0.5), (0.5 + 0.32 * math.sin(minute), 0.5 - 0.32 * math.cos(minute))], ink, 0.03)
    if pen.coin(0.5):
        s = pen.u(0, 2 * math.pi)
        pen.line([(0.5, 0.5), (0.5 + 0.34 * math.sin(s), 0.5 - 0.34 * math.cos(s))], (200, 30, 30, 255), 0.012)
    pen.circle(0.5, 0.5, 0.035 * pen.w, ink)
    return name


def _book(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "blue", "green", "navy", "maroon", "brown", "purple", "teal", "yellow", "black"])
    o = _shade(c, 0.55)
    page = _jit(pen.rng, (245, 240, 225), 8)
    if pen.coin(0.7):  # closed, front cover
        pen.rect((0.06, 0.03, 1.0, 1.0), page, _shade(page, 0.7))
        for y in (0.2, 0.4, 0.6, 0.8):
            pen.line([(0.95, y), (1.0, y)], _shade(page, 0.8), 0.01)
        pen.rect((0.0, 0.0, 0.94, 0.97), c, o)
        pen.rect((0.0, 0.0, 0.12, 0.97), _shade(c, 0.75))
        _, ink = pen.pick(["gold", "white", "cream", "black"])
        pen.rect((0.25, 0.14, 0.82, 0.3), ink)
        pen.line([(0.3, 0.4), (0.77, 0.4)], ink, 0.02)
        pen.line([(0.35, 0.85), (0.72, 0.85)], ink, 0.02)
    else:  # open, seen from above
        pen.rect((0.0, 0.04, 1.0, 1.0), c, o, r=0.05)
        pen.poly([(0.03, 0.0), (0.49, 0.06), (0.49, 0.96), (0.03, 0.92)], page, _shade(page, 0.7))
        pen.poly([(0.97, 0.0), (0.51, 0.06), (0.51, 0.96), (0.97, 0.92)], page, _shade(page, 0.7))
        grey = (120, 120, 125, 255)
        for y in np.linspace(0.15, 0.82, 8):
            pen.line([(0.08, y), (0.44, y + 0.03)], grey, 0.012)
            pen.line([(0.56, y + 0.03), (0.92, y)], grey, 0.012)
    return name


def _vase(pen: _Pen) -> str | None:
    name, c = pen.pick(["blue", "white", "teal", "red", "green", "purple", "navy", "cream", "maroon"])
    o = _shade(c, 0.55)
    lip, neck, belly, base = pen.u(0.24, 0.4), pen.u(0.12, 0.22), pen.u(0.4, 0.5), pen.u(0.2, 0.32)
    yb = pen.u(0.5, 0.7)
    ys = np.linspace(0.0, 1.0, 28)

    def half(y: float) -> float:
        if y < 0.22:
            return lip + (neck - lip) * (y / 0.22) ** 0.7
        if y < yb:
            t = (y - 0.22) / (yb - 0.22)
            return neck + (belly - neck) * math.sin(t * math.pi / 2)
        t = (y - yb) / (1 - yb)
        return belly + (base - belly) * t * t

    left = [(0.5 - half(y), y) for y in ys]
    right = [(0.5 + half(y), y) for y in ys[::-1]]
    pen.poly(left + right, c, o)
    _, deco = pen.pick(["gold", "white", "navy", "red", "black", "yellow"])
    for y0 in sorted(pen.rng.uniform(0.3, 0.85, size=int(pen.rng.integers(1, 3)))):
        band = [y for y in np.linspace(y0, y0 + 0.06, 4)]
        pen.poly([(0.5 - half(y) + 0.01, y) for y in band] + [(0.5 + half(y) - 0.01, y) for y in band[::-1]], deco)
    pen.ellipse((0.5 - lip, -0.02, 0.5 + lip, 0.06), _shade(c, 0.5))
    pen.line([(0.5 - 0.6 * belly, 0.35), (0.5 - 0.6 * belly, 0.75)], _shade(c, 1.3), 0.04)
    return name


def _potted_plant(pen: _Pen) -> str | None:
    pot = _jit(pen.rng, [(190, 95, 55), (235, 235, 230), (60, 90, 170), (110, 110, 115)][pen.rng.integers(4)], 12)
    n = int(pen.rng.integers(6, 11))
    for k in range(n):
        a = -math.pi / 2 + (k / (n - 1) - 0.5) * pen.u(2.0, 2.8)
        length = pen.u(0.4, 0.6)
        tipx, tipy = 0.5 + length * math.cos(a) * 0.9, 0.6 + length * math.sin(a)
        nx, ny = -math.sin(a) * 0.07, math.cos(a) * 0.07
        mx, my = (0.5 + tipx) / 2, (0.6 + tipy) / 2
        leaf = _jit(pen.rng, (50, 140, 55), 30)
        pen.poly([(0.5, 0.6), (mx + nx, my + ny), (tipx, tipy), (mx - nx, my - ny)], leaf, _shade(leaf, 0.6))
        pen.line([(0.5, 0.6), (tipx, tipy)], _shade(leaf, 0.75), 0.01)
    pen.poly([(0.22, 0.64), (0.78, 0.64), (0.7, 1.0), (0.3, 1.0)], pot, _shade(pot, 0.6))
    pen.rect((0.17, 0.58, 0.83, 0.68), _shade(pot, 1.08), _shade(pot, 0.6))
    return None


def _teddy_bear(pen: _Pen) -> str | None:
    name, c = pen.pick(["brown", "brown", "tan", "beige", "grey", "white", "pink"])
    o = _shade(c, 0.6)
    light = _mix(c, (255, 245, 225), 0.45)
    dark = (35, 25, 20, 255)
    for box in ((0.08, 0.44, 0.32, 0.66), (0.68, 0.44, 0.92, 0.66), (0.16, 0.78, 0.44, 1.0), (0.56, 0.78, 0.84, 1.0)):
        pen.ellipse(box, c, o)
    pen.ellipse((0.24, 0.38, 0.76, 0.94), c, o)
    pen.ellipse((0.36, 0.52, 0.64, 0.82), light)
    for box in ((0.2, 0.0, 0.38, 0.15), (0.62, 0.0, 0.8, 0.15)):
        pen.ellipse(box, c, o)
    pen.ellipse((0.25, 0.03, 0.33, 0.12), light)
    pen.ellipse((0.67, 0.03, 0.75, 0.12), light)
    pen.ellipse((0.26, 0.04, 0.74, 0.44), c, o)
    pen.ellipse((0.4, 0.24, 0.6, 0.38), light)
    pen.ellipse((0.46, 0.25, 0.54, 0.3), dark)
    pen.circle(0.4, 0.19, 0.03 * pen.w, dark)
    pen.circle(0.6, 0.19, 0.03 * pen.w, dark)
    return name


# ----------------------------------------------------------------------------------------------- electronics
def _screen(pen: _Pen, box) -> None:
    x0, y0, x1, y1 = box
    sky = _jit(pen.rng, [(90, 150, 220), (40, 60, 120), (230, 170, 90), (60, 170, 200)][pen.rng.integers(4)], 15)
    pen.rect(box, sky)
    if pen.coin(0.6):
        hill = _jit(pen.rng, (60, 150, 70), 20)
        pen.poly([(x0, y0 + 0.7 * (y1 - y0)), (x0 + 0.35 * (x1 - x0), y0 + 0.5 * (y1 - y0)),
                  (x0 + 0.7 * (x1 - x0), y0 + 0.65 * (y1 - y0)), (x1, y0 + 0.55 * (y1 - y0)), (x1, y1), (x0, y1)], hill)
        pen.ellipse((x0 + 0.7 * (x1 - x0), y0 + 0.12 * (y1 - y0), x0 + 0.82 * (x1 - x0), y0 + 0.3 * (y1 - y0)),
                    (250, 230, 120, 255))
    else:
        for k in range(int(pen.rng.integers(1, 4))):
            a, b = pen.u(0.05, 0.5), pen.u(0.05, 0.5)
            win = _jit(pen.rng, (235, 235, 240), 10)
            pen.rect((x0 + a * (x1 - x0), y0 + b * (y1 - y0), x0 + (a + 0.4) * (x1 - x0), y0 + (b + 0.35) * (y1 - y0)),
                     win, (60, 60, 70, 255))


def _tv(pen: _Pen) -> str | None:
    name, c = pen.pick(["black", "black", "grey", "silver", "navy"])
    pen.rect((0.44, 0.82, 0.56, 0.94), _shade(c, 0.8))
    pen.rect((0.26, 0.92, 0.74, 1.0), c, _shade(c, 0.6), r=0.3)
    pen.rect((0.0, 0.0, 1.0, 0.86), c, _shade(c, 0.6), r=0.04)
    _screen(pen, (0.04, 0.05, 0.96, 0.78))
    pen.circle(0.92, 0.82, 0.008 * pen.w, (220, 40, 40, 255))
    return name


def _laptop(pen: _Pen) -> str | None:
    name, c = pen.pick(["silver", "silver", "grey", "black", "white"])
    o = _shade(c, 0.6)
    pen.rect((0.12, 0.0, 0.88, 0.57), _shade(c, 0.5) if name != "black" else c, o, r=0.04)
    _screen(pen, (0.15, 0.04, 0.85, 0.52))
    pen.poly([(0.12, 0.56), (0.88, 0.56), (1.0, 0.93), (0.0, 0.93)], c, o)
    pen.rect((0.0, 0.93, 1.0, 1.0), _shade(c, 0.75), o, r=0.3)
    keys = _shade(c, 0.45) if name != "black" else (80, 80, 85, 255)
    for r in range(4):
        y0, y1 = 0.6 + r * 0.055, 0.6 + r * 0.055 + 0.04
        inset = (1 - (y0 - 0.56) / 0.37) * 0.12
        xs = np.linspace(inset + 0.04, 1 - inset - 0.04, 12)
        for a, b in zip(xs[:-1], xs[1:]):
            pen.rect((a + 0.004, y0, b - 0.004, y1), keys)
    pen.rect((0.4, 0.83, 0.6, 0.91), _shade(c, 0.85), o)
    return name


def _mouse(pen: _Pen) -> str | None:
    name, c = pen.pick(["grey", "black", "white", "white", "silver", "blue", "red"])
    o = _shade(c, 0.55)
    line = _detail(c)
    cord = (50, 50, 55, 255) if name != "black" else (90, 90, 95, 255)
    pen.line([(0.5, 0.16), (0.5, 0.08), (0.6, 0.03), (0.75, 0.0)], cord, 0.05)
    body = [(0.5 + 0.5 * math.sin(a) * (0.82 + 0.18 * math.sin(a / 2) ** 2), 0.58 - 0.44 * math.cos(a))
            for a in np.linspace(0, 2 * math.pi, 40)]
    pen.poly(body, c, o)
    pen.line([(0.5, 0.15), (0.5, 0.46)], line, 0.035)
    pen.line([(0.1, 0.5), (0.3, 0.47), (0.5, 0.46), (0.7, 0.47), (0.9, 0.5)], line, 0.03)
    pen.rect((0.43, 0.2, 0.57, 0.36), (40, 40, 45, 255) if name != "black" else (150, 150, 155, 255), r=0.4)
    pen.ellipse((0.2, 0.58, 0.36, 0.86), _mix(c, (255, 255, 255), 0.3))
    return name


def _keyboard(pen: _Pen) -> str | None:
    name, c = pen.pick(["black", "grey", "white", "silver", "white"])
    o = _shade(c, 0.55)
    pen.rect((0.0, 0.0, 1.0, 1.0), c, o, r=0.08)
    key = _mix(c, (255, 255, 255), 0.25) if name in ("black", "grey") else _shade(c, 0.88)
    edge = _detail(c)
    rows = 5
    for r in range(rows):
        y0 = 0.1 + r * 0.16
        y1 = y0 + 0.12
        if r == rows - 1:
            for a, b in ((0.03, 0.2), (0.22, 0.3), (0.32, 0.68), (0.7, 0.78), (0.8, 0.97)):
                pen.rect((a, y0, b, y1), key, edge)
            continue
        n = 14 - (r % 2)
        xs = np.linspace(0.03, 0.97, n + 1)
        for a, b in zip(xs[:-1], xs[1:]):
            pen.rect((a + 0.003, y0, b - 0.003, y1), key, edge)
    return name


def _cell_phone(pen: _Pen) -> str | None:
    name, c = pen.pick(["black", "black", "white", "silver", "blue", "pink", "red", "gold"])
    o = _shade(c, 0.55)
    pen.rect((0.0, 0.0, 1.0, 1.0), c, o, r=0.14)
    if pen.coin(0.5):
        _screen(pen, (0.07, 0.09, 0.93, 0.87))
    else:
        pen.rect((0.07, 0.09, 0.93, 0.87), _jit(pen.rng, (30, 40, 70), 15))
        for r in range(4):
            for k in range(3):
                _, icon = pen.pick(["red", "blue", "green", "yellow", "pink", "teal", "white", "purple"])
                x, y = 0.14 + k * 0.27, 0.14 + r * 0.17
                pen.rect((x, y, x + 0.18, y + 0.1), icon, r=0.25)
    pen.rect((0.38, 0.035, 0.62, 0.055), _shade(c, 0.4), r=0.4)
    pen.circle(0.5, 0.935, 0.07 * pen.w, _shade(c, 0.8), o)
    return name


# ----------------------------------------------------------------------------------------------- outdoor / vehicles
def _wheel(pen: _Pen, cx: float, cy: float, r_px: float) -> None:
    pen.circle(cx, cy, r_px, (30, 30, 32, 255))
    pen.circle(cx, cy, r_px * 0.5, _jit(pen.rng, (175, 175, 180), 10))
    pen.circle(cx, cy, r_px * 0.15, (80, 80, 85, 255))


def _car(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "blue", "yellow", "white", "black", "green", "silver", "grey", "navy", "teal"])
    o = _shade(c, 0.55)
    glass = _jit(pen.rng, (160, 200, 230), 10)
    pen.poly([(0.18, 0.42), (0.3, 0.06), (0.68, 0.06), (0.84, 0.42)], c, o)
    pen.poly([(0.24, 0.4), (0.33, 0.12), (0.48, 0.12), (0.48, 0.4)], glass)
    pen.poly([(0.52, 0.4), (0.52, 0.12), (0.66, 0.12), (0.78, 0.4)], glass)
    pen.rect((0.0, 0.36, 1.0, 0.84), c, o, r=0.25)
    pen.line([(0.5, 0.42), (0.5, 0.78)], o, 0.015)
    pen.rect((0.94, 0.46, 1.0, 0.56), (250, 235, 150, 255))
    pen.rect((0.0, 0.46, 0.04, 0.56), (200, 30, 30, 255))
    r = 0.19 * pen.h
    _wheel(pen, 0.22, 0.8, r)
    _wheel(pen, 0.78, 0.8, r)
    return name


def _bus(pen: _Pen) -> str | None:
    name, c = pen.pick(["yellow", "yellow", "red", "blue", "green", "white", "teal"])
    o = _shade(c, 0.55)
    glass = _jit(pen.rng, (160, 200, 230), 10)
    pen.rect((0.0, 0.02, 1.0, 0.86), c, o, r=0.12)
    n = int(pen.rng.integers(5, 8))
    xs = np.linspace(0.04, 0.74, n + 1)
    for a, b in zip(xs[:-1], xs[1:]):
        pen.rect((a + 0.008, 0.14, b - 0.008, 0.44), glass, _shade(c, 0.7))
    pen.rect((0.77, 0.14, 0.86, 0.8), _shade(glass, 0.8), o)
    pen.rect((0.89, 0.12, 0.985, 0.5), glass, o, r=0.1)
    _, stripe = pen.pick(["white", "black", "red", "blue", "silver"])
    pen.rect((0.0, 0.54, 0.76, 0.6), stripe)
    pen.rect((0.95, 0.64, 0.99, 0.72), (250, 235, 150, 255))
    r = 0.17 * pen.h
    _wheel(pen, 0.18, 0.82, r)
    _wheel(pen, 0.68, 0.82, r)
    return name


def _bicycle(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "blue", "green", "black", "yellow", "white", "purple", "teal", "silver"])
    r = 0.31 * pen.h
    rx = r / (pen.w - 1)
    cy = 1 - 0.31 - 0.004
    tire = (30, 30, 32, 255)
    spoke = (150, 150, 155, 255)
    for cx in (rx + 0.005, 1 - rx - 0.005):
        for k in range(8):
            a = k * math.pi / 8
            dx, dy = 0.9 * r * math.cos(a) / (pen.w - 1), 0.9 * r * math.sin(a) / (pen.h - 1)
            pen.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], spoke, 0.008)
        pen.circle(cx, cy, r, None, tire, width=max(2, round(0.08 * r)))
    rear, front = (rx + 0.005, cy), (1 - rx - 0.005, cy)
    bottom, seat, head = (0.45, cy), (0.38, 0.26), (0.72, 0.22)
    frame = 0.035
    for a, b in ((rear, bottom), (bottom, seat), (seat, rear), (seat, head), (bottom, head), (head, front)):
        pen.line([a, b], c, frame)
    pen.line([(0.72, 0.22), (0.7, 0.06)], (60, 60, 65, 255), 0.03)
    pen.line([(0.63, 0.05), (0.8, 0.07)], (40, 40, 45, 255), 0.035)
    pen.poly([(0.3, 0.16), (0.46, 0.16), (0.42, 0.22), (0.33, 0.22)], (40, 30, 25, 255))
    pen.line([(0.38, 0.16), (0.38, 0.26)], (60, 60, 65, 255), 0.025)
    pen.circle(bottom[0], bottom[1], 0.07 * pen.h, (90, 90, 95, 255))
    return name


def _stop_sign(pen: _Pen) -> str | None:
    red = _jit(pen.rng, (200, 25, 30), 14)
    white = _jit(pen.rng, (245, 245, 245), 6)
    pole = pen.w / pen.h < 0.8
    cy = pen.w / 2 if pole else pen.h / 2
    r = pen.w / 2 - 1
    if pole:
        pen.rect((0.44, 0.4, 0.56, 1.0), _jit(pen.rng, (140, 140, 145), 10))
    pen.d.regular_polygon((pen.w / 2, cy, r), 8, rotation=22.5, fill=white)
    pen.d.regular_polygon((pen.w / 2, cy, r * 0.88), 8, rotation=22.5, fill=red)
    size = max(6, int(r * 0.52))
    font = ImageFont.load_default(size=size)
    pen.d.text((pen.w / 2, cy), "STOP", fill=white, font=font, anchor="mm")
    return "red"


def _traffic_light(pen: _Pen) -> str | None:
    name, c = pen.pick(["black", "grey", "yellow", "green", "black"])
    o = _shade(c, 0.5)
    pole = pen.coin(0.5)
    bottom = 0.78 if pole else 1.0
    if pole:
        pen.rect((0.4, 0.76, 0.6, 1.0), _jit(pen.rng, (90, 90, 95), 10))
    pen.rect((0.06, 0.0, 0.94, bottom), c, o, r=0.2)
    lit = int(pen.rng.integers(3))
    lamps = [(230, 30, 30), (245, 200, 30), (40, 210, 80)]
    r = 0.3 * pen.w
    for k in range(3):
        cy = (k + 0.5) * bottom / 3
        color = lamps[k] if k == lit else tuple(int(v * 0.3) for v in lamps[k])
        pen.circle(0.5, cy, r * 1.12, (20, 20, 22, 255))
        pen.circle(0.5, cy, r, color + (255,))
    return name


def _umbrella(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "blue", "black", "yellow", "green", "purple", "pink", "navy", "teal"])
    _, c2 = pen.pick(["white", "yellow", "black", "blue", "red"]) if pen.coin(0.5) else (name, _shade(c, 0.8))
    o = _shade(c, 0.5)
    shaft = (60, 60, 65, 255)
    pen.line([(0.5, 0.4), (0.5, 0.88)], shaft, 0.025)
    pen.d.arc(pen.b(0.36, 0.78, 0.52, 0.98), 0, 180, fill=_shade(c, 0.6) if pen.coin() else (90, 60, 35, 255),
              width=max(2, round(0.025 * pen.w)))
    n = int(pen.rng.integers(5, 9))
    box = pen.b(0.0, 0.06, 1.0, 0.82)
    for k in range(n):
        pen.d.pieslice(box, 180 + 180 * k / n, 180 + 180 * (k + 1) / n, fill=c if k % 2 == 0 else c2, outline=o,
                       width=max(1, pen.lw // 2))
    cy = (box[1] + box[3]) / 2
    for k in range(n):
        cx = box[0] + (k + 0.5) * (box[2] - box[0]) / n
        rx = (box[2] - box[0]) / n / 2
        pen.d.ellipse([cx - rx, cy - 0.045 * pen.h, cx + rx, cy + 0.08 * pen.h], fill=_CLEAR)
    pen.line([(0.5, 0.0), (0.5, 0.07)], shaft, 0.025)
    return name


def _kite(pen: _Pen) -> str | None:
    name, c = pen.pick(["red", "blue", "yellow", "green", "purple", "pink", "teal"])
    _, c2 = pen.pick(["white", "yellow", "blue", "red", "green", "black"])
    top, right, bottom, left, mid = (0.5, 0.0), (1.0, 0.24), (0.5, 0.72), (0.0, 0.24), (0.5, 0.24)
    pen.poly([top, right, mid], c)
    pen.poly([right, bottom, mid], c2)
    pen.poly([bottom, left, mid], c)
    pen.poly([left, top, mid], c2)
    spar = (70, 50, 30, 255)
    pen.line([top, bottom], spar, 0.025)
    pen.line([left, right], spar, 0.025)
    pen.poly([top, right, bottom, left], None, _shade(c, 0.5))
    tail = [(0.5 + 0.06 * math.sin(8 * t), 0.72 + 0.28 * t) for t in np.linspace(0, 1, 12)]
    pen.line(tail, (60, 60, 60, 255), 0.012)
    for t in (0.3, 0.6, 0.9):
        x, y = 0.5 + 0.06 * math.sin(8 * t), 0.72 + 0.28 * t
        pen.poly([(x, y), (x - 0.08, y - 0.025), (x - 0.08, y + 0.025)], c2)
        pen.poly([(x, y), (x + 0.08, y - 0.025), (x + 0.08, y + 0.025)], c2)
    return name


def _chair(pen: _Pen) -> str | None:
    name, c = pen.pick(["brown", "brown", "black", "white", "red", "blue", "green", "tan"])
    o = _shade(c, 0.55)
    back = _shade(c, 0.8)
    pen.rect((0.18, 0.6, 0.25, 0.9), back, o)
    pen.rect((0.75, 0.6, 0.82, 0.9), back, o)
    pen.rect((0.12, 0.0, 0.22, 0.55), c, o)
    pen.rect((0.78, 0.0, 0.88, 0.55), c, o)
    pen.rect((0.12, 0.0, 0.88, 0.1), c, o, r=0.3)
    if pen.coin(0.5):
        pen.rect((0.22, 0.2, 0.78, 0.28), c, o)
        pen.rect((0.22, 0.36, 0.78, 0.44), c, o)
    else:
        for x in (0.36, 0.47, 0.58):
            pen.rect((x, 0.1, x + 0.06, 0.52), c, o)
    pen.poly([(0.1, 0.5), (0.9, 0.5), (1.0, 0.62), (0.0, 0.62)], _shade(c, 1.1), o)
    pen.rect((0.0, 0.62, 1.0, 0.68), _shade(c, 0.85), o)
    pen.rect((0.02, 0.66, 0.11, 1.0), c, o)
    pen.rect((0.89, 0.66, 0.98, 1.0), c, o)
    return name


def _sports_ball(pen: _Pen) -> str | None:
    kind = ["soccer", "soccer", "tennis", "beach"][pen.rng.integers(4)]
    if kind == "soccer":
        white, black = _jit(pen.rng, (245, 245, 245), 5), (25, 25, 28, 255)
        pen.ellipse((0.0, 0.0, 1.0, 1.0), white)
        def pent(cx, cy, r, rot):
            pen.d.regular_polygon((cx * (pen.w - 1), cy * (pen.h - 1), r * pen.w), 5, rotation=rot, fill=black)

        rot = pen.u(0, 72)
        pent(0.5, 0.5, 0.14, rot)
        for k in range(5):
            a = math.radians(rot + 90 + 72 * k)
            pen.line([(0.5 + 0.14 * math.cos(a), 0.5 - 0.14 * math.sin(a)),
                      (0.5 + 0.36 * math.cos(a), 0.5 - 0.36 * math.sin(a))], black, 0.015)
            a2 = a + math.radians(36)
            pent(0.5 + 0.47 * math.cos(a2), 0.5 - 0.47 * math.sin(a2), 0.12, rot + 36)
    elif kind == "tennis":
        fuzz = _jit(pen.rng, (205, 225, 60), 12)
        pen.ellipse((0.0, 0.0, 1.0, 1.0), fuzz)
        seam = (245, 245, 240, 255)
        pen.d.arc(pen.b(-0.55, 0.1, 0.35, 0.9), -60, 60, fill=seam, width=max(2, round(0.035 * pen.w)))
        pen.d.arc(pen.b(0.65, 0.1, 1.55, 0.9), 120, 240, fill=seam, width=max(2, round(0.035 * pen.w)))
    else:
        cols = ["red", "yellow", "blue", "white", "green", "red"]
        for k, col in enumerate(cols):
            pen.d.pieslice(pen.b(0, 0, 1, 1), 60 * k + 15, 60 * (k + 1) + 15, fill=_jit(pen.rng, COLORS[col], 8))
        pen.ellipse((0.42, 0.42, 0.58, 0.58), (250, 250, 250, 255))
    mask = Image.new("L", pen.layer.size, 0)
    ImageDraw.Draw(mask).ellipse(pen.b(0, 0, 1, 1), fill=255)
    pen.layer.putalpha(ImageChops.multiply(pen.layer.getchannel("A"), mask))
    ImageDraw.Draw(pen.layer).ellipse(pen.b(0, 0, 1, 1), outline=(60, 60, 60, 255), width=max(1, pen.lw // 2))
    return kind


# ----------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ObjectStyle:
    """How a category is drawn: natural width/height ratio, rotation range (degrees, +-), mirror allowed."""

    draw: Callable[[_Pen], str | None]
    aspect: float
    rotation: float
    flip: bool = True


OBJECT_STYLES: dict[str, ObjectStyle] = {
    "fork": ObjectStyle(_fork, 0.22, 180), "knife": ObjectStyle(_knife, 0.16, 180),
    "spoon": ObjectStyle(_spoon, 0.26, 180), "scissors": ObjectStyle(_scissors, 0.6, 180),
    "toothbrush": ObjectStyle(_toothbrush, 0.16, 180), "cup": ObjectStyle(_cup, 1.15, 20),
    "bowl": ObjectStyle(_bowl, 1.8, 12), "bottle": ObjectStyle(_bottle, 0.32, 25),
    "wine glass": ObjectStyle(_wine_glass, 0.5, 15), "banana": ObjectStyle(_banana, 1.9, 180),
    "apple": ObjectStyle(_apple, 0.95, 30), "orange": ObjectStyle(_orange, 1.0, 180),
    "pizza": ObjectStyle(_pizza, 1.0, 180), "donut": ObjectStyle(_donut, 1.0, 180),
    "cake": ObjectStyle(_cake, 0.95, 8), "clock": ObjectStyle(_clock, 1.0, 15),
    "book": ObjectStyle(_book, 0.74, 35), "vase": ObjectStyle(_vase, 0.55, 10),
    "potted plant": ObjectStyle(_potted_plant, 0.8, 8), "teddy bear": ObjectStyle(_teddy_bear, 0.8, 20),
    "tv": ObjectStyle(_tv, 1.5, 8), "laptop": ObjectStyle(_laptop, 1.3, 15),
    "mouse": ObjectStyle(_mouse, 0.62, 60), "keyboard": ObjectStyle(_keyboard, 3.0, 25),
    "cell phone": ObjectStyle(_cell_phone, 0.5, 40), "car": ObjectStyle(_car, 2.1, 10),
    "bus": ObjectStyle(_bus, 2.6, 8), "bicycle": ObjectStyle(_bicycle, 1.65, 10),
    "stop sign": ObjectStyle(_stop_sign, 0.6, 10, flip=False), "traffic light": ObjectStyle(_traffic_light, 0.38, 8),
    "umbrella": ObjectStyle(_umbrella, 1.0, 30), "kite": ObjectStyle(_kite, 0.7, 35),
    "chair": ObjectStyle(_chair, 0.66, 10), "sports ball": ObjectStyle(_sports_ball, 1.0, 180),
}


def render_object(category: str, length: float, rng: np.random.Generator, supersample: int = 2
                  ) -> tuple[Image.Image, str | None]:
    """An RGBA image of one object whose longer side (before rotation) is ~`length` px, rotated and maybe
    mirrored, and its caption adjective. Drawn at `supersample`x and reduced for antialiasing."""
    style = OBJECT_STYLES[category]
    aspect = style.aspect * float(np.exp(rng.uniform(-0.15, 0.15)))
    if category == "stop sign":
        aspect = 1.0 if rng.random() < 0.5 else 0.5
    w, h = (length, length / aspect) if aspect >= 1 else (length * aspect, length)
    size = (max(4, round(w * supersample)), max(4, round(h * supersample)))
    layer = Image.new("RGBA", size, _CLEAR)
    adjective = style.draw(_Pen(layer, rng))
    # lighting: a soft linear ramp across the object
    rgba = np.asarray(layer, dtype=np.float32)  # (h, w, 4)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    ramp = (xs / size[0] - 0.5) * math.cos(angle) + (ys / size[1] - 0.5) * math.sin(angle)  # (h, w)
    rgba[..., :3] *= (1.0 + rng.uniform(0.1, 0.3) * ramp)[..., None]
    layer = Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA")
    if style.flip and rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle_deg = float(rng.uniform(-style.rotation, style.rotation))
    layer = layer.rotate(angle_deg, resample=Image.Resampling.BICUBIC, expand=True)
    if supersample > 1:
        layer = layer.reduce(supersample)
    return layer, adjective


# ----------------------------------------------------------------------------------------------- backgrounds
PATTERNS = ["striped", "checkered", "tiled", "blotchy", "polka-dot", "wavy", "speckled"]


def _muted(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    sat, val = rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.92)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return 255 * val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))  # HSV -> RGB, (3,)


def _smooth_field(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((width, height), Image.Resampling.BICUBIC))  # (H, W)


def render_background(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
    """(H, W, 3) uint8 textured background, its pattern word and its colour name."""
    a, b = _muted(rng), _muted(rng) if rng.random() < 0.4 else np.clip(_muted(rng) * 0.3 + 0.7 * _muted(rng), 0, 255)
    ys = np.arange(height, dtype=np.float32)[:, None]  # (H, 1)
    xs = np.arange(width, dtype=np.float32)[None, :]  # (1, W)
    angle = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)  # (H, W)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = a.astype(np.float32) + t[..., None] * (b - a).astype(np.float32)  # (H, W, 3)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    accent = _muted(rng).astype(np.float32)
    period = rng.uniform(10, 40)
    if pattern == "striped":
        th = rng.uniform(0, math.pi)
        u = (xs * math.cos(th) + ys * math.sin(th)) / period
        m = (np.sin(2 * math.pi * u) > rng.uniform(-0.4, 0.4)).astype(np.float32)
    elif pattern == "checkered":
        c = int(period)
        m = ((xs // c + ys // c) % 2).astype(np.float32)
    elif pattern == "tiled":
        c, lw = int(period) + 8, int(rng.integers(1, 4))
        m = (((xs % c) < lw) | ((ys % c) < lw)).astype(np.float32)
        accent = accent * 0.5
    elif pattern == "blotchy":
        f = _smooth_field(rng, width, height, int(rng.integers(16, 48)))
        m = 1 / (1 + np.exp(-3 * f))
    elif pattern == "polka-dot":
        c = int(period) + 6
        r = c * rng.uniform(0.15, 0.35)
        m = ((((xs % c) - c / 2) ** 2 + ((ys % c) - c / 2) ** 2) < r * r).astype(np.float32)
    elif pattern == "wavy":
        m = 0.5 + 0.5 * np.sin(2 * math.pi * ys / period + rng.uniform(1, 4) * np.sin(2 * math.pi * xs / (3 * period)))
    else:
        m = np.zeros((height, width), dtype=np.float32)
    m = np.broadcast_to(m, (height, width))[..., None] * np.float32(rng.uniform(0.2, 0.5))  # (H, W, 1)
    img += m * (accent - img)
    img *= (1 + 0.08 * _smooth_field(rng, width, height, 24))[..., None]
    grain = rng.uniform(1.5, 5) if pattern != "speckled" else rng.uniform(8, 14)
    img += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(grain)
    out = np.clip(img, 0, 255).astype(np.uint8)
    return out, pattern, color_name(out.reshape(-1, 3).mean(0))
