"""The most compact region of the Object-DINO map, with a box measured in pixels: the default single-object method
`object-dino-compact` (chosen on world val; docs/discovery.md, "The compact region").

The largest region of the map (`object-dino-map`) often spans several touching objects on a crowded image, and its
box, in whole patches, is too coarse for small objects. This rule keeps the map and changes two things:

1. **Pixel masks.** The oriented map s (`oriented_object_maps`: k = 5, [CLS]-attention polarity, scores below
   `threshold` zeroed) is upsampled bilinearly to the image's pixels (u); each 4-connected region of s >= threshold
   gets the footprint of its upsampled indicator (>= 0.5), and its pixel mask is (u >= threshold) inside that
   footprint (the footprint itself when that is empty).
2. **The compact region.** Among the regions of at least `min_area` patches, the one with the largest
   fill * sqrt(area) wins (fill = mask pixels / pixels of the mask's box; area in patches, from the pixel mask): a
   whole object fills its box, a chain of touching objects does not. The box is the winner's pixel-mask box.

An image with no region of `min_area` patches gets `object-dino-map`'s box (its largest region; the whole image when
the map is empty). Batched: one Object-DINO analysis and one connected-components pass for the batch; per image one
bilinear upsampling of its regions' indicators (in chunks of `chunk` regions).
"""

from __future__ import annotations

import torch

from ..tower.backbone import TowerOutput
from .cuts import PatchBox
from .discovery import register_discovery
from .instance_registry import masks_to_boxes
from .instances import first_patch_boxes, map_regions, oriented_object_maps
from .regions import connected_components, upsample_grids

__all__ = ["compact_regions", "most_compact", "pixel_footprints"]


def pixel_footprints(grid_masks: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """(L, h, w) patch-grid indicators -> (L, H, W) bool over the image's pixels: bilinear upsampling >= 0.5."""
    return upsample_grids(grid_masks, scale, size) >= 0.5


Picked = tuple[torch.Tensor, torch.Tensor] | None  # (patch mask (h, w), pixel box (4,)), or None


def most_compact(maps: torch.Tensor, patch_scale: torch.Tensor, image_sizes: list[tuple[int, int]],
                 threshold: float = 0.6, min_area: int = 2, chunk: int = 16) -> list[Picked]:
    """(B, h, w) object maps -> per image (patch mask (h, w), pixel box (4,)) of its most compact region of
    map >= threshold (module doc), or None when no region has `min_area` patches."""
    maps = maps.float()
    labels = connected_components((maps >= threshold) & (maps > 0))  # (B, h, w)
    found: list = []
    for b, (grid_map, label) in enumerate(zip(maps, labels)):
        scale = tuple(patch_scale[b].tolist())
        size = tuple(image_sizes[b])
        ids = torch.arange(1, int(label.max()) + 1, device=label.device)
        members = label[None] == ids[:, None, None]  # (L, h, w)
        members = members[members.flatten(1).sum(-1) >= min_area]
        if not len(members):
            found.append(None)
            continue
        above = upsample_grids(grid_map[None], scale, size)[0].clamp(0, 1) >= threshold  # (H, W)
        per_patch = scale[0] * scale[1]
        best, best_score, best_mask = None, -1.0, None
        for start in range(0, len(members), chunk):
            footprint = pixel_footprints(members[start:start + chunk], scale, size)  # (c, H, W)
            masks = footprint & above
            empty = ~masks.flatten(1).any(-1)
            masks[empty] = footprint[empty]
            pixels = masks.flatten(1).sum(-1).float()  # (c,)
            boxes = masks_to_boxes(masks)  # (c, 4) pixels
            box_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1)
            score = torch.where(pixels > 0, pixels / box_area * (pixels / per_patch).sqrt(), -1.0)
            i = int(score.argmax())
            if float(score[i]) > best_score:
                best, best_score, best_mask = start + i, float(score[i]), masks[i]
        found.append(None if best_score < 0 else (members[best], masks_to_boxes(best_mask[None])[0]))
    return found


def compact_regions(out: TowerOutput, object_dino=None, map_k: int | None = 5, tower=None, threshold: float = 0.6,
                    min_area: int = 2, chunk: int = 16, **_) -> list[PatchBox]:
    """`object-dino-compact`: one region per image (module doc), its patch mask and its pixel box."""
    maps, _ = oriented_object_maps(out, object_dino, map_k, tower)  # (B, h, w), 0 below the map's threshold
    found = first_patch_boxes(map_regions(maps, 1))  # object-dino-map's box: kept where no region is picked
    for b, picked in enumerate(most_compact(maps, out.patch_scale.cpu(), out.image_sizes, threshold, min_area, chunk)):
        if picked is not None:
            mask = picked[0].cpu()
            found[b] = PatchBox(box=masks_to_boxes(mask), mask=mask, seed=int(mask.flatten().nonzero()[0]),
                                pixel_box=picked[1].cpu())
    return found


register_discovery("object-dino-compact", compact_regions)
