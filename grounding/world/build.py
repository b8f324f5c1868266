"""A procedural COCO-format world with a planted language prior, for measuring object hallucination.

Images hold 1-8 drawn objects (COCO category names) on textured backgrounds, with occlusion, small objects and
varied sizes. For each configured pair (first -> partner), an image that holds the first also holds the
partner with probability `partner_prob[split]` (high in train, about one half in val and test), and the
partner is absent otherwise: a model trained on train learns "fork => knife", which POPE's adversarial split
and CHAIR then probe on test. Category frequencies follow Zipf-like weights, the firsts of pairs being the most
frequent.

`build_world(out_dir, seed, num_images, split)` writes:

    images/<split>_<i>.png        RGB images
    annotations/instances.json    COCO instances: boxes, areas and visible-pixel masks as COCO RLE
    annotations/captions.json     COCO captions: `captions_per_image` sentences per image
    world.json                    categories, pairs, all parameters, seed, split and measured statistics

Files are byte-identical for the same (seed, split, images, config), and image i depends only on
(seed, split, i), so a small world is a prefix of a larger one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from .captions import CaptionObject, _where, make_captions
from .draw import COCO_CATEGORIES, OBJECT_STYLES, render_background, render_object

__all__ = ["WorldConfig", "WorldSummary", "build_world", "SPLITS", "DEFAULT_CATEGORIES", "DEFAULT_PAIRS"]

SPLITS = ("train", "val", "test")
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

DEFAULT_PAIRS: list[list[str]] = [["fork", "knife"], ["mouse", "keyboard"], ["cup", "spoon"], ["car", "stop sign"],
                                  ["banana", "apple"], ["umbrella", "kite"]]
# the categories outside the pairs are drawn with Zipf weights in this order
DEFAULT_CATEGORIES: list[str] = [
    "fork", "mouse", "cup", "car", "banana", "umbrella", "bottle", "book", "clock", "chair", "bowl", "knife",
    "keyboard", "spoon", "stop sign", "apple", "kite", "laptop", "cell phone", "tv", "pizza", "donut", "cake",
    "orange", "wine glass", "vase", "potted plant", "teddy bear", "bicycle", "bus", "traffic light", "scissors",
    "toothbrush", "sports ball",
]


@dataclass
class WorldConfig:
    """Everything that shapes a world except seed, split and image count. YAML keys = field names."""

    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    pairs: list[list[str]] = field(default_factory=lambda: [list(p) for p in DEFAULT_PAIRS])
    partner_prob: dict[str, float] = field(default_factory=lambda: {"train": 0.9, "val": 0.5, "test": 0.5})
    first_weight: float = 0.6  # sampling weight of each pair's first (the most frequent other category has 1)
    partner_weight: float = 0.6  # sampling weight of each partner on its own (it also comes with its first)
    zipf_exponent: float = 0.9  # the other categories: 1 / (rank + 1) ** exponent, rank = order in `categories`
    objects_per_image: list[int] = field(default_factory=lambda: [1, 8])  # [min, max], uniform
    duplicate_prob: float = 0.12  # chance that the next object repeats an already chosen category
    short_side: list[int] = field(default_factory=lambda: [192, 320])
    aspect: list[float] = field(default_factory=lambda: [0.75, 1.33])  # width / height
    small_fraction: float = 0.2  # share of objects drawn small
    small_size: list[float] = field(default_factory=lambda: [0.06, 0.12])  # longer side / image short side
    size: list[float] = field(default_factory=lambda: [0.15, 0.45])
    placement_tries: int = 8  # candidate positions per object; the least-overlapping one wins
    max_overlap: float = 0.25  # accept a position at once if its box overlaps earlier boxes by at most this share
    min_visible: float = 0.4  # drop an object whose visible pixels are below this share of its drawn pixels
    min_pixels: int = 30  # ... or below this count
    captions_per_image: int = 5
    mention_prob: float = 0.8
    supersample: int = 2
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------------------------------- io
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "world config") -> WorldConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of option -> value, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> WorldConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"world config {path} does not exist")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ---------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        self.categories = [str(c) for c in self.categories]
        self.pairs = [[str(a) for a in p] for p in self.pairs]
        self.partner_prob = {str(k): float(v) for k, v in dict(self.partner_prob).items()}
        for key in ("objects_per_image", "short_side", "aspect", "small_size", "size"):
            value = list(getattr(self, key))
            if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
                raise ValueError(f"world config: {key} must be [min, max] with 0 < min <= max, got {value}")
            setattr(self, key, value)
        unknown = [c for c in self.categories if c not in OBJECT_STYLES]
        if unknown:
            raise ValueError(f"world config: categories {unknown} cannot be drawn; choose from {sorted(OBJECT_STYLES)}")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("world config: categories has repeated names")
        members = [c for p in self.pairs for c in p]
        if any(len(p) != 2 for p in self.pairs):
            raise ValueError(f"world config: each pair must be [first, partner], got {self.pairs}")
        missing = [c for c in members if c not in self.categories]
        if missing:
            raise ValueError(f"world config: pair members {missing} are not in categories")
        if len(set(members)) != len(members):
            raise ValueError(f"world config: pair members must all be distinct, got {self.pairs}")
        if set(self.partner_prob) != set(SPLITS) or not all(0 <= v <= 1 for v in self.partner_prob.values()):
            raise ValueError(f"world config: partner_prob needs train, val and test in [0, 1], got {self.partner_prob}")
        for key in ("duplicate_prob", "small_fraction", "max_overlap", "min_visible", "mention_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"world config: {key} must be in [0, 1], got {getattr(self, key)}")
        if int(self.objects_per_image[1]) < 2 and self.pairs:
            raise ValueError("world config: objects_per_image max must be >= 2 to place a partner")
        if self.captions_per_image < 1 or self.placement_tries < 1 or self.supersample < 1:
            raise ValueError("world config: captions_per_image, placement_tries and supersample must be >= 1")
        if self.first_weight <= 0 or self.partner_weight < 0 or self.zipf_exponent < 0:
            raise ValueError("world config: first_weight must be > 0, partner_weight and zipf_exponent >= 0")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError("world config: png_compress_level must be in 0..9")

    def sampling_weights(self) -> dict[str, float]:
        """Category -> weight of being drawn for an image: `first_weight` for the firsts of the pairs,
        `partner_weight` for the partners (which are also placed with their firsts), and Zipf weights
        1 / (rank + 1) ** zipf_exponent for the other categories in `categories` order."""
        firsts, partners = {p[0] for p in self.pairs}, {p[1] for p in self.pairs}
        others = [c for c in self.categories if c not in firsts | partners]
        weights = {c: 1.0 / (rank + 1.0) ** self.zipf_exponent for rank, c in enumerate(others)}
        weights.update({c: self.first_weight for c in firsts})
        weights.update({c: self.partner_weight for c in partners})
        return {c: weights[c] for c in self.categories}


@dataclass
class WorldSummary:
    out_dir: Path
    split: str
    seed: int
    num_images: int
    num_annotations: int
    num_captions: int
    seconds: float
    partner_rates: dict[str, float]  # "first -> partner": share of images with the first that hold the partner
    objects_per_image: float  # mean visible objects per image
    category_frequency: dict[str, float]  # share of images that hold each category
    stats: dict = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------------------------------------ one image
@dataclass
class _Placed:
    category: str
    layer: Image.Image
    adjective: str | None
    x: int  # top-left of the layer in the image (may be negative)
    y: int
    drawn_pixels: int  # pixels of the whole object (alpha >= 128), inside the image or not
    protected: bool


def _choose_categories(cfg: WorldConfig, split: str, rng: np.random.Generator) -> tuple[list[str], set[str]]:
    """Object categories for one image (repeats = several instances) and the pair members that must stay."""
    order = cfg.categories
    weights = np.array([cfg.sampling_weights()[c] for c in order])
    lo, hi = int(cfg.objects_per_image[0]), int(cfg.objects_per_image[1])
    n = int(rng.integers(lo, hi + 1))
    chosen: list[str] = []
    banned: set[str] = set()

    def draw_new(exclude: set[str]) -> str | None:
        allowed = np.array([c not in exclude for c in order])
        if not allowed.any():
            return None
        p = weights * allowed
        return order[int(rng.choice(len(order), p=p / p.sum()))]

    while len(chosen) < n:
        if chosen and rng.random() < cfg.duplicate_prob:
            chosen.append(chosen[int(rng.integers(len(chosen)))])
        else:
            pick = draw_new(set(chosen) | banned)
            if pick is None:
                break
            chosen.append(pick)
    protected: set[str] = set()
    prob = cfg.partner_prob[split]
    members = {c for pair in cfg.pairs for c in pair}
    for first, partner in cfg.pairs:
        if first not in chosen:
            continue
        if rng.random() < prob:  # place the partner
            protected |= {first, partner}
            if partner not in chosen:
                if len(chosen) >= hi:
                    removable = [i for i, c in enumerate(chosen) if c not in protected or chosen[:i].count(c) > 0]
                    if not removable:
                        chosen = [c for c in chosen if c != first]
                        protected -= {first, partner}
                        continue
                    chosen.pop(removable[int(rng.integers(len(removable)))])
                chosen.append(partner)
        else:  # keep the partner out; a stand-in is never a pair member (it would escape its own decision)
            banned.add(partner)
            while partner in chosen:
                i = chosen.index(partner)
                pick = draw_new(set(chosen) | banned | members)
                if pick is None:
                    chosen.pop(i)
                else:
                    chosen[i] = pick
    order_idx = rng.permutation(len(chosen))
    return [chosen[i] for i in order_idx], protected


def _place(cfg: WorldConfig, categories: list[str], protected: set[str], width: int, height: int,
           rng: np.random.Generator) -> list[_Placed]:
    short = min(width, height)
    placed: list[_Placed] = []
    boxes: list[tuple[float, float, float, float]] = []
    for category in categories:
        for attempt in range(4):
            small = rng.random() < cfg.small_fraction
            lo, hi = cfg.small_size if small else cfg.size
            length = short * float(rng.uniform(lo, hi)) * (1.0 + 0.5 * attempt)
            layer, adjective = render_object(category, length, rng, cfg.supersample)
            alpha = np.asarray(layer.getchannel("A")) >= 128  # (h, w)
            drawn = int(alpha.sum())
            if drawn >= cfg.min_pixels / max(cfg.min_visible, 0.1):
                break
        lw, lh = layer.size
        best, best_cost = None, None
        for _ in range(cfg.placement_tries):
            # at least ~80% of the layer's width and height inside the image
            x = int(round(rng.uniform(-0.2 * lw, max(-0.2 * lw, width - 0.8 * lw))))
            y = int(round(rng.uniform(-0.2 * lh, max(-0.2 * lh, height - 0.8 * lh))))
            box = (x, y, x + lw, y + lh)
            overlap = sum(max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
                          for b in boxes) / float(lw * lh)
            if best_cost is None or overlap < best_cost:
                best, best_cost = (x, y), overlap
            if overlap <= cfg.max_overlap:
                break
        assert best is not None
        boxes.append((best[0], best[1], best[0] + lw, best[1] + lh))
        placed.append(_Placed(category, layer, adjective, best[0], best[1], drawn, category in protected))
    return placed


def _compose(background: np.ndarray, placed: list[_Placed]) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and the owner map (H, W): index of the top object at each pixel, -1 for background."""
    height, width = background.shape[:2]
    canvas = Image.fromarray(background, "RGB").convert("RGBA")
    owner = np.full((height, width), -1, dtype=np.int16)  # (H, W)
    for index, obj in enumerate(placed):
        lw, lh = obj.layer.size
        x0, y0, x1, y1 = max(0, obj.x), max(0, obj.y), min(width, obj.x + lw), min(height, obj.y + lh)
        if x1 <= x0 or y1 <= y0:
            continue
        crop = obj.layer.crop((x0 - obj.x, y0 - obj.y, x1 - obj.x, y1 - obj.y))
        canvas.alpha_composite(crop, (x0, y0))
        solid = np.asarray(crop.getchannel("A")) >= 128  # (y1 - y0, x1 - x0)
        owner[y0:y1, x0:x1][solid] = index
    return canvas.convert("RGB"), owner


