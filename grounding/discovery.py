"""Single-object discovery: LOST, TokenCut, DINO-seg and TokenCut on Object-DINO features.

Each method maps a `TowerOutput` to a `DiscoveryOutput` (one box per image, in original-image pixels, plus the
patch mask it came from). Methods live in `DISCOVERY_METHODS`, a registry keyed by name.

The reference methods ("lost", "tokencut", "dinoseg", "object-dino") follow the published steps and parameters
exactly. On DINOv2 the last-layer keys share one large component (the key projection's bias, about 85 % of the
key energy; docs/discovery.md has the measurements): every key inner product is positive and every cosine is above
TokenCut's tau, so LOST's degrees are all equal, the TokenCut graphs are complete and their cuts arbitrary;
`DiscoveryOutput.degenerate` flags such images. Three named variants handle this:

* "lost-centred": LOST on keys minus the image's mean key (softmax attention is unchanged by adding one vector to
  every key, so the centred keys hold exactly what attention uses);
* "tokencut-adaptive", "object-dino-adaptive": when the reference graph is complete, tau becomes the image's
  median affinity (`adaptive_tau`); images with a usable reference graph are cut as in the reference.

`DEFAULT_METHOD` names the library's default. Options `centre=True` (any TokenCut-based runner) and
`polarity="border"` are there for comparison; `orient_maps` chooses the polarity of Object-DINO maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import logging

import torch
import torch.nn.functional as F

from .backbone import TowerOutput
from .regions import boxes_to_pixels, connected_components, mask_to_box

log = logging.getLogger(__name__)

__all__ = ["DiscoveryOutput", "DISCOVERY_METHODS", "DEFAULT_METHOD", "discover", "lost", "tokencut", "dinoseg",
           "register_method", "attention_qk", "adaptive_tau", "centred_cosine", "double_centre", "border_share",
           "cls_attention", "orient_maps"]

Polarity = Literal["seed", "border"]
MapPolarity = Literal["attention", "border"]


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


def cls_attention(out: TowerOutput, tower=None, layer: int = -1) -> torch.Tensor:
    """(B, h, w) [CLS] -> patch attention of one layer, averaged over heads (q/k as attention sees them)."""
    q, k = attention_qk(out, tower, layer)  # (B, H, T, d)
    attention = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, :, 0]  # (B, H, T)
    return out.patches(attention[..., None])[..., 0].mean(1).view(-1, *out.grid)


def orient_maps(raw_maps: torch.Tensor, attention: torch.Tensor | None = None, threshold: float = 0.6,
                rule: MapPolarity = "attention") -> tuple[torch.Tensor, torch.Tensor]:
    """Object maps with their polarity chosen per image; returns (maps (B, h, w), flipped (B,) bool).

    raw_maps: (B, h, w) min-max normalised attention received, m in [0, 1] (`ObjectDINOOutput.raw_maps`). The
    reference object score is 1 - m (background patches receive more attention); on close-ups, where the object
    is most of the image, the object receives more and the map comes out inverted. Per image the grid is split
    at the mean of 1 - m, and the score becomes m when
      rule="attention": the high side holds less [CLS] attention per patch than the low side (`attention`: the
        (B, h, w) output of `cls_attention`); the [CLS] token attends to the object;
      rule="border": the high side has the higher `border_share` (the boundary prior).
    Scores below `threshold` are zeroed, as in the reference map. docs/discovery.md compares the rules.
    """
    if rule == "attention" and attention is None:
        raise ValueError("orient_maps(rule='attention') needs the [CLS] attention: pass cls_attention(out, tower)")
    if rule not in ("attention", "border"):
        raise ValueError(f"rule must be 'attention' or 'border', got {rule!r}")
    maps, flipped = [], []
    for i, m in enumerate(raw_maps.float()):
        score = 1.0 - m  # (h, w)
        high = score > score.mean()
        flip = False
        if bool(high.any()) and bool((~high).any()):
            if rule == "attention":
                a = attention[i].float()
                flip = bool(a[high].mean() < a[~high].mean())
            else:
                flip = border_share(high) > border_share(~high)
        score = m if flip else score
        maps.append(torch.where(score >= threshold, score, torch.zeros_like(score)))
        flipped.append(flip)
    return torch.stack(maps), torch.tensor(flipped)


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


# ---------------------------------------------------------------- batch methods on a TowerOutput
def _last_keys(out: TowerOutput) -> torch.Tensor:
    keys = out.patches(out.k[-1])  # (B, H, N, d)
    return keys.permute(0, 2, 1, 3).flatten(2)  # (B, N, H*d)


def _run_lost(out: TowerOutput, k_patches: int = 100, centre: bool = False, **_) -> list[PatchBox]:
    keys = _last_keys(out).float()  # (B, N, C)
    if centre:
        keys = keys - keys.mean(1, keepdim=True)
    return [lost(k, out.grid, k_patches) for k in keys]


def _cut(affinity: torch.Tensor, grid: tuple[int, int], tau: float, eps: float, centre: bool, adaptive: bool,
         polarity: Polarity) -> PatchBox:
    affinity = double_centre(affinity) if centre else affinity
    if adaptive:
        tau = adaptive_tau(affinity, tau)
    return tokencut(affinity, grid, tau, eps, polarity)


def _run_tokencut(out: TowerOutput, tau: float | None = None, eps: float = 1e-5, centre: bool = False,
                  adaptive: bool = False, polarity: Polarity = "seed", **_) -> list[PatchBox]:
    tau = 0.2 if tau is None else tau
    keys = F.normalize(_last_keys(out).float(), dim=-1)  # (B, N, C)
    return [_cut(k @ k.T, out.grid, tau, eps, centre, adaptive, polarity) for k in keys]


def attention_qk(out: TowerOutput, tower=None, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's q and k as attention sees them, (B, H, T, d) each.

    DINOv3 rotates patch q/k inside attention (RoPE). A DINOv3 tower that captured them before the rotation (its
    default, `TowerConfig(qk_position="pre_rope")`, to match Object-DINO) needs `tower`: the rotation is then
    applied here with the model's own rotary embedding. Without `tower`, q/k are taken as captured, which is what
    attention saw for DINOv2 / registers / timm towers and DINOv3 towers built with qk_position="post_rope".
    """
    q, k = out.q[layer].float(), out.k[layer].float()  # (B, H, T, d)
    if tower is None or not tower.is_rotary or tower._capture_mode() != "projection":
        return q, k
    from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

    h, w = out.grid
    if out.step != out.patch_size:  # overlapping patches (a DenseExtractor): rotary tables at the strided centres
        from .descriptors import strided_rope

        size = ((h - 1) * out.step + out.patch_size, (w - 1) * out.step + out.patch_size)
        cos, sin = strided_rope(tower.model.rope_embeddings.inv_freq, size, out.patch_size, out.step)
    else:
        shape_only = torch.empty(1, 1, h * out.patch_size, w * out.patch_size, device=q.device)  # RoPE reads the shape
        cos, sin = tower.model.rope_embeddings(shape_only)  # (N, d) each
    return apply_rotary_pos_emb(q, k, cos.to(q), sin.to(q))


