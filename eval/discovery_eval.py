"""`grounding eval discovery`: single-object and instance discovery on a COCO-format set, one tower pass per image.

For each single-object method (`grounding.objects.discovery.DISCOVERY_METHODS`): CorLoc (box IoU >= 0.5 with some
ground-truth box) and, where the set has instance masks, the IoU of the method's mask with the union of the
ground-truth masks. For each instance method (`grounding.objects.instances.INSTANCE_METHODS`, `--max-objects` rounds):
average recall at IoU 0.5 of boxes and masks for the first N instances (AR@N; one-to-one greedy matching in
instance order, as COCO's evaluation matches by score), the CorLoc of the first instance, and the IoU of the union
of the first `max_objects` instance masks with the ground-truth union. Every figure comes with a 95 % percentile
bootstrap interval over images (`bootstrap` draws, fixed seed).

Ground-truth masks are decoded with pycocotools (polygons and RLE); crowd annotations are left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from grounding.objects.discovery import discover
from grounding.images import ImageError, load_image, original_size, to_original_pixels
from grounding.objects.instances import instance_pixel_masks, instances
from grounding.objects.object_dino import ObjectDINO, ObjectDINOConfig
from grounding.objects.regions import upsample_maps
from grounding.viz import instance_picture

from .corloc import _coco_annotations

__all__ = ["InstanceItem", "load_instance_dataset", "box_iou_matrix", "mask_iou_matrix", "recalled",
           "evaluate_discovery", "CachedObjectDINO", "summarise", "bootstrap_interval", "AR_AT"]

log = logging.getLogger(__name__)
AR_AT = (1, 5, 10)


@dataclass
class InstanceItem:
    image_id: str
    path: Path
    boxes: np.ndarray  # (G, 4) [x0, y0, x1, y1] pixels
    masks: np.ndarray | None  # (G, H, W) bool, or None when the set has no segmentations


def load_instance_dataset(root: str | Path, limit: int | None = None) -> list[InstanceItem]:
    """Images with at least one non-crowd annotation from a COCO-format folder (see `eval.corloc`'s layouts)."""
    from pycocotools.coco import COCO

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    images_dir = root / "images" if (root / "images").is_dir() else root
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(_coco_annotations(root)))
    items = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        info = coco.loadImgs([image_id])[0]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float64)
        masks = None
        if all(a.get("segmentation") for a in anns):
            masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        items.append(InstanceItem(str(image_id), images_dir / info["file_name"], boxes, masks))
        if limit and len(items) >= limit:
            break
    return items


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, 4), (G, 4) -> (P, G) IoU."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, H, W), (G, H, W) bool -> (P, G) IoU."""
    fa = torch.from_numpy(np.asarray(a).reshape(len(a), -1)).float()
    fb = torch.from_numpy(np.asarray(b).reshape(len(b), -1)).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).numpy().astype(np.float64)


def recalled(iou: np.ndarray, top: int, threshold: float = 0.5) -> int:
    """Ground truths matched by the first `top` predictions of a (P, G) IoU matrix: predictions in order, each to
    the best still unmatched ground truth with IoU >= threshold (COCO's greedy matching)."""
    taken = np.zeros(iou.shape[1], dtype=bool)
    for row in iou[:top]:
        candidates = np.where(~taken & (row >= threshold), row, -1.0)
        if candidates.size and candidates.max() >= threshold:
            taken[int(candidates.argmax())] = True
    return int(taken.sum())


def _union_iou(pred: np.ndarray, gt_union: np.ndarray) -> float:
    union = pred | gt_union
    return float((pred & gt_union).sum() / union.sum()) if union.any() else 1.0


def _to_gt_size(masks: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) bool masks over the loaded image -> (K, H, W) over the file's pixels (nearest)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.numpy()
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].bool().numpy()