def _visible(cfg: WorldConfig, placed: list[_Placed], owner: np.ndarray) -> list[int]:
    """Visible pixel count per object, 0 where the object is dropped (too occluded or too small)."""
    counts = np.bincount(owner.ravel() + 1, minlength=len(placed) + 1)[1:]
    return [int(n) if n >= cfg.min_pixels and n >= cfg.min_visible * obj.drawn_pixels else 0
            for n, obj in zip(counts, placed)]


def _render_image(cfg: WorldConfig, split: str, seed: int, index: int):
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
    short = int(rng.integers(cfg.short_side[0], cfg.short_side[1] + 1))
    aspect = float(np.exp(rng.uniform(np.log(cfg.aspect[0]), np.log(cfg.aspect[1]))))
    width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    background, pattern, color = render_background(width, height, rng)
    categories, protected = _choose_categories(cfg, split, rng)
    placed = _place(cfg, categories, protected, width, height, rng)
    image, owner = _compose(background, placed)
    visible = _visible(cfg, placed, owner)
    # a partner that was placed must stay visible while its first is: lift it to the top
    for _ in range(len(cfg.pairs)):
        present = {o.category for o, v in zip(placed, visible) if v}
        lift = [i for i, o in enumerate(placed) if o.protected and o.category in {p for f, p in cfg.pairs
                if f in present and p not in present}]
        if not lift:
            break
        for i in sorted(set(lift), reverse=True):
            placed.append(placed.pop(i))
        image, owner = _compose(background, placed)
        visible = _visible(cfg, placed, owner)
    if not any(visible):  # never an empty image: put the largest object on top
        largest = max(range(len(placed)), key=lambda i: placed[i].drawn_pixels)
        placed.append(placed.pop(largest))
        image, owner = _compose(background, placed)
        visible = _visible(cfg, placed, owner)
    dropped = sum(1 for v in visible if not v)
    if dropped:  # erase dropped objects: no unannotated fragments (the others only gain pixels)
        placed = [o for o, v in zip(placed, visible) if v]
        image, owner = _compose(background, placed)
        visible = _visible(cfg, placed, owner)
    objects = []
    for index_, (obj, count) in enumerate(zip(placed, visible)):
        if not count:
            continue
        mask = np.asfortranarray((owner == index_).astype(np.uint8))  # (H, W)
        rle = mask_utils.encode(mask)
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        objects.append({"category": obj.category, "adjective": obj.adjective, "rle": rle, "bbox": bbox,
                        "area": int(mask_utils.area(_rle_bytes(rle)))})
    caption_objects = []
    by_category: dict[str, list[dict]] = {}
    for obj in objects:
        by_category.setdefault(obj["category"], []).append(obj)
    for category, items in by_category.items():
        big = max(items, key=lambda o: o["area"])
        x, y, w, h = big["bbox"]
        caption_objects.append(CaptionObject(category, len(items), big["adjective"],
                                             _where((x + w / 2) / width, (y + h / 2) / height),
                                             float(sum(o["area"] for o in items))))
    captions = make_captions(caption_objects, pattern, color, rng, cfg.captions_per_image, cfg.mention_prob)
    return image, width, height, objects, captions, dropped


