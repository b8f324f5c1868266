"""The most compact region of the Object-DINO map, with a box measured in pixels (`object-dino-compact`, chosen on world
val; docs/discovery.md, "The compact region"), and the whole a region is part of (`object-dino-whole`, the default
single-object method; "Parts and wholes").

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

**Parts and wholes** (`whole=True`, `object-dino-whole`). The map's object heads often light up the most distinctive
part of a large object (a face, not the person). Object-DINO's own cut - TokenCut on the discovery affinity of the
same object heads, tau raised to the median when the graph is complete (`object-dino-adaptive`'s step) - gives a
segment; when the compact region lies mostly inside the segment's pixel footprint (at least half its pixels) and
covers less than `part_share` of it, the region is a part of that segment, and the segment's patch mask and pixel
box are the answer (`part_of`). Otherwise the compact region stands.
"""

from __future__ import annotations

from functools import partial

import torch

from ..tower.backbone import TowerOutput
from .cuts import PatchBox, cut
from .discovery import register_discovery
from .instance_registry import masks_to_boxes
from .instances import first_patch_boxes, map_regions, oriented_object_maps
from .regions import connected_components, upsample_grids

__all__ = ["compact_regions", "most_compact", "part_of", "pixel_footprints"]


def pixel_footprints(grid_masks: torch.Tensor, scale: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """(L, h, w) patch-grid indicators -> (L, H, W) bool over the image's pixels: bilinear upsampling >= 0.5."""
    return upsample_grids(grid_masks, scale, size) >= 0.5


# (patch mask (h, w), pixel box (4,), pixel mask (H, W)) of an image's most compact region, or None
Picked = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


def part_of(part: torch.Tensor, whole: torch.Tensor, share: float = 0.2) -> bool:
    """(H, W) bool pixel masks: True when at least half of `part` lies inside `whole` and `part` has fewer than
    `share` times `whole`'s pixels (a face inside a person's segment)."""
    pixels, whole_pixels = int(part.sum()), int(whole.sum())
    if pixels == 0 or whole_pixels == 0:
        return False
    return 2 * int((part & whole).sum()) >= pixels and pixels < share * whole_pixels


def most_compact(maps: torch.Tensor, patch_scale: torch.Tensor, image_sizes: list[tuple[int, int]],
                 threshold: float = 0.6, min_area: int = 2, chunk: int = 16) -> list[Picked]:
    """(B, h, w) object maps -> per image (patch mask (h, w), pixel box (4,), pixel mask (H, W)) of its most compact
    region of map >= threshold (module doc), or None when no region has `min_area` patches."""
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
        found.append(None if best_score < 0 else (members[best], masks_to_boxes(best_mask[None])[0], best_mask))
    return found


def compact_regions(out: TowerOutput, object_dino=None, map_k: int | None = 5, tower=None, threshold: float = 0.6,
                    min_area: int = 2, chunk: int = 16, whole: bool = False, part_share: float = 0.2,
                    **_) -> list[PatchBox]:
    """`object-dino-compact` (and, with `whole=True`, `object-dino-whole`): one region per image (module doc), its
    patch mask and its pixel box."""
    maps, analysis, model = oriented_object_maps(out, object_dino, map_k, tower, with_model=True)  # (B, h, w)
    found = first_patch_boxes(map_regions(maps, 1))  # object-dino-map's box: kept where no region is picked
    picks = most_compact(maps, out.patch_scale.cpu(), out.image_sizes, threshold, min_area, chunk)
    for b, picked in enumerate(picks):
        if picked is not None:
            mask = picked[0].cpu()
            found[b] = PatchBox(box=masks_to_boxes(mask), mask=mask, seed=int(mask.flatten().nonzero()[0]),
                                pixel_box=picked[1].cpu())
    if whole and any(p is not None for p in picks):
        affinity = model.discovery_affinity(out, analysis.selected)  # (B, N, N), the map's object heads
        config = model.config
        for b, picked in enumerate(picks):
            if picked is None:
                continue
            segment = cut(affinity[b], out.grid, config.tokencut_tau, config.tokencut_eps, centre=False,
                          adaptive=True, polarity="seed")
            footprint = pixel_footprints(segment.mask[None].to(maps.device), tuple(out.patch_scale[b].tolist()),
                                         tuple(out.image_sizes[b]))[0]  # (H, W)
            if part_of(picked[2], footprint, part_share):
                found[b] = PatchBox(box=segment.box.cpu(), mask=segment.mask.cpu(), seed=segment.seed,
                                    degenerate=segment.degenerate, pixel_box=masks_to_boxes(footprint[None])[0].cpu())
    return found


register_discovery("object-dino-compact", compact_regions)
register_discovery("object-dino-whole", partial(compact_regions, whole=True))
