"""Masks on the patch grid -> connected regions -> boxes (patch units and original-image pixels).

Connected components are 4-connected (scipy.ndimage.label's default, which LOST and TokenCut use), computed by
min-label propagation in torch so they run on the tower's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["connected_components", "mask_to_box", "boxes_to_pixels", "Region", "object_regions", "upsample_maps",
           "upsample_grids"]


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """(..., h, w) bool -> (..., h, w) int64 labels, 0 for background, 1..n numbered in raster order of first pixel."""
    shape = mask.shape
    mask = mask.reshape(-1, *shape[-2:]).bool()
    big = mask.numel() + 1
    index = torch.arange(1, mask[0].numel() + 1, device=mask.device).view(shape[-2:]).expand_as(mask)
    labels = torch.where(mask, index, torch.full_like(index, big))
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=big)  # (M, h+2, w+2)
        neighbours = torch.stack([
            padded[:, 1:-1, 1:-1], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:],
        ]).amin(0)
        updated = torch.where(mask, neighbours, labels)
        if torch.equal(updated, labels):
            break
        labels = updated
    out = torch.zeros_like(labels)
    for m in range(labels.shape[0]):  # renumber 1..n in raster order (per map; n is small)
        roots = torch.unique(labels[m][mask[m]])
        lookup = torch.zeros(big + 1, dtype=torch.long, device=mask.device)
        lookup[roots] = torch.arange(1, len(roots) + 1, device=mask.device)
        out[m] = torch.where(mask[m], lookup[labels[m]], 0)
    return out.view(shape)


def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) bool -> (4,) float [x0, y0, x1, y1] in patch units (x1, y1 exclusive). Empty masks raise."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("cannot take the box of an empty mask")
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def boxes_to_pixels(boxes: torch.Tensor, patch_scale: torch.Tensor, image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, 4) patch-unit boxes * (B, 2) original pixels per patch (x, y) -> pixels, clipped to each (H, W)."""
    scale = patch_scale.to(boxes).repeat(1, 2)  # (B, 4)
    pixels = boxes * scale
    limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(pixels.clamp_min(0), limits)


def upsample_grids(grids: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """(L, h, w) values on ONE image's patch grid -> (L, H, W) over its original pixels (bilinear; the padding of the
    tower's input cropped off). scale: the image's (x, y) pixels per patch; size: its (H, W)."""
    h, w = grids.shape[-2:]
    height, width = size
    full = (max(height, round(h * scale[1])), max(width, round(w * scale[0])))
    up = F.interpolate(grids[:, None].float(), size=full, mode="bilinear", align_corners=False)[:, 0]
    return up[:, :height, :width]


def upsample_maps(maps: torch.Tensor, patch_scale: torch.Tensor,
                  image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """(B, h, w) grid maps -> per image (H, W) maps over the original pixels (bilinear; padding cropped off)."""
    return [upsample_grids(grid_map[None], tuple(scale), tuple(size))[0].clamp(0, 1)
            for grid_map, scale, size in zip(maps, patch_scale.tolist(), image_sizes)]


@dataclass
class Region:
    """One connected object region on the patch grid."""

    mask: torch.Tensor  # (h, w) bool
    box: torch.Tensor  # (4,) patch units [x0, y0, x1, y1]
    area: int  # patches
    score: float  # mean object score inside


def object_regions(object_map: torch.Tensor, threshold: float = 0.0, max_regions: int | None = None,
                   min_area: int = 1) -> list[Region]:
    """(h, w) object map -> connected regions of map > threshold, largest first (then by score)."""
    if not torch.isfinite(object_map).all():
        raise ValueError("object map holds NaN or infinite values")
    labels = connected_components(object_map > threshold)
    regions = []
    for label in range(1, int(labels.max()) + 1):
        mask = labels == label
        area = int(mask.sum())
        if area >= min_area:
            regions.append(Region(mask=mask, box=mask_to_box(mask), area=area, score=float(object_map[mask].mean())))
    regions.sort(key=lambda r: (-r.area, -r.score))
    return regions[:max_regions] if max_regions is not None else regions
