"""Single-object discovery: LOST, TokenCut, DINO-seg and TokenCut on Object-DINO features.

Each method maps a `TowerOutput` to a `DiscoveryOutput` (one box per image, in original-image pixels, plus the
patch mask it came from). Methods live in `DISCOVERY_METHODS`, a registry keyed by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import logging

import torch
import torch.nn.functional as F

from .backbone import TowerOutput
from .regions import boxes_to_pixels, connected_components, mask_to_box

log = logging.getLogger(__name__)

__all__ = ["DiscoveryOutput", "DISCOVERY_METHODS", "discover", "lost", "tokencut", "dinoseg", "register_method"]


@dataclass
class DiscoveryOutput:
    boxes: torch.Tensor  # (B, 4) [x0, y0, x1, y1] original-image pixels
    patch_boxes: torch.Tensor  # (B, 4) patch units, exclusive upper corner
    masks: torch.Tensor  # (B, h, w) bool: the region the box was taken from
    seeds: torch.Tensor  # (B,) seed patch (row-major index)
    degenerate: torch.Tensor  # (B,) bool: TokenCut's graph was complete, so its cut (and box) is arbitrary


@dataclass
class PatchBox:
    box: torch.Tensor  # (4,) patch units
    mask: torch.Tensor  # (h, w) bool
    seed: int
    degenerate: bool = False


def _component_of(mask: torch.Tensor, seed: int) -> torch.Tensor:
    labels = connected_components(mask)  # (h, w)
    label = labels.flatten()[seed]
    if int(label) == 0:
        raise ValueError("the seed patch lies outside the foreground mask")
    return labels == label


# ---------------------------------------------------------------- the published steps, one image at a time
def lost(keys: torch.Tensor, grid: tuple[int, int], k_patches: int = 100) -> PatchBox:
    """LOST on (N, C) patch keys: seed = fewest positive correlations, expand, seed's 4-connected component."""
    affinity = keys.float() @ keys.float().T  # (N, N)
    degree = (affinity > 0).sum(-1)  # (N,)
    order = torch.argsort(degree, stable=True)
    seed = int(order[0])
    potentials = order[:k_patches]
    similars = potentials[affinity[seed, potentials] > 0.0]
    score = affinity[similars].sum(0)  # (N,)
    mask = _component_of((score > 0).view(grid), seed)
    return PatchBox(box=mask_to_box(mask), mask=mask, seed=seed)


def tokencut(affinity: torch.Tensor, grid: tuple[int, int], tau: float = 0.2, eps: float = 1e-5) -> PatchBox:
    """Normalised cut on a (N, N) cosine affinity: binary graph, 2nd smallest generalised eigenvector."""
    graph = torch.where(affinity.double() > tau, 1.0, eps).to(torch.float64)  # (N, N)
    complete = bool((graph == 1.0).all())
    if complete:
        log.warning("TokenCut graph is complete (every affinity > tau=%.2f, min %.2f): the cut is arbitrary; "
                    "try a higher tau", tau, float(affinity.min()))
    degree = graph.sum(-1)  # (N,)
    inv_sqrt = degree.rsqrt()
    laplacian = inv_sqrt[:, None] * (torch.diag(degree) - graph) * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues
    second = vectors[:, 1] * inv_sqrt  # generalised eigenvector of (D - A) y = lambda D y
    partition = second > second.mean()
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


# ---------------------------------------------------------------- batch methods on a TowerOutput
def _last_keys(out: TowerOutput) -> torch.Tensor:
    keys = out.patches(out.k[-1])  # (B, H, N, d)
    return keys.permute(0, 2, 1, 3).flatten(2)  # (B, N, H*d)


def _run_lost(out: TowerOutput, k_patches: int = 100, **_) -> list[PatchBox]:
    return [lost(keys, out.grid, k_patches) for keys in _last_keys(out)]


def _run_tokencut(out: TowerOutput, tau: float = 0.2, eps: float = 1e-5, **_) -> list[PatchBox]:
    keys = F.normalize(_last_keys(out).float(), dim=-1)
    return [tokencut(k @ k.T, out.grid, tau, eps) for k in keys]


def _run_dinoseg(out: TowerOutput, head: int = 4, mass: float = 0.6, **_) -> list[PatchBox]:
    if not 0 <= head < out.num_heads:
        raise ValueError(f"dinoseg head {head} out of range for a model with {out.num_heads} heads")
    q, k = out.q[-1][:, head].float(), out.k[-1][:, head].float()  # (B, T, d)
    attention = torch.softmax(q[:, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, 0]  # (B, T)
    return [dinoseg(a[out.num_prefix_tokens :], out.grid, mass) for a in attention]


def _run_object_dino(out: TowerOutput, object_dino=None, **_) -> list[PatchBox]:
    from .object_dino import ObjectDINO

    object_dino = object_dino if object_dino is not None else ObjectDINO(k=12)
    analysis = object_dino.analyse(out)
    affinity = object_dino.discovery_affinity(out, analysis.selected)  # (B, N, N)
    cfg = object_dino.config
    return [tokencut(a, out.grid, cfg.tokencut_tau, cfg.tokencut_eps) for a in affinity]


DISCOVERY_METHODS: dict[str, Callable[..., list[PatchBox]]] = {
    "lost": _run_lost,
    "tokencut": _run_tokencut,
    "dinoseg": _run_dinoseg,
    "object-dino": _run_object_dino,
}


def register_method(name: str, function: Callable[..., list[PatchBox]]) -> None:
    """Add a discovery method: `function(tower_output, **options) -> list[PatchBox]`."""
    DISCOVERY_METHODS[name] = function


def discover(method: str, out: TowerOutput, **options) -> DiscoveryOutput:
    """Run a registered method; boxes are mapped to original-image pixels with each image's pixels per patch."""
    if method not in DISCOVERY_METHODS:
        raise KeyError(f"unknown discovery method {method!r}; choose from {sorted(DISCOVERY_METHODS)}")
    found = DISCOVERY_METHODS[method](out, **options)
    patch_boxes = torch.stack([f.box for f in found]).cpu()
    return DiscoveryOutput(
        boxes=boxes_to_pixels(patch_boxes, out.patch_scale, out.image_sizes),
        patch_boxes=patch_boxes,
        masks=torch.stack([f.mask for f in found]).cpu(),
        seeds=torch.tensor([f.seed for f in found]),
        degenerate=torch.tensor([f.degenerate for f in found]),
    )