def _rle_bytes(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


# ------------------------------------------------------------------------------------------------ the world
def _write_json(path: Path, data, indent: int | None = None) -> None:
    text = json.dumps(data, sort_keys=True, indent=indent, separators=(",", ": ") if indent else (",", ":"))
    path.write_text(text + "\n")


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out_dir} exists and is not empty; pass --overwrite or choose a new folder")
        for name in ("images", "annotations"):
            if (out_dir / name).is_dir():
                shutil.rmtree(out_dir / name)
        (out_dir / "world.json").unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)


def build_world(out_dir: str | Path, seed: int, num_images: int, split: str, config: WorldConfig | None = None,
                overwrite: bool = False) -> WorldSummary:
    """Generate a world into `out_dir` (see the module docstring for the files)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if int(num_images) < 1:
        raise ValueError(f"images must be >= 1, got {num_images}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    cfg = config or WorldConfig()
    cfg.validate()
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    start = time.perf_counter()
    categories = [{"id": COCO_CATEGORIES[c][0], "name": c, "supercategory": COCO_CATEGORIES[c][1]}
                  for c in sorted(cfg.categories, key=lambda c: COCO_CATEGORIES[c][0])]
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations, caption_rows = [], [], []
    per_image: list[set[str]] = []
    instances_per_category: Counter = Counter()
    dropped_total = 0
    for i in range(int(num_images)):
        image, width, height, objects, captions, dropped = _render_image(cfg, split, int(seed), i)
        file_name = f"{split}_{i:06d}.png"
        image.save(out / "images" / file_name, format="PNG", compress_level=cfg.png_compress_level)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[obj["category"]],
                                "bbox": obj["bbox"], "area": obj["area"], "iscrowd": 0, "segmentation": obj["rle"]})
            instances_per_category[obj["category"]] += 1
        for caption in captions:
            caption_rows.append({"id": len(caption_rows) + 1, "image_id": image_id, "caption": caption})
        per_image.append({o["category"] for o in objects})
        dropped_total += dropped
    info = {"description": f"grounding procedural hallucination world ({split}, seed {seed})", "version": "1"}
    _write_json(out / "annotations" / "instances.json",
                {"info": info, "images": images, "annotations": annotations, "categories": categories})
    _write_json(out / "annotations" / "captions.json", {"info": info, "images": images, "annotations": caption_rows})
    n = len(images)
    rates, pair_stats = {}, {}
    for first, partner in cfg.pairs:
        with_first = sum(first in s for s in per_image)
        both = sum(first in s and partner in s for s in per_image)
        partner_alone = sum(partner in s and first not in s for s in per_image)
        rate = both / with_first if with_first else float("nan")
        rates[f"{first} -> {partner}"] = round(rate, 4) if with_first else None
        pair_stats[f"{first} -> {partner}"] = {"images_with_first": with_first, "images_with_both": both,
                                               "partner_rate": rates[f"{first} -> {partner}"],
                                               "images_with_partner_only": partner_alone}
    frequency = {c: round(sum(c in s for s in per_image) / n, 4) for c in cfg.categories}
    objects_count = Counter(a["image_id"] for a in annotations)
    per_image_objects = [objects_count[i + 1] for i in range(n)]
    stats = {
        "images": n, "annotations": len(annotations), "captions": len(caption_rows),
        "objects_per_image": {"mean": round(float(np.mean(per_image_objects)), 4), "min": int(min(per_image_objects)),
                              "max": int(max(per_image_objects))},
        "categories_per_image_mean": round(float(np.mean([len(s) for s in per_image])), 4),
        "images_with_3_or_more_categories": sum(len(s) >= 3 for s in per_image),
        "dropped_objects": dropped_total, "pairs": pair_stats, "category_image_frequency": frequency,
        "category_instances": {c: instances_per_category[c] for c in cfg.categories},
        "small_annotations": sum(a["area"] < 32 * 32 for a in annotations),
    }
    _write_json(out / "world.json", {"format": "grounding-world-1", "seed": int(seed), "split": split,
                                     "num_images": n, "categories": categories, "pairs": cfg.pairs,
                                     "config": cfg.to_dict(), "stats": stats}, indent=2)
    seconds = time.perf_counter() - start
    return WorldSummary(out, split, int(seed), n, len(annotations), len(caption_rows), seconds, rates,
                        stats["objects_per_image"]["mean"], frequency, stats)
