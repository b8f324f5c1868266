"""Users' annotation files: `read_json` (a missing file, invalid JSON or missing keys is an error naming the file)
and `objects_per_image` (COCO instances -> the distinct categories of each image). Evaluation (POPE, CHAIR,
CorLoc) and training (grounded questions, the projector alignment) both read COCO files, so this lives below both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json", "objects_per_image"]


def read_json(path: str | Path, what: str = "file", keys: tuple[str, ...] = ()) -> Any:
    """A user's JSON file; a missing file, invalid JSON, or (with `keys`) an object without those keys is an
    error naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    if keys:
        missing = [k for k in keys if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(f"{path}: not a {what}: no {', '.join(map(repr, missing))} "
                             f"(it needs {', '.join(map(repr, keys))})")
    return data


def objects_per_image(instances: dict) -> dict[int, list[str]]:
    """image id -> distinct category names in annotation order (POPE's "first three" are the first three here)."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    per_image: dict[int, list[str]] = {}
    for ann in instances["annotations"]:
        objects = per_image.setdefault(ann["image_id"], [])
        if names[ann["category_id"]] not in objects:
            objects.append(names[ann["category_id"]])
    return per_image
