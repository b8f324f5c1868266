"""object-dino-compact and object-dino-whole (grounding/objects/compact.py): the most compact region of the map and its
pixel box, against a recomputation with scipy's labels and the library's `upsample_maps`; the part-of-a-whole rule
against the rule written out with numpy; the fallback and the registry."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from grounding.objects.compact import most_compact, part_of
from grounding.objects.discovery import DEFAULT_METHOD, DISCOVERY_METHODS, discover
from grounding.objects.regions import upsample_maps


def reference(grid_map: np.ndarray, scale: tuple[float, float], size: tuple[int, int], threshold: float,
              min_area: int):
    """The rule written out region by region with numpy (module doc of compact.py)."""
    labels, count = ndi.label(grid_map >= threshold)  # 4-connectivity
    patch_scale = torch.tensor([scale])
    above = upsample_maps(torch.from_numpy(grid_map)[None].float(), patch_scale, [size])[0].numpy() >= threshold
    best = None
    for label in range(1, count + 1):
        region = labels == label
        if region.sum() < min_area:
            continue
        footprint = upsample_maps(torch.from_numpy(region)[None].float(), patch_scale, [size])[0].numpy() >= 0.5
        mask = footprint & above
        mask = mask if mask.any() else footprint
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        fill = mask.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
        score = fill * np.sqrt(mask.sum() / (scale[0] * scale[1]))
        if best is None or score > best[0]:
            best = (score, region, box)
    return best


def maps() -> torch.Tensor:
    grid = torch.zeros(2, 8, 10)
    grid[0, 1, 1:8] = 0.9  # a long bar: large, fills its box
    grid[0, 2:6, 1] = 0.8  # ... made an L: 10 patches in a 5 x 7 box
    grid[0, 4:7, 5:8] = torch.tensor([[0.7, 0.95, 0.7], [0.95, 1.0, 0.95], [0.7, 0.95, 0.7]])  # a compact blob
    grid[0, 7, 0] = 0.99  # one patch: below min_area
    grid[1, 2, 2] = grid[1, 5, 7] = 0.9  # image 1: single patches only
    return grid


@pytest.mark.parametrize("scale,size", [((14.0, 14.0), (112, 140)), ((9.3, 11.1), (85, 90))])
def test_most_compact_is_the_rule_written_out(scale, size):
    grid = maps()
    picked = most_compact(grid, torch.tensor([scale, scale]), [size, size], threshold=0.6, min_area=2, chunk=1)
    score, region, box = reference(grid[0].numpy(), scale, size, 0.6, 2)
    assert torch.equal(picked[0][0], torch.from_numpy(region))
    assert picked[0][1].tolist() == [float(v) for v in box]
    ys, xs = np.nonzero(picked[0][2].numpy())  # the pixel mask the box was measured on
    assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [int(v) for v in box]
    assert bool(picked[0][0][5, 6])  # the blob, not the larger L
    assert picked[1] is None  # no region of 2 patches
    again = most_compact(grid, torch.tensor([scale, scale]), [size, size], threshold=0.6, min_area=2, chunk=16)
    assert torch.equal(again[0][0], picked[0][0]) and torch.equal(again[0][1], picked[0][1])  # chunking: same pick


def test_object_dino_compact_through_discover(tower, rng_image):
    """The default method; boxes inside the image; with no region of min_area patches it is object-dino-map."""
    assert DEFAULT_METHOD == "object-dino-whole" and DEFAULT_METHOD in DISCOVERY_METHODS
    from eval.cli import DISCOVERY_DEFAULT

    assert DISCOVERY_DEFAULT == DEFAULT_METHOD
    out = tower([rng_image(60, 90)])
    found = discover("object-dino-compact", out)
    height, width = out.image_sizes[0]
    x0, y0, x1, y1 = found.boxes[0].tolist()
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    fallback = discover("object-dino-compact", out, min_area=10**6)
    assert torch.equal(fallback.boxes, discover("object-dino-map", out).boxes)


def test_part_of():
    whole = torch.zeros(20, 20, dtype=torch.bool)
    whole[2:18, 2:18] = True  # 256 pixels
    part = torch.zeros_like(whole)
    part[4:9, 4:9] = True  # 25 pixels inside: under a fifth
    assert part_of(part, whole, 0.2)
    assert not part_of(part, whole, 25 / 256)  # "fewer than share times the whole": 25 is not fewer than 25
    half_out = torch.zeros_like(whole)
    half_out[0:4, 4:9] = True  # 10 pixels at rows 0-3: rows 2-3 inside, exactly half
    assert part_of(half_out, whole, 0.2)
    half_out[0, 9] = True  # 11 pixels, 5 inside: less than half
    assert not part_of(half_out, whole, 0.2)
    assert not part_of(torch.zeros_like(whole), whole) and not part_of(part, torch.zeros_like(whole))


def whole_written_out(out, part_share):
    """object-dino-whole image by image with numpy: the compact pick; Object-DINO's cut on the map's heads (k = 5, or
    every head of a tiny model; adaptive tau); the cut's bilinear footprint; at least half inside and under
    `part_share` of it -> the footprint's box. Returns the boxes and how many images took the footprint's."""
    from grounding.objects.instances import oriented_object_maps
    from grounding.objects.object_dino import ObjectDINO

    k = min(5, out.num_layers * out.num_heads)
    maps = oriented_object_maps(out, None, k)[0]
    picks = most_compact(maps, out.patch_scale, out.image_sizes)
    segments = ObjectDINO(k=k).cut(out, adaptive=True)
    boxes, changed = discover("object-dino-compact", out).boxes.tolist(), 0
    for b, (pick, segment) in enumerate(zip(picks, segments)):
        if pick is None:
            continue
        footprint = upsample_maps(segment.mask[None].float(), out.patch_scale[b:b + 1],
                                  [tuple(out.image_sizes[b])])[0].numpy() >= 0.5
        part = pick[2].numpy()
        if 2 * (part & footprint).sum() >= part.sum() and part.sum() < part_share * footprint.sum():
            ys, xs = np.nonzero(footprint)
            boxes[b] = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            changed += 1
    return boxes, changed


def test_object_dino_whole_is_the_rule_written_out(tower, rng_image):
    out = tower([rng_image(60, 90, seed=s) for s in range(6)])
    for share, must_change in ((0.2, False), (1e9, True)):
        expected, changed = whole_written_out(out, share)
        found = discover("object-dino-whole", out, part_share=share)
        assert found.boxes.tolist() == expected
        if must_change:
            assert changed > 0  # the rule fired on some image: the test sees both branches
    never = discover("object-dino-whole", out, part_share=0.0)  # no region is under 0 x a segment
    assert torch.equal(never.boxes, discover("object-dino-compact", out).boxes)
