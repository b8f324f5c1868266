"""object-dino-compact (grounding/objects/compact.py): the most compact region of the map and its pixel box, against
a recomputation with scipy's labels and the library's `upsample_maps`; the fallback and the registry."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from grounding.objects.compact import most_compact
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
    assert bool(picked[0][0][5, 6])  # the blob, not the larger L
    assert picked[1] is None  # no region of 2 patches
    again = most_compact(grid, torch.tensor([scale, scale]), [size, size], threshold=0.6, min_area=2, chunk=16)
    assert torch.equal(again[0][0], picked[0][0]) and torch.equal(again[0][1], picked[0][1])  # chunking: same pick


def test_object_dino_compact_through_discover(tower, rng_image):
    """The default method; boxes inside the image; with no region of min_area patches it is object-dino-map."""
    assert DEFAULT_METHOD == "object-dino-compact" and DEFAULT_METHOD in DISCOVERY_METHODS
    from eval.cli import DISCOVERY_DEFAULT

    assert DISCOVERY_DEFAULT == DEFAULT_METHOD
    out = tower([rng_image(60, 90)])
    found = discover("object-dino-compact", out)
    height, width = out.image_sizes[0]
    x0, y0, x1, y1 = found.boxes[0].tolist()
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    fallback = discover("object-dino-compact", out, min_area=10**6)
    assert torch.equal(fallback.boxes, discover("object-dino-map", out).boxes)
