"""Config files checked key by key before any work: one line naming the file, the key and the allowed values.

`load_world_config(path)` reads a world config YAML (`grounding world build --config`, `grounding demo
--world-config`): invalid YAML names the line; every key's type and range is checked (`WORLD_RULES`), so
`captions_per_image: 2.5` or `true`, `short_side: [100000, 100000]` (tens of GiB per image) and NaN numbers are
refused before a single image is drawn. `check_world_space(out, images, config)` refuses a world that would not
fit on the disk, before writing anything.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

__all__ = ["load_world_config", "check_world_data", "check_world_space", "read_yaml", "WORLD_RULES",
           "MAX_WORLD_IMAGES"]

MAX_WORLD_IMAGES = 10_000_000

# key: (kind, low, high); kind "int" / "number" / "pair-int" / "pair-number" / "prob"
WORLD_RULES: dict[str, tuple[str, float, float]] = {
    "first_weight": ("number", 1e-9, 1e6),
    "partner_weight": ("number", 0, 1e6),
    "zipf_exponent": ("number", 0, 20),
    "objects_per_image": ("pair-int", 1, 64),
    "duplicate_prob": ("number", 0, 1),
    "short_side": ("pair-int", 16, 4096),
    "aspect": ("pair-number", 0.1, 10),
    "small_fraction": ("number", 0, 1),
    "small_size": ("pair-number", 1e-3, 1),
    "size": ("pair-number", 1e-3, 1),
    "placement_tries": ("int", 1, 1000),
    "max_overlap": ("number", 0, 1),
    "min_visible": ("number", 0, 1),
    "min_pixels": ("int", 0, 1_000_000),
    "captions_per_image": ("int", 1, 100),
    "mention_prob": ("number", 0, 1),
    "supersample": ("int", 1, 8),
    "png_compress_level": ("int", 0, 9),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _describe(kind: str, low: float, high: float) -> str:
    what = {"int": "an integer", "number": "a number", "pair-int": "[min, max], integers",
            "pair-number": "[min, max], numbers"}[kind]
    return f"{what} in {low:g}..{high:g}" + (" with min <= max" if kind.startswith("pair") else "")


def check_world_data(data: Any, source: str) -> None:
    """ValueError naming `source` and the first key whose value has the wrong type or range."""
    from grounding.world import WorldConfig

    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of key: value, got {type(data).__name__}")
    known = set(WorldConfig.__dataclass_fields__)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    for key, value in data.items():
        if key in WORLD_RULES:
            kind, low, high = WORLD_RULES[key]
            if kind.startswith("pair"):
                check = _is_int if kind == "pair-int" else _is_number
                good = (isinstance(value, list) and len(value) == 2 and all(check(v) for v in value)
                        and all(low <= v <= high for v in value) and value[0] <= value[1])
            else:
                good = (_is_int if kind == "int" else _is_number)(value) and low <= value <= high
            if not good:
                raise ValueError(f"{source}: {key} must be {_describe(kind, low, high)}, got {value!r}")
        elif key == "categories":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
                raise ValueError(f"{source}: categories must be a non-empty list of category names, got {value!r}")
        elif key == "pairs":
            if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and
                                                      all(isinstance(c, str) for c in p) for p in value):
                raise ValueError(f"{source}: pairs must be a list of [first, partner] category names, got {value!r}")
        elif key == "partner_prob":
            if not isinstance(value, dict) or set(value) != {"train", "val", "test"} or not all(
                    _is_number(v) and 0 <= v <= 1 for v in value.values()):
                raise ValueError(f"{source}: partner_prob must map train, val and test each to a number in 0..1, "
                                 f"got {value!r}")


def load_world_config(path: str | Path | None):
    """The WorldConfig of a YAML file (None: the defaults), checked key by key."""
    from grounding.world import WorldConfig

    if path is None:
        return WorldConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world config {path} does not exist")
    data = read_yaml(path, "world config")
    check_world_data(data, f"world config {path}")
    return WorldConfig.from_dict(data, source=str(path))


def check_world_space(out: str | Path, images: int, config) -> None:
    """Refuse `images` out of range, or a world whose PNGs (estimated at their largest size) would not fit."""
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_WORLD_IMAGES:
        raise ValueError(f"--images must be >= 1 and at most {MAX_WORLD_IMAGES}, got {images!r}")
    side = config.short_side[1]
    # a PNG of drawn shapes on a textured background compresses to about a third of its raw RGB bytes
    per_image = side * side * max(config.aspect[1], 1 / config.aspect[0]) * 3 / 3 + 4096 * config.captions_per_image
    need = images * per_image
    out = Path(out).resolve()
    probe = next((p for p in (out, *out.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ValueError(f"--images {images}: the world needs about {need / 2**30:.1f} GiB and {probe} has "
                         f"{free / 2**30:.1f} GiB free; ask for fewer images or choose another --out")


def read_yaml(path: Path, label: str):
    """A YAML file's content ({} when empty); invalid YAML is one ValueError naming `label`, the file and the line."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(f"{label} {path}{where}: not valid YAML ({problem})") from None
    return {} if data is None else data
