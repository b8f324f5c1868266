"""The published single-object cuts, one image at a time: LOST, TokenCut (with double centring, an adaptive tau
and a border polarity), DINO-seg; `PatchBox` / `DiscoveryOutput` and the packaging of boxes into image pixels.

They read keys, affinities and attention maps, nothing model-specific: `ObjectDINO` cuts its own affinity with
`cut`, and `grounding.objects.discovery` runs them on a `TowerOutput` by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..tower.backbone import TowerOutput
from .regions import boxes_to_pixels, connected_components, mask_to_box

log = logging.getLogger(__name__)

__all__ = ["PatchBox", "DiscoveryOutput", "Polarity", "lost", "tokencut", "dinoseg", "cut", "adaptive_tau",
           "centred_cosine", "double_centre", "border_share", "discovery_output"]

Polarity = Literal["seed", "border"]


@dataclass
class DiscoveryOutput:
    boxes: torch.Tensor  # (B, 4) [x0, y0, x1, y1] original-image pixels
    patch_boxes: torch.Tensor  # (B, 4) patch units, exclusive upper corner
    masks: torch.Tensor  # (B, h, w) bool: the region the box was taken from
    seeds: torch.Tensor  # (B,) seed patch (row-major index)
    degenerate: torch.Tensor  # (B,) bool: the cut's graph was complete (or empty), so its cut and box are arbitrary


@dataclass
class PatchBox:
    box: torch.Tensor  # (4,) patch units
    mask: torch.Tensor  # (h, w) bool
    seed: int
    degenerate: bool = False
    pixel_box: torch.Tensor | None = None  # (4,) original-image pixels, when the method measured it finer than patches


def _component_of(mask: torch.Tensor, seed: int) -> torch.Tensor:
    labels = connected_components(mask)  # (h, w)
    label = labels.flatten()[seed]
    if int(label) == 0:
        raise ValueError("the seed patch lies outside the foreground mask")
    return labels == label


# ---------------------------------------------------------------- centring and the border prior
def centred_cosine(features: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, N) cosine similarity of the features after subtracting their mean over the N patches."""
    x = features.float()
    x = F.normalize(x - x.mean(0, keepdim=True), dim=-1)  # (N, C)
    return x @ x.T


def double_centre(affinity: torch.Tensor) -> torch.Tensor:
    """(N, N) inner products of unseen features X -> cosine of the centred features X - mean(X).

    Double centring G - row means - column means + grand mean is exactly (X - mean)(X - mean)^T; the result is
    cosine-normalised by its diagonal (patches whose centred feature vanishes get zero affinity).
    """
    a = affinity.double()
    centred = a - a.mean(0, keepdim=True) - a.mean(1, keepdim=True) + a.mean()  # (N, N)
    norms = centred.diagonal().clamp_min(0).sqrt()  # (N,)
    scale = torch.where(norms > 1e-9 * norms.max().clamp_min(1e-300), norms, torch.full_like(norms, float("inf")))
    return (centred / (scale[:, None] * scale[None, :])).to(affinity.dtype)


def _border(grid: tuple[int, int], device=None) -> torch.Tensor:
    border = torch.ones(grid, dtype=torch.bool, device=device)
    if grid[0] > 2 and grid[1] > 2:
        border[1:-1, 1:-1] = False
    return border  # (h, w)


def border_share(mask: torch.Tensor) -> float:
    """Boundary connectivity of a (h, w) mask: patches on the grid border / sqrt(patches). Inf when empty.

    Background regions run along the image border; objects touch it little for their size (the boundary prior of
    salient-object detection). The measure is scale-free, so a large close-up object can still score below the
    thin strip of background around it.
    """
    area = int(mask.sum())
    if area == 0:
        return float("inf")
    return int((mask & _border(tuple(mask.shape), mask.device)).sum()) / area**0.5


# ---------------------------------------------------------------- the published steps, one image at a time
def lost(keys: torch.Tensor, grid: tuple[int, int], k_patches: int = 100) -> PatchBox:
    """LOST on (N, C) patch keys: seed = fewest positive correlations, expand, seed's 4-connected component.

    Degenerate when every patch correlates positively with every other (all degrees equal): the seed is then
    patch 0 by the stable sort and the mask typically the whole image.
    """
    affinity = keys.float() @ keys.float().T  # (N, N)
    degree = (affinity > 0).sum(-1)  # (N,)
    order = torch.argsort(degree, stable=True)
    seed = int(order[0])
    potentials = order[:k_patches]
    similars = potentials[affinity[seed, potentials] > 0.0]
    score = affinity[similars].sum(0)  # (N,)
    mask = _component_of((score > 0).view(grid), seed)
    flat = bool(degree.min() == degree.max())
    return PatchBox(box=mask_to_box(mask), mask=mask, seed=seed, degenerate=flat)


