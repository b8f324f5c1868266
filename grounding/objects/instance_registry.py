"""The instance methods by name and what they return (a leaf below `object_dino`, so that
`ObjectDINO.instances` can run them): `grounding.objects.instances` registers the built-in methods into
`INSTANCE_METHODS` when `grounding.objects` imports it.

A method is `function(tower_output, max_objects=K, **options) -> dict` with masks (B, K, h, w) bool on the patch
grid, scores (B, K), valid (B, K) and degenerate (B,); `instances()` turns that into an `InstanceOutput` with
boxes in original-image pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..tower.backbone import TowerOutput
from .regions import boxes_to_pixels, upsample_maps

__all__ = ["InstanceOutput", "INSTANCE_METHODS", "DEFAULT_INSTANCE_METHOD", "instances", "instance_pixel_masks",
           "masks_to_boxes"]

INSTANCE_METHODS: dict[str, Callable[..., dict]] = {}
DEFAULT_INSTANCE_METHOD = "object-dino-map-cut"  # chosen on world val (docs/discovery.md)


@dataclass
class InstanceOutput:
    masks: torch.Tensor  # (B, K, h, w) bool, patch grid; K = max_objects, invalid slots all False
    patch_boxes: torch.Tensor  # (B, K, 4) patch units [x0, y0, x1, y1], x1 / y1 exclusive (zeros when invalid)
    boxes: torch.Tensor  # (B, K, 4) original-image pixels
    scores: torch.Tensor  # (B, K) 1 - lambda_2 of the round (0 when invalid)
    valid: torch.Tensor  # (B, K) bool
    degenerate: torch.Tensor  # (B,) bool: the first round's graph was complete (or empty): its cut is arbitrary

    def per_image(self, b: int) -> list[dict]:
        """The valid instances of image b, in round order: mask (h, w), box (pixels), patch_box, score."""
        return [{"mask": self.masks[b, i], "box": self.boxes[b, i], "patch_box": self.patch_boxes[b, i],
                 "score": float(self.scores[b, i])} for i in range(self.masks.shape[1]) if bool(self.valid[b, i])]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(..., h, w) bool -> (..., 4) float [x0, y0, x1, y1] patch units (exclusive upper corner); zeros if empty."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # (..., h), (..., w)
    y0 = rows.float().argmax(-1)
    y1 = h - rows.flip(-1).float().argmax(-1)
    x0 = cols.float().argmax(-1)
    x1 = w - cols.flip(-1).float().argmax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1).float()
    return torch.where(rows.any(-1)[..., None], boxes, torch.zeros_like(boxes))


def _finish(out: TowerOutput, cut: dict[str, torch.Tensor]) -> InstanceOutput:
    masks = cut["masks"].cpu()
    batch, k = masks.shape[:2]
    patch_boxes = masks_to_boxes(masks)  # (B, K, 4)
    scale = out.patch_scale.cpu().repeat_interleave(k, 0)  # (B*K, 2)
    sizes = [size for size in out.image_sizes for _ in range(k)]
    boxes = boxes_to_pixels(patch_boxes.view(-1, 4), scale, sizes).view(batch, k, 4)
    valid = cut["valid"].cpu()
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    return InstanceOutput(masks=masks, patch_boxes=patch_boxes, boxes=boxes, scores=cut["scores"].cpu(),
                          valid=valid, degenerate=cut["degenerate"].cpu())


def instances(method: str, out: TowerOutput, max_objects: int = 3, **options) -> InstanceOutput:
    """Run a registered instance method; boxes in original-image pixels (each image's pixels per patch)."""
    if method not in INSTANCE_METHODS:
        raise KeyError(f"unknown instance method {method!r}; choose from {sorted(INSTANCE_METHODS)}")
    return _finish(out, INSTANCE_METHODS[method](out, max_objects=max_objects, **options))


def instance_pixel_masks(found: InstanceOutput, out: TowerOutput, b: int) -> torch.Tensor:
    """(K_valid, H, W) bool masks of image b's valid instances over its original pixels (bilinear >= 0.5)."""
    keep = found.valid[b]
    if not bool(keep.any()):
        height, width = out.image_sizes[b]
        return torch.zeros(0, height, width, dtype=torch.bool)
    grid_masks = found.masks[b][keep].float()  # (K', h, w)
    k = grid_masks.shape[0]
    full = upsample_maps(grid_masks, out.patch_scale[b : b + 1].cpu().repeat(k, 1), [out.image_sizes[b]] * k)
    return torch.stack(full) >= 0.5
