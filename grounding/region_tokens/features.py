"""Region features: per image, Object-DINO's object map -> connected regions (largest first, up to K) -> a feature
pooled under each region's mask and a box encoding. `RegionConfig` says how; `extract_regions` does it for a batch.
With `regions="instances"` the regions are Object-DINO's object instances (`ObjectDINO.instances`, up to K, in their
order) instead of the map's connected regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..objects.object_dino import ObjectDINO, ObjectDINOConfig
from ..objects.regions import object_regions

__all__ = ["RegionConfig", "RegionBatch", "extract_regions", "pool_vlm_features"]


@dataclass
class RegionConfig:
    num_regions: int = 8  # K tokens appended after each image's tokens
    tower: str = "facebook/dinov2-with-registers-base"
    tower_short_side: int = 224
    feature_source: Literal["tower", "vlm"] = "tower"
    # map: the connected components of map > map_threshold (the map is already cut at 0.6), largest first;
    # instances: Object-DINO's object instances (`ObjectDINO.instances`), in their order
    regions: Literal["map", "instances"] = "map"
    map_threshold: float = 0.0
    min_area: int = 1  # patches
    projector_hidden: int = 1024
    object_dino: ObjectDINOConfig = field(default_factory=lambda: ObjectDINOConfig(k=5))

    def __post_init__(self):
        if isinstance(self.object_dino, dict):
            self.object_dino = ObjectDINOConfig(**self.object_dino)
        if self.num_regions < 0:
            raise ValueError(f"num_regions must be >= 0, got {self.num_regions}")
        if self.regions not in ("map", "instances"):
            raise ValueError(f"regions must be 'map' or 'instances', got {self.regions!r}")
        if self.feature_source not in ("tower", "vlm"):
            raise ValueError(f"feature_source must be 'tower' or 'vlm', got {self.feature_source!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["object_dino"]["facets"] = list(data["object_dino"]["facets"])
        return data


@dataclass
class RegionBatch:
    features: torch.Tensor  # (B, K, C) pooled region features (zeros in empty slots)
    boxes: torch.Tensor  # (B, K, 5) [x0, y0, x1, y1, area] in [0, 1]
    valid: torch.Tensor  # (B, K) bool
    # (B, K, h, w) bool on the tower's patch grid; PIL images of different grids: each row's grid in its top-left
    # corner, padded with False to the largest (h, w) of the batch
    masks: torch.Tensor


def _tower_outputs(tower, images) -> list:
    """Tower outputs for a (B, 3, H, W) RGB batch in [0, 1] (one batched forward) or a list of PIL images (one each)."""
    if isinstance(images, torch.Tensor):
        height, width = images.shape[-2:]
        _, (h, w) = tower.input_geometry(height, width)
        pixels = F.interpolate(images.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        pixels = (pixels.clamp(0, 1).to(tower.mean.device) - tower.mean) / tower.std  # (B, 3, h, w)
        return [tower(pixels)]
    return [tower([image]) for image in images]


def extract_regions(tower, object_dino: ObjectDINO, images: torch.Tensor | list, config: RegionConfig) -> RegionBatch:
    """Regions of each image: images are PIL images, or (B, 3, H, W) RGB in [0, 1] (e.g. from `pixels_to_rgb`)."""
    k = config.num_regions
    features, boxes, valid, masks = [], [], [], []
    for out in _tower_outputs(tower, images):
        tokens = out.patch_tokens().float()  # (b, N, C)
        h, w = out.grid
        if config.regions == "instances":
            found = _instance_regions(tower, object_dino, out, k, config.min_area)
        else:
            found = [[(r.mask, r.box) for r in object_regions(m, config.map_threshold, max_regions=k,
                                                              min_area=config.min_area)]
                     for m in object_dino.analyse(out).maps]
        for regions, patch_tokens in zip(found, tokens):
            f = torch.zeros(k, patch_tokens.shape[-1], device=patch_tokens.device)
            b = torch.zeros(k, 5, device=patch_tokens.device)
            v = torch.zeros(k, dtype=torch.bool, device=patch_tokens.device)
            m = torch.zeros(k, h, w, dtype=torch.bool, device=patch_tokens.device)
            for slot, (mask, box) in enumerate(regions):
                flat = mask.flatten().to(patch_tokens.device)
                f[slot] = patch_tokens[flat].mean(0)
                x0, y0, x1, y1 = box.tolist()
                b[slot] = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h, float(mask.sum()) / (h * w)])
                v[slot] = True
                m[slot] = mask
            features.append(f)
            boxes.append(b)
            valid.append(v)
            masks.append(m)
    rows, cols = max(m.shape[-2] for m in masks), max(m.shape[-1] for m in masks)
    masks = [F.pad(m, (0, cols - m.shape[-1], 0, rows - m.shape[-2])) for m in masks]  # False bottom / right
    return RegionBatch(torch.stack(features), torch.stack(boxes), torch.stack(valid), torch.stack(masks))


def _instance_regions(tower, object_dino: ObjectDINO, out, k: int, min_area: int) -> list[list[tuple]]:
    """Per image, the (mask (h, w), patch box) of its valid Object-DINO instances of at least `min_area` patches,
    in instance order, at most k."""
    if k == 0:
        return [[] for _ in out.image_sizes]
    found = object_dino.instances(out, max_objects=k, tower=tower)
    return [[(mask, box) for mask, box, ok in zip(found.masks[b], found.patch_boxes[b], found.valid[b])
             if bool(ok) and int(mask.sum()) >= min_area] for b in range(found.masks.shape[0])]


def pool_vlm_features(image_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, D) square-grid VLM image features, (K, h, w) tower masks -> (K, D) means under the resized masks."""
    side = int(round(image_features.shape[0] ** 0.5))
    if side * side != image_features.shape[0]:
        raise ValueError(f"feature_source='vlm' needs a square feature grid, got {image_features.shape[0]} tokens")
    resized = F.interpolate(masks[:, None].float(), size=(side, side), mode="nearest")[:, 0].flatten(1)  # (K, N)
    weights = resized / resized.sum(-1, keepdim=True).clamp_min(1)
    return weights.to(image_features.dtype) @ image_features  # (K, D)
