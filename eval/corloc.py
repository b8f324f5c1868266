"""CorLoc: % of images whose single predicted box has IoU >= 0.5 with at least one ground-truth box.

Datasets are read from their standard local layouts (nothing is downloaded):

* voc07 / voc12: ``ROOT`` is a VOCdevkit folder (or its parent) holding ``VOC2007`` / ``VOC2012`` with
  ``JPEGImages/``, ``Annotations/*.xml`` and ``ImageSets/Main/trainval.txt``.
* coco20k: ``ROOT`` holds ``train2014/`` (images) and ``annotations/instances_train2014.json``; the image
  list (the 19,817 COCO20k ids or file names, one per line) is passed with ``image_list``; iscrowd boxes removed.
* coco: any COCO-format folder: images in ``ROOT/images/`` (or ``ROOT``), instances in ``ROOT/annotations.json``,
  ``ROOT/annotations/instances.json`` (the layout `grounding world build` writes) or the one
  ``ROOT/annotations/instances_*.json``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from grounding.annotations import read_json


__all__ = ["CorLocItem", "iou", "corloc", "DATASETS", "load_dataset"]


@dataclass
class CorLocItem:
    image_id: str
    path: Path
    boxes: list[list[float]]  # ground truth [x0, y0, x1, y1] pixels


def iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(4,) vs (M, 4) -> (M,) intersection over union, boxes as [x0, y0, x1, y1]."""
    box, boxes = box.double(), boxes.double().view(-1, 4)
    x0 = torch.maximum(box[0], boxes[:, 0])
    y0 = torch.maximum(box[1], boxes[:, 1])
    x1 = torch.minimum(box[2], boxes[:, 2])
    y1 = torch.minimum(box[3], boxes[:, 3])
    inter = (x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)
    area = lambda b: (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def corloc(records: list[dict]) -> float:
    """Percentage of records marked correct."""
    return 100.0 * sum(bool(r["correct"]) for r in records) / len(records) if records else float("nan")


def _voc(year: str) -> Callable[[Path, Path | None], list[CorLocItem]]:
    def load(root: Path, image_list: Path | None = None) -> list[CorLocItem]:
        candidates = [root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}", root]
        base = next((c for c in candidates if (c / "Annotations").is_dir()), None)
        if base is None:
            raise FileNotFoundError(f"no VOC{year} layout under {root} (looked for {[str(c) for c in candidates]})")
        ids_file = image_list or base / "ImageSets" / "Main" / "trainval.txt"
        ids = [line.split()[0] for line in Path(ids_file).read_text().splitlines() if line.strip()]
        items = []
        for image_id in ids:
            tree = ElementTree.parse(base / "Annotations" / f"{image_id}.xml")
            boxes = []
            for obj in tree.findall("object"):
                bb = obj.find("bndbox")
                # VOC boxes are 1-based inclusive pixel indices: [x0 - 1, y0 - 1, x1, y1] in pixel edges
                x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
                boxes.append([x0 - 1, y0 - 1, x1, y1])
            items.append(CorLocItem(image_id, base / "JPEGImages" / f"{image_id}.jpg", boxes))
        return items

    return load


def _coco_items(images_dir: Path, annotation_file: Path, keep: set[str] | None) -> list[CorLocItem]:
    data = read_json(annotation_file, "COCO instances file", ("images", "annotations"))
    boxes: dict[int, list[list[float]]] = {}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    items = []
    for image in data["images"]:
        if keep is not None and str(image["id"]) not in keep and image["file_name"] not in keep:
            continue
        if image["id"] in boxes:
            items.append(CorLocItem(str(image["id"]), images_dir / image["file_name"], boxes[image["id"]]))
    return items


def _coco20k(root: Path, image_list: Path | None = None) -> list[CorLocItem]:
    if image_list is None:
        raise ValueError("coco20k needs --image-list: the file of COCO20k image ids or file names, one per line")
    keep = {Path(line.strip()).name if "." in line else str(int(line.strip()))
            for line in Path(image_list).read_text().splitlines() if line.strip()}
    return _coco_items(root / "train2014", root / "annotations" / "instances_train2014.json", keep)


def _coco_annotations(root: Path) -> Path:
    for candidate in (root / "annotations.json", root / "annotations" / "instances.json"):
        if candidate.is_file():
            return candidate
    found = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"no COCO instances file under {root}: looked for annotations.json, annotations/instances.json and "
        f"annotations/instances_*.json (found {[f.name for f in found] or 'none'}); pass the folder that holds them")


def _coco(root: Path, image_list: Path | None = None) -> list[CorLocItem]:
    images = root / "images" if (root / "images").is_dir() else root
    keep = None if image_list is None else {l.strip() for l in Path(image_list).read_text().splitlines() if l.strip()}
    return _coco_items(images, _coco_annotations(root), keep)


DATASETS: dict[str, Callable[[Path, Path | None], list[CorLocItem]]] = {
    "voc07": _voc("2007"), "voc12": _voc("2012"), "coco20k": _coco20k, "coco": _coco,
}


def load_dataset(name: str, root: str | Path, image_list: str | Path | None = None) -> list[CorLocItem]:
    if name not in DATASETS:
        raise KeyError(f"unknown CorLoc dataset {name!r}; choose from {sorted(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    return DATASETS[name](root, Path(image_list) if image_list else None)
