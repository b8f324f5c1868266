"""LOST / TokenCut / DINO-seg against straightforward re-computations of the published steps (numpy + scipy)."""

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch

from grounding.discovery import dinoseg, lost, tokencut
from grounding.regions import boxes_to_pixels, connected_components, mask_to_box, object_regions, upsample_maps


def reference_box(mask: np.ndarray, seed: int, grid):
    labels, _ = scipy.ndimage.label(mask.reshape(grid))  # 4-connectivity
    component = labels == labels[np.unravel_index(seed, grid)]
    ys, xs = np.nonzero(component)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_connected_components_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((9, 13)) > 0.55
        ours = connected_components(torch.from_numpy(mask)).numpy()
        theirs, count = scipy.ndimage.label(mask)
        assert ours.max() == count
        # same partition (labels may be numbered differently)
        pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist()))
        assert len(pairs) == count and (ours[~mask] == 0).all()


def test_lost_equals_reference():
    rng = np.random.default_rng(1)
    grid = (6, 7)
    for trial in range(5):
        keys = rng.standard_normal((42, 12)).astype(np.float32)
        keys[5:15] += 3.0 * (trial + 1) * rng.standard_normal(12).astype(np.float32)
        found = lost(torch.from_numpy(keys), grid, k_patches=10)
        a = keys @ keys.T
        degree = (a > 0).sum(-1)
        order = np.argsort(degree, kind="stable")
        seed = order[0]
        similars = order[:10][a[seed, order[:10]] > 0]
        score = a[similars].sum(0)
        assert found.seed == seed
        assert found.box.tolist() == reference_box(score > 0, seed, grid)


def test_tokencut_equals_scipy_generalised_eigensolver():
    rng = np.random.default_rng(2)
    grid = (5, 6)
    for trial in range(5):
        feats = rng.standard_normal((30, 8))
        feats[:9] += 2.0 * rng.standard_normal(8)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        a = feats @ feats.T
        graph = np.where(a > 0.2, 1.0, 1e-5)
        d = np.diag(graph.sum(1))
        _, vectors = scipy.linalg.eigh(d - graph, d, subset_by_index=[1, 2])
        second = vectors[:, 0]
        for sign in (1.0, -1.0):  # either eigenvector sign gives the same answer
            vec = sign * second
            partition = vec > vec.mean()
            seed = int(np.argmax(np.abs(vec)))
            if not partition[seed]:
                partition = ~partition
            expected = reference_box(partition, seed, grid)
        found = tokencut(torch.from_numpy(a), grid, tau=0.2, eps=1e-5)
        assert found.seed == seed
        assert found.box.tolist() == expected


def test_dinoseg_equals_reference():
    rng = np.random.default_rng(3)
    grid = (6, 6)
    attention = rng.random(36) ** 4
    found = dinoseg(torch.from_numpy(attention), grid, mass=0.6)
    values = np.sort(attention / attention.sum())
    order = np.argsort(attention / attention.sum())
    keep = np.zeros(36, bool)
    keep[order] = np.cumsum(values) > 0.4
    labels, count = scipy.ndimage.label(keep.reshape(grid))
    sizes = [(labels == c).sum() for c in range(1, count + 1)]
    component = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(component)
    assert found.box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_boxes_scale_to_original_pixels_and_clip():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 3.0], [0.0, 0.0, 10.0, 10.0]])
    scale = torch.tensor([[10.0, 5.0], [14.0, 14.0]])
    pixels = boxes_to_pixels(boxes, scale, [(100, 200), (50, 60)])
    assert pixels.tolist() == [[10.0, 10.0, 40.0, 15.0], [0.0, 0.0, 60.0, 50.0]]


def test_regions_and_empty_masks():
    object_map = torch.zeros(6, 6)
    object_map[0:2, 0:2] = 0.9
    object_map[3:6, 2:6] = 0.7
    regions = object_regions(object_map, max_regions=5)
    assert [r.area for r in regions] == [12, 4] and regions[0].box.tolist() == [2, 3, 6, 6]
    assert object_regions(torch.zeros(4, 4)) == []
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        object_regions(torch.full((3, 3), float("nan")))
    up = upsample_maps(object_map[None], torch.tensor([[10.0, 10.0]]), [(55, 58)])[0]
    assert up.shape == (55, 58)
