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
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

from ..tower.backbone import TowerOutput
from ..tower.attention import attention_qk
from .cuts import (DiscoveryOutput, PatchBox, Polarity, adaptive_tau, border_share, centred_cosine, cut, dinoseg,
                   discovery_output, double_centre, lost, tokencut)
from .object_dino import ObjectDINO

__all__ = ["DiscoveryOutput", "PatchBox", "DISCOVERY_METHODS", "DEFAULT_METHOD", "discover", "register_discovery",
           "lost", "tokencut", "dinoseg", "adaptive_tau", "centred_cosine", "double_centre", "border_share",
           "cls_attention", "orient_maps"]

MapPolarity = Literal["attention", "border"]


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


# ---------------------------------------------------------------- batch methods on a TowerOutput
def _last_keys(out: TowerOutput) -> torch.Tensor:
    keys = out.patches(out.k[-1])  # (B, H, N, d)
    return keys.permute(0, 2, 1, 3).flatten(2)  # (B, N, H*d)


def _run_lost(out: TowerOutput, k_patches: int = 100, centre: bool = False, **_) -> list[PatchBox]:
    keys = _last_keys(out).float()  # (B, N, C)
    if centre:
        keys = keys - keys.mean(1, keepdim=True)
    return [lost(k, out.grid, k_patches) for k in keys]


def _run_tokencut(out: TowerOutput, tau: float | None = None, eps: float = 1e-5, centre: bool = False,
                  adaptive: bool = False, polarity: Polarity = "seed", **_) -> list[PatchBox]:
    tau = 0.2 if tau is None else tau
    keys = F.normalize(_last_keys(out).float(), dim=-1)  # (B, N, C)
    return [cut(k @ k.T, out.grid, tau, eps, centre, adaptive, polarity) for k in keys]


def _run_dinoseg(out: TowerOutput, head: int = 4, mass: float = 0.6, tower=None, **_) -> list[PatchBox]:
    if not 0 <= head < out.num_heads:
        raise ValueError(f"dinoseg head {head} out of range for a model with {out.num_heads} heads")
    q, k = attention_qk(out, tower)
    q, k = q[:, head], k[:, head]  # (B, T, d)
    attention = torch.softmax(q[:, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, 0]  # (B, T)
    return [dinoseg(a[out.num_prefix_tokens :], out.grid, mass) for a in attention]


def _run_object_dino(out: TowerOutput, object_dino=None, tau: float | None = None, centre: bool = False,
                     adaptive: bool = False, polarity: Polarity = "seed", **_) -> list[PatchBox]:
    object_dino = object_dino if object_dino is not None else ObjectDINO(k=12)
    return object_dino.cut(out, tau=tau, centre=centre, adaptive=adaptive, polarity=polarity)


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
}
DEFAULT_METHOD = "object-dino-whole"  # registered by .compact; chosen on world val and photo val (docs/discovery.md)


def register_discovery(name: str, function: Callable[..., list[PatchBox]]) -> None:
    """Add a discovery method: `function(tower_output, **options) -> list[PatchBox]`."""
    DISCOVERY_METHODS[name] = function


def discover(method: str, out: TowerOutput, **options) -> DiscoveryOutput:
    """Run a registered method; boxes are mapped to original-image pixels with each image's pixels per patch."""
    if method not in DISCOVERY_METHODS:
        raise KeyError(f"unknown discovery method {method!r}; choose from {sorted(DISCOVERY_METHODS)}")
    return discovery_output(DISCOVERY_METHODS[method](out, **options), out)
