"""Instance discovery: several objects per image, each a patch mask, a box and a score, batched over images.

`iterative_cut` is a batched MaskCut (CutLER, Wang et al. CVPR 2023): on a (B, N, N) affinity, binary graph
`affinity > tau` (eps elsewhere), normalised cut by the second smallest generalised eigenvector (one batched
`torch.linalg.eigh` over all images per round), bipartition at its mean, object side chosen by the seed
(largest |eigenvector| entry), flipped when that side holds `corners` or more of the grid's 4 corners (the
new seed: the largest |entry| on the other side), the seed's 4-connected component; the found patches are then
removed and the next round cuts what is left.

MaskCut itself counts the corners on the side `v > mean`, which depends on the sign the eigensolver happens to
give the eigenvector; the rule here counts them on the seed's side, which does not.

Two ways to remove the found patches (`removal`):

* "reference" (MaskCut's own): the found patches' features are zeroed, so they keep eps edges to every patch
  (cosine 0 <= tau for tau >= 0; applied on the graph, so it also holds for tau < 0) and stay in the graph;
  the object side is then taken among the remaining patches.
* "subgraph": the cut is the normalised cut of the graph of the remaining patches only. Found patches get a
  decoupled diagonal entry above the normalised Laplacian's spectrum (<= 2), so the smallest eigenvectors are
  exactly those of the remaining subgraph, zero on the removed patches; the batch keeps one shape.

Named instance methods (`INSTANCE_METHODS`), all through the same cut so the comparison is like for like:

* "maskcut": last-layer keys (heads concatenated), cosine, tau = 0.15, corners >= 3, reference removal;
* "maskcut-adaptive": the same, tau raised to the image's median affinity when the reference graph is complete
  (`grounding.objects.cuts.adaptive_tau`, the rule of `tokencut-adaptive`); needed on the shipped DINOv2;
* "object-dino": Object-DINO's discovery affinity (`ObjectDINO.discovery_affinity`), tau = -0.35 raised to the
  median when complete, corners >= 3, subgraph removal;
* "object-dino-map": the 4-connected regions of the Object-DINO map (k = 5) with [CLS]-attention polarity
  (`orient_maps(rule="attention")`), largest first (no cut);
* "object-dino-map-cut" (`DEFAULT_INSTANCE_METHOD`, chosen on world val): the map's regions, then the rounds of
  "object-dino" on the discovery affinity of the same clustering's object heads that overlap no kept instance
  (mask IoU < 0.5), up to `max_objects`;
* "object-dino-in-map", "object-dino-reference", "maskcut-subgraph": variants measured in docs/discovery.md.

Rounds stop being reported for an image once its remaining patches are too few; a round whose component covers
at most `min_share` of the grid (MaskCut: 1 %) is not reported but its patches are removed all the same.
Instances come in round order (the first is the single-object answer); `scores` = 1 - lambda_2 of the round
(1: a cut that costs nothing; the normalised-cut value of the partition is about lambda_2).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

from dataclasses import replace

from ..tower.backbone import TowerOutput
from .cuts import PatchBox
from .discovery import cls_attention, orient_maps, register_discovery
from .object_dino import ObjectDINO, ObjectDINOConfig
from .instance_registry import (DEFAULT_INSTANCE_METHOD, INSTANCE_METHODS, InstanceOutput, instance_pixel_masks,
                                instances, masks_to_boxes)
from .regions import connected_components

__all__ = ["InstanceOutput", "iterative_cut", "batched_adaptive_tau", "seed_components", "masks_to_boxes",
           "INSTANCE_METHODS", "DEFAULT_INSTANCE_METHOD", "instances", "instance_pixel_masks", "oriented_object_maps",
           "first_patch_boxes"]

Removal = Literal["reference", "subgraph"]
_OUTSIDE = 10.0  # diagonal given to removed patches: above the normalised Laplacian's spectrum [0, 2]





# ---------------------------------------------------------------- building blocks, batched
def batched_adaptive_tau(affinity: torch.Tensor, tau: float, quantile: float = 0.5) -> torch.Tensor:
    """(B, N, N) -> (B,) `grounding.objects.cuts.adaptive_tau` per image, without a loop: `tau` where some
    off-diagonal affinity is at or below it, else the next float below the `quantile` of the off-diagonal ones."""
    batch, n, _ = affinity.shape
    off = affinity[:, ~torch.eye(n, dtype=torch.bool, device=affinity.device)]  # (B, N*N-N)
    result = torch.full((batch,), tau, dtype=affinity.dtype, device=affinity.device)
    if off.shape[1] == 0:
        return result
    rank = min(off.shape[1], max(1, round(quantile * (off.shape[1] - 1)) + 1))
    value = off.kthvalue(rank, dim=1).values  # (B,)
    below = torch.nextafter(value, torch.full_like(value, float("-inf")))
    complete = ~(off <= tau).any(1)
    return torch.where(complete, below, result)


def seed_components(mask: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool, (B,) row-major seed -> (B, h, w) the seed's 4-connected component (empty if the seed
    lies outside the mask). Flood fill by 4-neighbour dilation, all images at once."""
    batch, h, w = mask.shape
    reach = torch.zeros(batch, h * w, dtype=torch.bool, device=mask.device)
    reach[torch.arange(batch, device=mask.device), seed] = True
    reach = reach.view(batch, h, w) & mask
    while True:
        padded = F.pad(reach, (1, 1, 1, 1))  # (B, h+2, w+2)
        grown = (reach | padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]) & mask
        if torch.equal(grown, reach):
            return reach
        reach = grown





