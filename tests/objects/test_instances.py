"""Batched iterative cuts (grounding.objects.instances): parity with TokenCut, batch = per image, a MaskCut re-computation
with scipy, and the tower-level methods on a tiny register ViT."""

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from PIL import Image

from grounding.objects.cuts import adaptive_tau, tokencut
from grounding.objects.instances import (INSTANCE_METHODS, batched_adaptive_tau, instance_pixel_masks, instances,
                                 iterative_cut, masks_to_boxes, seed_components)
from grounding.objects.regions import mask_to_box


def _affinities(batch=4, grid=(6, 7), seed=0):
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    out = []
    for b in range(batch):
        feats = rng.standard_normal((n, 8))
        feats[5 + b : 14 + b] += 2.5 * rng.standard_normal(8)
        feats[25:31] += 2.5 * rng.standard_normal(8)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        out.append(feats @ feats.T)
    return torch.tensor(np.stack(out))


def test_first_round_equals_tokencut():
    grid = (6, 7)
    affinity = _affinities(grid=grid)
    cut = iterative_cut(affinity, grid, max_objects=1, tau=0.2, corners=None)
    for b in range(len(affinity)):
        ref = tokencut(affinity[b], grid, tau=0.2)
        assert torch.equal(cut["masks"][b, 0], ref.mask)
        assert bool(cut["degenerate"][b]) == ref.degenerate


@pytest.mark.parametrize("removal", ["reference", "subgraph"])
def test_batched_equals_per_image(removal):
    grid = (6, 7)
    affinity = _affinities(batch=3, grid=grid, seed=3)
    tau = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    batched = iterative_cut(affinity, grid, 4, tau, removal=removal)
    for b in range(3):
        single = iterative_cut(affinity[b : b + 1], grid, 4, float(tau[b]), removal=removal)
        for key in ("masks", "valid", "degenerate"):
            assert torch.equal(batched[key][b], single[key][0])
        assert torch.allclose(batched["scores"][b], single["scores"][0], atol=1e-6)


def test_rounds_are_disjoint_and_reference_rounds_match_scipy_maskcut():
    grid = (6, 7)
    affinity = _affinities(batch=2, grid=grid, seed=5)
    cut = iterative_cut(affinity, grid, 3, 0.2, removal="reference")
    for b in range(2):
        masks = cut["masks"][b].view(3, -1)
        assert (masks.sum(0) <= 1).all()
        # re-computation of MaskCut's rounds: zeroed features, scipy's generalised eigensolver, scipy.ndimage
        a = affinity[b].numpy()
        painted = np.zeros(a.shape[0], dtype=bool)
        for r in range(3):
            graph = np.where(a > 0.2, 1.0, 1e-5)
            graph[painted, :] = 1e-5
            graph[:, painted] = 1e-5
            d = np.diag(graph.sum(1))
            _, vectors = scipy.linalg.eigh(d - graph, d, subset_by_index=[1, 2])
            v = vectors[:, 0]
            part = v > v.mean()
            seed = int(np.where(~painted, np.abs(v), -1).argmax())
            if not part[seed]:
                part = ~part
            if part.reshape(grid)[[0, 0, -1, -1], [0, -1, 0, -1]].sum() >= 3 and (~part & ~painted).any():
                part = ~part  # sign-invariant corner rule: the seed's side holds 3+ corners -> the other side
                seed = int(np.where(part & ~painted, np.abs(v), -1).argmax())
            part &= ~painted
            labels, _ = scipy.ndimage.label(part.reshape(grid))
            comp = (labels == labels.flat[seed]).reshape(-1) & part
            if bool(cut["valid"][b, r]):
                assert np.array_equal(masks[r].numpy(), comp)
            painted |= comp


def test_subgraph_removal_ignores_removed_patches():
    """With the first object excluded up front, the subgraph cut equals TokenCut on the remaining patches alone."""
    grid = (6, 7)
    affinity = _affinities(batch=1, grid=grid, seed=7)
    exclude = torch.zeros(1, 42, dtype=torch.bool)
    exclude[0, :7] = True  # the top row
    cut = iterative_cut(affinity, grid, 1, 0.2, corners=None, removal="subgraph", exclude=exclude)
    keep = ~exclude[0]
    sub = affinity[0][keep][:, keep]
    graph = np.where(sub.numpy() > 0.2, 1.0, 1e-5)
    d = np.diag(graph.sum(1))
    _, vectors = scipy.linalg.eigh(d - graph, d, subset_by_index=[1, 2])
    v = vectors[:, 0]
    part = v > v.mean()
    seed = int(np.abs(v).argmax())
    if not part[seed]:
        part = ~part
    full = np.zeros(42, dtype=bool)
    full[keep.numpy()] = part
    labels, _ = scipy.ndimage.label(full.reshape(grid))
    seed_full = np.flatnonzero(keep.numpy())[seed]
    assert np.array_equal(cut["masks"][0, 0].view(-1).numpy(), (labels == labels.flat[seed_full]).reshape(-1))


def test_building_blocks():
    affinity = _affinities(batch=3)
    affinity[1] = affinity[1] * 0.1 + 0.8  # complete at tau 0.2
    taus = batched_adaptive_tau(affinity.float(), 0.2)
    for b in range(3):
        assert float(taus[b]) == pytest.approx(adaptive_tau(affinity[b].float(), 0.2), abs=1e-7)
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((5, 6, 7)) > 0.5)
    seeds = torch.tensor([int(np.flatnonzero(m.numpy())[0]) for m in masks])
    components = seed_components(masks, seeds)
    for m, s, c in zip(masks.numpy(), seeds.tolist(), components.numpy()):
        labels, _ = scipy.ndimage.label(m)
        assert np.array_equal(c, labels == labels.flat[s])
    boxes = masks_to_boxes(components)
    for c, box in zip(components, boxes):
        assert box.tolist() == mask_to_box(c).tolist()
    assert masks_to_boxes(torch.zeros(2, 3, 4, dtype=torch.bool)).abs().sum() == 0


def test_methods_on_a_tiny_tower(tiny_reg_dir):
    from grounding.tower.backbone import RegisterViT
    from grounding.objects.object_dino import ObjectDINO

    tower = RegisterViT.from_pretrained(tiny_reg_dir, preprocess={"mode": "pad"})
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (44, 52, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (46, 50, 3), dtype=np.uint8))]
    out = tower(images)
    found = ObjectDINO(k=2, restarts=2).instances(out, max_objects=4)
    assert found.masks.shape[:2] == (2, 4) and found.boxes.shape == (2, 4, 4)
    for name in INSTANCE_METHODS:
        result = instances(name, out, max_objects=3, object_dino=ObjectDINO(k=2, restarts=2))
        assert result.valid[:, 0].all()
        for b, (height, width) in enumerate(out.image_sizes):
            assert (result.boxes[b, :, 2] <= width).all() and (result.boxes[b, :, 3] <= height).all()
            pixel = instance_pixel_masks(result, out, b)
            assert pixel.shape[1:] == (height, width) and len(pixel) == int(result.valid[b].sum())
            flat = result.masks[b].flatten(1)
            assert (flat.sum(0) <= 1).all()