def adaptive_tau(affinity: torch.Tensor, tau: float, quantile: float = 0.5) -> float:
    """`tau` if some off-diagonal affinity is at or below it; else (a complete graph) the `quantile` of them.

    The median (quantile 0.5) links each patch to about half of the others whatever the backbone's cosine
    offset, and leaves every image on which the reference threshold already gives a graph untouched. The value
    returned is the next float below the quantile, so that `affinity > tau` keeps the pairs AT the quantile too
    (ties at the top would otherwise empty the graph).
    """
    off_diagonal = affinity[~torch.eye(len(affinity), dtype=torch.bool, device=affinity.device)]  # (N*N-N,)
    if off_diagonal.numel() == 0 or bool((off_diagonal <= tau).any()):
        return tau
    rank = min(off_diagonal.numel(), max(1, round(quantile * (off_diagonal.numel() - 1)) + 1))
    value = off_diagonal.kthvalue(rank).values  # kthvalue: no input-size limit, unlike torch.quantile
    return float(torch.nextafter(value, torch.tensor(float("-inf"), dtype=value.dtype, device=value.device)))


def tokencut(affinity: torch.Tensor, grid: tuple[int, int], tau: float = 0.2, eps: float = 1e-5,
             polarity: Polarity = "seed") -> PatchBox:
    """Normalised cut on a (N, N) cosine affinity: binary graph, 2nd smallest generalised eigenvector.

    polarity="seed" (reference): the object is the side holding the patch of largest |eigenvector|;
    "border": the side with the lower `border_share`, seeded at its largest |eigenvector| patch.
    `degenerate` is set when every off-diagonal edge is equal (all > tau, or all <= tau): the cut is arbitrary.
    """
    if polarity not in ("seed", "border"):
        raise ValueError(f"polarity must be 'seed' or 'border', got {polarity!r}")
    graph = torch.where(affinity.double() > tau, 1.0, eps).to(torch.float64)  # (N, N)
    off_diagonal = graph[~torch.eye(len(graph), dtype=torch.bool, device=graph.device)]
    complete = bool((off_diagonal == off_diagonal[0]).all()) if off_diagonal.numel() else True
    if complete:
        log.info("TokenCut graph is %s (every affinity %s tau=%.2f; range %.2f..%.2f): the cut is arbitrary",
                    "complete" if off_diagonal.numel() and off_diagonal[0] == 1.0 else "empty",
                    ">" if off_diagonal.numel() and off_diagonal[0] == 1.0 else "<=", tau,
                    float(affinity.min()), float(affinity.max()))
    degree = graph.sum(-1)  # (N,)
    inv_sqrt = degree.rsqrt()
    laplacian = inv_sqrt[:, None] * (torch.diag(degree) - graph) * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues
    second = vectors[:, 1] * inv_sqrt  # generalised eigenvector of (D - A) y = lambda D y
    partition = second > second.mean()
    if polarity == "border" and bool(partition.any()) and not bool(partition.all()):
        inside, outside = border_share(partition.view(grid)), border_share(~partition.view(grid))
        if outside < inside:
            partition = ~partition
        seed = int(torch.where(partition, second.abs(), torch.full_like(second, -1.0)).argmax())
    else:
        seed = int(second.abs().argmax())
        if not bool(partition[seed]):
            partition = ~partition
    mask = _component_of(partition.view(grid), seed)
    return PatchBox(box=mask_to_box(mask), mask=mask, seed=seed, degenerate=complete)


def dinoseg(cls_attention: torch.Tensor, grid: tuple[int, int], mass: float = 0.6) -> PatchBox:
    """DINO-seg on one head's (N,) [CLS]->patch attention: top `mass` of attention, largest component."""
    weights = cls_attention.double() / cls_attention.double().sum()
    values, order = torch.sort(weights)  # ascending
    keep_sorted = torch.cumsum(values, 0) > (1 - mass)
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    labels = connected_components(keep.view(grid))
    sizes = torch.bincount(labels.flatten(), minlength=2)[1:]
    largest = int(sizes.argmax()) + 1
    mask = labels == largest
    seed = int((cls_attention.flatten() * mask.flatten()).argmax())
    return PatchBox(box=mask_to_box(mask), mask=mask, seed=seed)


def cut(affinity: torch.Tensor, grid: tuple[int, int], tau: float, eps: float, centre: bool, adaptive: bool,
         polarity: Polarity) -> PatchBox:
    """TokenCut on a (N, N) affinity, optionally double-centred and with an adaptive tau (the runners' step)."""
    affinity = double_centre(affinity) if centre else affinity
    if adaptive:
        tau = adaptive_tau(affinity, tau)
    return tokencut(affinity, grid, tau, eps, polarity)


def discovery_output(found: list[PatchBox], out: TowerOutput) -> DiscoveryOutput:
    """One `PatchBox` per image -> a `DiscoveryOutput`, boxes mapped to original-image pixels with each image's
    pixels per patch (or the `pixel_box` a method measured itself)."""
    patch_boxes = torch.stack([f.box for f in found]).cpu()
    boxes = boxes_to_pixels(patch_boxes, out.patch_scale, out.image_sizes)
    for i, f in enumerate(found):
        if f.pixel_box is not None:
            boxes[i] = f.pixel_box.to(boxes)
    return DiscoveryOutput(
        boxes=boxes,
        patch_boxes=patch_boxes,
        masks=torch.stack([f.mask for f in found]).cpu(),
        seeds=torch.tensor([f.seed for f in found]),
        degenerate=torch.tensor([f.degenerate for f in found]),
    )