def _corner_count(partition: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    p = partition.view(-1, *grid)
    return p[:, 0, 0].long() + p[:, 0, -1].long() + p[:, -1, 0].long() + p[:, -1, -1].long()  # (B,)


def iterative_cut(affinity: torch.Tensor, grid: tuple[int, int], max_objects: int = 3,
                  tau: float | torch.Tensor = 0.15, eps: float = 1e-5, corners: int | None = 3,
                  removal: Removal = "reference", min_share: float = 0.01,
                  exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Batched MaskCut on a (B, N, N) affinity; returns masks (B, K, h, w), scores (B, K), valid (B, K),
    degenerate (B,) with K = max_objects.

    tau: a float or a (B,) tensor (one threshold per image). corners: flip the cut when its mean-split side holds
    at least this many grid corners (None: TokenCut's rule only, the side holding the seed). exclude: (B, N) bool,
    patches removed before the first round. With max_objects=1, corners=None and no exclude the first round is
    `grounding.objects.cuts.tokencut(affinity[b], grid, tau, eps)` for each image.
    """
    if removal not in ("reference", "subgraph"):
        raise ValueError(f"removal must be 'reference' or 'subgraph', got {removal!r}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    batch, n, _ = affinity.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"affinity has {n} patches, grid {grid} holds {grid[0] * grid[1]}")
    device = affinity.device
    tau = torch.as_tensor(tau, dtype=torch.float64, device=device).expand(batch)
    binary = affinity.double() > tau[:, None, None]  # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    off = binary[:, ~eye]  # (B, N*N-N)
    degenerate = (off == off[:, :1]).all(1) if off.shape[1] else torch.ones(batch, dtype=torch.bool, device=device)
    graph = torch.where(binary, 1.0, eps).double()  # (B, N, N)
    removed = torch.zeros(batch, n, dtype=torch.bool, device=device) if exclude is None else exclude.clone().bool()
    rows = torch.arange(batch, device=device)
    masks = torch.zeros(batch, max_objects, n, dtype=torch.bool, device=device)
    scores = torch.zeros(batch, max_objects, dtype=torch.float64, device=device)
    valid = torch.zeros(batch, max_objects, dtype=torch.bool, device=device)
    for round_ in range(max_objects):
        keep = ~removed  # (B, N)
        if removal == "reference":  # zeroed features: eps to every patch, themselves included
            pair = keep[:, :, None] & keep[:, None, :]
            g = torch.where(pair, graph, torch.full_like(graph, eps))
            degree = g.sum(-1)
            inv_sqrt = degree.rsqrt()
            laplacian = inv_sqrt[:, :, None] * (torch.diag_embed(degree) - g) * inv_sqrt[:, None, :]
        else:
            pair = keep[:, :, None] & keep[:, None, :]
            g = torch.where(pair, graph, torch.zeros_like(graph))
            degree = torch.where(keep, g.sum(-1), torch.ones_like(g[..., 0]))
            inv_sqrt = degree.rsqrt()
            laplacian = inv_sqrt[:, :, None] * (torch.diag_embed(degree) - g) * inv_sqrt[:, None, :]
            laplacian = laplacian + torch.diag_embed(torch.where(keep, 0.0, _OUTSIDE).double())
        values, vectors = torch.linalg.eigh(laplacian)  # (B, N), (B, N, N) ascending
        second = vectors[:, :, 1] * inv_sqrt  # (B, N) generalised eigenvector
        counted = keep if removal == "subgraph" else torch.ones_like(keep)
        mean = (second * counted).sum(-1, keepdim=True) / counted.sum(-1, keepdim=True).clamp_min(1)
        partition = second > mean  # (B, N)
        seed = torch.where(keep, second.abs(), torch.full_like(second, -1.0)).argmax(-1)  # (B,)
        flip = ~partition[rows, seed]
        if corners is not None:  # MaskCut's object-centric prior, sign-invariant: a seed side holding >= `corners`
            seed_side = torch.where(flip[:, None], ~partition, partition)  # of the grid corners is background
            by_corners = _corner_count(seed_side, grid) >= corners
            other = torch.where(keep & ~seed_side, second.abs(), torch.full_like(second, -1.0))
            has_other = (keep & ~seed_side).any(-1)
            by_corners &= has_other
            seed = torch.where(by_corners, other.argmax(-1), seed)
            flip = flip ^ by_corners
        side = torch.where(flip[:, None], ~partition, partition) & keep  # (B, N)
        component = seed_components(side.view(batch, *grid), seed).view(batch, n)
        enough = keep.sum(-1) >= 2
        component &= enough[:, None]
        masks[:, round_] = component
        scores[:, round_] = 1.0 - values[:, 1]
        valid[:, round_] = enough & (component.sum(-1) > min_share * n) & component.any(-1)
        removed |= component
    masks &= valid[:, :, None]
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    return {"masks": masks.view(batch, max_objects, *grid), "scores": scores.float(), "valid": valid,
            "degenerate": degenerate}


# ---------------------------------------------------------------- methods on a TowerOutput



def _key_affinity(out: TowerOutput) -> torch.Tensor:
    keys = out.patches(out.k[-1])  # (B, H, N, d)
    keys = F.normalize(keys.permute(0, 2, 1, 3).flatten(2).float(), dim=-1)  # (B, N, H*d)
    return keys @ keys.transpose(1, 2)  # (B, N, N)


def _run_maskcut(out: TowerOutput, max_objects: int = 3, tau: float | None = None, eps: float = 1e-5,
                 adaptive: bool = False, corners: int | None = 3, removal: Removal = "reference", **_) -> dict:
    tau = 0.15 if tau is None else tau
    affinity = _key_affinity(out)
    threshold = batched_adaptive_tau(affinity, tau) if adaptive else tau
    return iterative_cut(affinity, out.grid, max_objects, threshold, eps, corners, removal)


def _run_object_dino(out: TowerOutput, max_objects: int = 3, object_dino=None, tau: float | None = None,
                     adaptive: bool = True, corners: int | None = 3, removal: Removal = "subgraph", **_) -> dict:
    object_dino = object_dino if object_dino is not None else ObjectDINO(k=12)
    analysis = object_dino.analyse(out)
    affinity = object_dino.discovery_affinity(out, analysis.selected)  # (B, N, N)
    cfg = object_dino.config
    tau = cfg.tokencut_tau if tau is None else tau
    threshold = batched_adaptive_tau(affinity, tau) if adaptive else tau
    return iterative_cut(affinity, out.grid, max_objects, threshold, cfg.tokencut_eps, corners, removal)


def oriented_object_maps(out: TowerOutput, object_dino=None, map_k: int | None = 5, tower=None,
                         with_model: bool = False):
    """(B, h, w) Object-DINO maps with the [CLS]-attention polarity (`orient_maps(rule="attention")`), clustered
    with `map_k` clusters (the maps' reference k = 5; None: the given config's k), and the analysis."""
    config = object_dino.config if object_dino is not None else ObjectDINOConfig()
    map_k = min(map_k, out.num_layers * out.num_heads) if map_k is not None else None  # tiny models: fewer heads
    if map_k is not None and map_k != config.k:
        object_dino = object_dino.with_config(replace(config, k=map_k)) if object_dino is not None else None
        config = replace(config, k=map_k)
    object_dino = object_dino if object_dino is not None else ObjectDINO(config)
    analysis = object_dino.analyse(out)
    maps, _ = orient_maps(analysis.raw_maps, cls_attention(out, tower), config.threshold, rule="attention")
    maps[analysis.degenerate] = 0.0
    if with_model:
        return maps.to(out.q.device), analysis, object_dino
    return maps.to(out.q.device), analysis


def map_regions(maps: torch.Tensor, max_objects: int) -> dict[str, torch.Tensor]:
    """(B, h, w) object maps -> the `max_objects` largest 4-connected regions of map > 0 per image (ties: higher
    mean score first), as `iterative_cut`'s dict (scores: the mean map score inside)."""
    batch, h, w = maps.shape
    labels = connected_components(maps > 0)  # (B, h, w)
    count = max(int(labels.max()), 1)
    members = labels[:, None] == torch.arange(1, count + 1, device=maps.device)[None, :, None, None]  # (B, L, h, w)
    area = members.flatten(2).sum(-1).float()  # (B, L)
    mean = (members * maps[:, None]).flatten(2).sum(-1) / area.clamp_min(1)
    order = torch.argsort(area + mean.clamp(0, 1) * 0.5, dim=1, descending=True)[:, :max_objects]  # area, then score
    picked = members.gather(1, order[:, :, None, None].expand(-1, -1, h, w))  # (B, k, h, w)
    picked_area = area.gather(1, order)
    k = picked.shape[1]
    masks = torch.zeros(batch, max_objects, h, w, dtype=torch.bool, device=maps.device)
    masks[:, :k] = picked & (picked_area > 0)[:, :, None, None]
    valid = torch.zeros(batch, max_objects, dtype=torch.bool, device=maps.device)
    valid[:, :k] = picked_area > 0
    scores = torch.zeros(batch, max_objects, device=maps.device)
    scores[:, :k] = torch.where(valid[:, :k], mean.gather(1, order), 0.0)
    return {"masks": masks, "scores": scores, "valid": valid, "degenerate": ~valid[:, 0]}


def _run_object_dino_map(out: TowerOutput, max_objects: int = 3, object_dino=None, map_k: int | None = 5,
                         tower=None, **_) -> dict:
    maps, _ = oriented_object_maps(out, object_dino, map_k, tower)
    return map_regions(maps, max_objects)


def _run_object_dino_in_map(out: TowerOutput, max_objects: int = 3, object_dino=None, tau: float | None = None,
                            map_k: int | None = 5, tower=None, corners: int | None = 3, **_) -> dict:
    """Iterative cuts of the discovery affinity restricted to the foreground of the oriented object map."""
    object_dino = object_dino if object_dino is not None else ObjectDINO(k=12)
    maps, _ = oriented_object_maps(out, object_dino, map_k, tower)
    analysis = object_dino.analyse(out)
    affinity = object_dino.discovery_affinity(out, analysis.selected)
    cfg = object_dino.config
    tau = cfg.tokencut_tau if tau is None else tau
    exclude = (maps <= 0).flatten(1)  # (B, N)
    exclude &= ~exclude.all(1, keepdim=True)  # an empty map: cut the whole image
    return iterative_cut(affinity, out.grid, max_objects, batched_adaptive_tau(affinity, tau), cfg.tokencut_eps,
                         corners, "subgraph", exclude=exclude)


def _run_object_dino_map_cut(out: TowerOutput, max_objects: int = 3, object_dino=None, map_k: int | None = 5,
                             tower=None, tau: float | None = None, corners: int | None = 3, overlap: float = 0.5,
                             **_) -> dict:
    """The map's regions (largest first), then the iterative cuts of the discovery affinity of the same analysis's
    object heads that overlap no kept instance by mask IoU >= `overlap`, up to `max_objects`."""
    maps, analysis, model = oriented_object_maps(out, object_dino, map_k, tower, with_model=True)
    regions = map_regions(maps, max_objects)
    affinity = model.discovery_affinity(out, analysis.selected)
    cfg = model.config
    tau = cfg.tokencut_tau if tau is None else tau
    cut = iterative_cut(affinity, out.grid, max_objects, batched_adaptive_tau(affinity, tau), cfg.tokencut_eps,
                        corners, "subgraph")
    candidates = torch.cat([regions["masks"], cut["masks"]], 1).flatten(2)  # (B, 2K, N)
    valid = torch.cat([regions["valid"], cut["valid"]], 1)  # (B, 2K)
    scores = torch.cat([regions["scores"].float(), cut["scores"].float()], 1)
    inter = candidates.float() @ candidates.float().transpose(1, 2)  # (B, 2K, 2K)
    area = candidates.sum(-1).float()
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp_min(1)
    batch, total = valid.shape
    kept = torch.zeros_like(valid)
    for i in range(total):  # in order: a candidate is kept when valid, not overlapping a kept one, and room is left
        clash = ((iou[:, i] >= overlap) & kept).any(-1)
        room = kept.sum(-1) < max_objects
        kept[:, i] = valid[:, i] & ~clash & room
    order = torch.argsort((~kept).float() + torch.arange(total, device=kept.device) / (2.0 * total), dim=1)
    order = order[:, :max_objects]
    masks = candidates.gather(1, order[:, :, None].expand(-1, -1, candidates.shape[-1]))
    picked = kept.gather(1, order)
    return {"masks": (masks & picked[:, :, None]).view(batch, max_objects, *out.grid), "valid": picked,
            "scores": torch.where(picked, scores.gather(1, order), 0.0), "degenerate": regions["degenerate"]}


INSTANCE_METHODS.update({
    "maskcut": _run_maskcut,  # reference parameters (tau 0.15, eps 1e-5, corners >= 3, zeroed features)
    "maskcut-adaptive": partial(_run_maskcut, adaptive=True),
    "maskcut-subgraph": partial(_run_maskcut, adaptive=True, removal="subgraph"),
    "object-dino": _run_object_dino,
    "object-dino-reference": partial(_run_object_dino, removal="reference"),
    "object-dino-map": _run_object_dino_map,
    "object-dino-in-map": _run_object_dino_in_map,
    "object-dino-map-cut": _run_object_dino_map_cut,  # DEFAULT_INSTANCE_METHOD, chosen on world val
})








# ---------------------------------------------------------------- single-object runners (grounding.objects.discovery)
def run_first_instance(out: TowerOutput, method: str = "object-dino", **options) -> list:
    """The first instance of an instance method as a single-object `PatchBox` list (whole grid when none)."""
    return first_patch_boxes(INSTANCE_METHODS[method](out, max_objects=1, **options))


def first_patch_boxes(cut: dict[str, torch.Tensor]) -> list[PatchBox]:
    """An instance method's dict -> its first instance per image as a `PatchBox` (the whole grid when invalid)."""
    found = []
    for mask, valid, degenerate in zip(cut["masks"][:, 0].cpu(), cut["valid"][:, 0].cpu(), cut["degenerate"].cpu()):
        if not bool(valid):
            mask = torch.ones_like(mask)
        seed = int(mask.flatten().nonzero()[0])
        found.append(PatchBox(box=masks_to_boxes(mask), mask=mask, seed=seed, degenerate=bool(degenerate)))
    return found


# the first object of an instance method as a single-object discovery method (registered when grounding.objects
# imports this module): the largest region of the Object-DINO map with [CLS]-attention polarity; the first
# MaskCut-style cut of the Object-DINO / key affinities
register_discovery("object-dino-map", partial(run_first_instance, method="object-dino-map"))
register_discovery("object-dino-cut", partial(run_first_instance, method="object-dino"))
register_discovery("maskcut-adaptive", partial(run_first_instance, method="maskcut-adaptive"))