def _run_dinoseg(out: TowerOutput, head: int = 4, mass: float = 0.6, tower=None, **_) -> list[PatchBox]:
    if not 0 <= head < out.num_heads:
        raise ValueError(f"dinoseg head {head} out of range for a model with {out.num_heads} heads")
    q, k = attention_qk(out, tower)
    q, k = q[:, head], k[:, head]  # (B, T, d)
    attention = torch.softmax(q[:, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, 0]  # (B, T)
    return [dinoseg(a[out.num_prefix_tokens :], out.grid, mass) for a in attention]


def _run_object_dino(out: TowerOutput, object_dino=None, tau: float | None = None, centre: bool = False,
                     adaptive: bool = False, polarity: Polarity = "seed", **_) -> list[PatchBox]:
    from .object_dino import ObjectDINO

    object_dino = object_dino if object_dino is not None else ObjectDINO(k=12)
    analysis = object_dino.analyse(out)
    affinity = object_dino.discovery_affinity(out, analysis.selected)  # (B, N, N)
    cfg = object_dino.config
    tau = cfg.tokencut_tau if tau is None else tau
    return [_cut(a, out.grid, tau, cfg.tokencut_eps, centre, adaptive, polarity) for a in affinity]


def _first_instance(out: TowerOutput, method: str, **options) -> list[PatchBox]:
    from .instances import run_first_instance

    return run_first_instance(out, method, **options)


DISCOVERY_METHODS: dict[str, Callable[..., list[PatchBox]]] = {
    # the published methods with their reference parameters
    "lost": _run_lost,
    "tokencut": _run_tokencut,
    "dinoseg": _run_dinoseg,
    "object-dino": _run_object_dino,
    # for backbones whose features share one large component (docs/discovery.md): LOST on centred keys;
    # TokenCut with tau raised to the per-image median affinity when the reference graph is complete
    "lost-centred": partial(_run_lost, centre=True),
    "tokencut-adaptive": partial(_run_tokencut, adaptive=True),
    "object-dino-adaptive": partial(_run_object_dino, adaptive=True),
    # the first object of an instance method (grounding.instances): the largest region of the Object-DINO map
    # with [CLS]-attention polarity; the first MaskCut-style cut of the Object-DINO / key affinities
    "object-dino-map": lambda out, **options: _first_instance(out, "object-dino-map", **options),
    "object-dino-cut": lambda out, **options: _first_instance(out, "object-dino", **options),
    "maskcut-adaptive": lambda out, **options: _first_instance(out, "maskcut-adaptive", **options),
}
DEFAULT_METHOD = "object-dino-map"  # chosen on world val (docs/discovery.md, "Instances")


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