class CachedObjectDINO(ObjectDINO):
    """ObjectDINO whose analysis and discovery affinity are computed once per tower output and config (the
    methods of one evaluation share them). The cache is this object's, shared with the siblings it makes for other
    configs (`with_config`), and holds the latest tower output only."""

    def __init__(self, config: ObjectDINOConfig | None = None, cache: dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self._cache = cache if cache is not None else {}

    def with_config(self, config: ObjectDINOConfig) -> CachedObjectDINO:
        return type(self)(config, cache=self._cache)

    def _cached(self, out, name: str, compute):
        if self._cache.get("pinned") is not out:  # a new image: drop the last one (pinned, so ids stay unique)
            self._cache.clear()
            self._cache["pinned"] = out
        key = (id(out), repr(self.config), name)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def analyse(self, out):
        return self._cached(out, "analyse", lambda: super(CachedObjectDINO, self).analyse(out))

    def discovery_affinity(self, out, selected):
        return self._cached(out, "affinity", lambda: super(CachedObjectDINO, self).discovery_affinity(out, selected))


def evaluate_discovery(tower, items: Sequence[InstanceItem], methods: Sequence[str], instance_methods: Sequence[str],
                       options: dict, max_objects: int = 10, progress: bool = True,
                       timings: dict | None = None) -> list[dict]:
    """One record per image: per single-object method its box IoU / correct / mask IoU, per instance method the
    recalled counts at each N in AR_AT (boxes and masks), the first instance's CorLoc and the union mask IoU."""
    records = []
    timings = timings if timings is not None else {}
    for item in tqdm(items, desc="eval discovery", unit="img", disable=not progress):
        try:
            image = load_image(item.path, max_side=tower.max_input_side)
        except ImageError as error:
            log.warning("skipping %s: %s", item.image_id, error)
            continue
        width, height = original_size(image)
        start = time.perf_counter()
        out = tower([image])
        timings["tower"] = timings.get("tower", 0.0) + time.perf_counter() - start
        gt_union = item.masks.any(0) if item.masks is not None else None
        record: dict = {"image": item.image_id, "objects": len(item.boxes), "single": {}, "instances": {}}
        for method in methods:
            start = time.perf_counter()
            found = discover(method, out, **options)
            timings[method] = timings.get(method, 0.0) + time.perf_counter() - start
            box = to_original_pixels(found.boxes[0], image).numpy()
            best = float(box_iou_matrix(box[None], item.boxes).max())
            entry = {"box": [round(float(v), 2) for v in box], "iou": round(best, 4), "correct": best >= 0.5,
                     "degenerate": bool(found.degenerate[0])}
            if gt_union is not None:
                full = upsample_maps(found.masks[:1].float(), out.patch_scale.cpu(), out.image_sizes)[0] >= 0.5
                entry["mask_iou"] = round(_union_iou(_to_gt_size(full[None], (height, width))[0], gt_union), 4)
            record["single"][method] = entry
        for method in instance_methods:
            start = time.perf_counter()
            found = instances(method, out, max_objects, **options)
            timings[f"instances:{method}"] = timings.get(f"instances:{method}", 0.0) + time.perf_counter() - start
            keep = found.valid[0]
            boxes = np.stack([to_original_pixels(b, image).numpy() for b in found.boxes[0][keep]]) if bool(
                keep.any()) else np.zeros((0, 4))
            box_iou = box_iou_matrix(boxes, item.boxes)
            entry = {"found": int(keep.sum()), "boxes": [[round(float(v), 1) for v in b] for b in boxes],
                     "box_recalled": {n: recalled(box_iou, n) for n in AR_AT},
                     "correct": bool(len(boxes) and box_iou[0].max() >= 0.5),
                     "degenerate": bool(found.degenerate[0])}
            if gt_union is not None:
                pred = _to_gt_size(instance_pixel_masks(found, out, 0), (height, width))  # (K', H, W)
                mask_iou = mask_iou_matrix(pred, item.masks) if len(pred) else np.zeros((0, len(item.masks)))
                entry["mask_recalled"] = {n: recalled(mask_iou, n) for n in AR_AT}
                entry["union_iou"] = round(_union_iou(pred.any(0) if len(pred) else np.zeros_like(gt_union),
                                                      gt_union), 4)
            record["instances"][method] = entry
        records.append(record)
    return records


def bootstrap_interval(statistic, n: int, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of statistic(index array) over `draws` resamples of n images."""
    if n == 0 or draws == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(draws)])
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return (round(float(low), 2), round(float(high), 2))


def _figure(values: np.ndarray, weights: np.ndarray | None, draws: int) -> dict:
    """Mean (or ratio sum(values) / sum(weights)) as a percentage, with its bootstrap interval."""
    if weights is None:
        stat = lambda idx: 100.0 * float(values[idx].mean())  # noqa: E731
    else:
        stat = lambda idx: 100.0 * float(values[idx].sum() / max(weights[idx].sum(), 1))  # noqa: E731
    return {"value": round(stat(np.arange(len(values))), 2), "ci95": bootstrap_interval(stat, len(values), draws)}


def summarise(records: list[dict], methods: Sequence[str], instance_methods: Sequence[str],
              draws: int = 1000) -> dict:
    """Per method: CorLoc (and mask IoU); per instance method: AR@N boxes / masks, CorLoc, union IoU; with 95 %
    bootstrap intervals over images (the same resamples for every method: the draws share one seed)."""
    objects = np.array([r["objects"] for r in records], dtype=np.float64)
    single, multi = {}, {}
    for method in methods:
        entries = [r["single"][method] for r in records]
        result = {"corloc": _figure(np.array([e["correct"] for e in entries], dtype=np.float64), None, draws),
                  "degenerate": sum(e["degenerate"] for e in entries), "images": len(entries)}
        if entries and all("mask_iou" in e for e in entries):
            result["mask_iou"] = _figure(np.array([e["mask_iou"] for e in entries]), None, draws)
        single[method] = result
    for method in instance_methods:
        entries = [r["instances"][method] for r in records]
        result = {"corloc": _figure(np.array([e["correct"] for e in entries], dtype=np.float64), None, draws),
                  "images": len(entries), "objects": int(objects.sum()),
                  "found_per_image": round(float(np.mean([e["found"] for e in entries])) if entries else 0.0, 2)}
        for n in AR_AT:
            result[f"box_ar@{n}"] = _figure(np.array([e["box_recalled"][n] for e in entries], dtype=np.float64),
                                            objects, draws)
        if entries and all("mask_recalled" in e for e in entries):
            for n in AR_AT:
                result[f"mask_ar@{n}"] = _figure(
                    np.array([e["mask_recalled"][n] for e in entries], dtype=np.float64), objects, draws)
            result["union_iou"] = _figure(np.array([e["union_iou"] for e in entries]), None, draws)
        multi[method] = result
    return {"single": single, "instances": multi}


def format_table(summary: dict) -> str:
    """Plain-text tables of `summarise`'s output."""
    def cell(fig):
        return f"{fig['value']:.1f} [{fig['ci95'][0]:.1f}, {fig['ci95'][1]:.1f}]" if fig else "-"

    lines = []
    if summary["single"]:
        lines.append(f"{'method':24s} {'CorLoc':>20s} {'mask IoU':>20s}  degenerate")
        for method, r in summary["single"].items():
            lines.append(f"{method:24s} {cell(r['corloc']):>20s} {cell(r.get('mask_iou')):>20s}  {r['degenerate']}")
    if summary["instances"]:
        columns = ["corloc"] + [f"box_ar@{n}" for n in AR_AT] + [f"mask_ar@{n}" for n in AR_AT] + ["union_iou"]
        lines.append(f"{'instances':24s} " + " ".join(f"{c:>20s}" for c in columns) + "  found/img")
        for method, r in summary["instances"].items():
            lines.append(f"{method:24s} " + " ".join(f"{cell(r.get(c)):>20s}" for c in columns)
                         + f"  {r['found_per_image']}")
    return "\n".join(lines)


def paired_difference(records: list[dict], first: tuple[str, str], second: tuple[str, str], metric: str = "corloc",
                      draws: int = 1000, seed: int = 0) -> dict:
    """first - second in percentage points, each ("single" | "instances", method), with a 95 % paired bootstrap
    interval (both methods on the same resampled images). metric: "corloc", or "box_ar@N" / "mask_ar@N" for
    instance methods (ratios of recalled to ground-truth objects)."""
    objects = np.array([r["objects"] for r in records], dtype=np.float64)

    def values(kind: str, method: str) -> np.ndarray:
        entries = [r[kind][method] for r in records]
        if metric == "corloc":
            return np.array([e["correct"] for e in entries], dtype=np.float64)
        family, n = metric.split("_ar@")
        return np.array([e[f"{family}_recalled"][str(n)] if str(n) in e[f"{family}_recalled"]
                         else e[f"{family}_recalled"][int(n)] for e in entries], dtype=np.float64)

    a, b = values(*first), values(*second)
    if metric == "corloc":
        stat = lambda idx: 100.0 * float(a[idx].mean() - b[idx].mean())  # noqa: E731
    else:
        stat = lambda idx: 100.0 * float((a[idx].sum() - b[idx].sum()) / max(objects[idx].sum(), 1))  # noqa: E731
    return {"value": round(stat(np.arange(len(records))), 2),
            "ci95": bootstrap_interval(stat, len(records), draws, seed)}


def save_instance_picture(image, out, object_dino: ObjectDINO, tower, path: Path, record: dict,
                          max_objects: int = 5) -> None:
    """The default instance method's objects (grounding.objects.instances) as coloured masks with their boxes,
    saved at `path`; their boxes go into `record["instances"]`."""
    found = object_dino.instances(out, max_objects=max_objects, tower=tower)
    keep = found.valid[0]
    instance_picture(image, instance_pixel_masks(found, out, 0).numpy(), found.boxes[0][keep].tolist(),
                     found.scores[0][keep].tolist()).save(path)
    record["instances"] = [[round(v, 1) for v in box] for box in found.boxes[0][keep].tolist()]
