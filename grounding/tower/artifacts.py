"""High-norm artifact diagnostics (the registers paper's figures): token norms per layer, outlier fraction,
[CLS] and register attention maps from captured q/k.

Outlier rule: a patch token is an outlier in a layer when its norm exceeds `factor` times that layer's median
patch norm (the paper's high-norm tokens sit at ~10x; its absolute rule "> 150" holds only for DINOv2 ViT-g
outputs, so a relative rule is the default here; pass `absolute=` to use a fixed threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbone import TowerOutput

__all__ = ["NormStats", "token_norm_stats", "prefix_attention_maps"]


@dataclass
class NormStats:
    norms: torch.Tensor  # (L+1, B, N) patch-token norms per layer (layer 0 = embeddings)
    prefix_norms: torch.Tensor  # (L+1, B, P) [CLS] and register norms
    median: torch.Tensor  # (L+1,)
    maximum: torch.Tensor  # (L+1,)
    outlier_fraction: torch.Tensor  # (L+1,) share of patch tokens flagged as outliers
    threshold: torch.Tensor  # (L+1,) the norm above which a token counts as an outlier


def token_norm_stats(out: TowerOutput, factor: float = 4.0, absolute: float | None = None) -> NormStats:
    """Needs `tower(images, output_hidden_states=True)`."""
    if out.hidden_states is None:
        raise ValueError("token norms need hidden states: call the tower with output_hidden_states=True")
    hidden = torch.stack([h.float() for h in out.hidden_states])  # (L+1, B, T, C)
    norms = hidden.norm(dim=-1)  # (L+1, B, T)
    patch = norms[..., out.num_prefix_tokens :]  # (L+1, B, N)
    median = patch.flatten(1).median(dim=1).values  # (L+1,)
    threshold = torch.full_like(median, absolute) if absolute is not None else median * factor
    outliers = (patch > threshold[:, None, None]).float().flatten(1).mean(1)
    return NormStats(norms=patch, prefix_norms=norms[..., : out.num_prefix_tokens], median=median,
                     maximum=patch.flatten(1).amax(1), outlier_fraction=outliers, threshold=threshold)


def prefix_attention_maps(out: TowerOutput, layer: int = -1) -> torch.Tensor:
    """(B, P, h, w): attention of [CLS] and each register to the patches, averaged over heads."""
    q, k = out.q[layer].float(), out.k[layer].float()  # (B, H, T, d)
    prefix = out.num_prefix_tokens
    attention = torch.softmax(q[:, :, :prefix] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # (B, H, P, T)
    patches = attention[..., prefix:].mean(1)  # (B, P, N)
    return patches.view(*patches.shape[:2], *out.grid)
