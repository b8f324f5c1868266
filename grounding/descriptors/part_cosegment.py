"""Part co-segmentation (Amir et al., section 4.2): common parts of the co-segmented foreground, batched torch.

1. `cosegment` finds the foreground clusters;
2. k-means with `num_parts` clusters on every `sample_interval`-th normalised foreground descriptor;
3. each patch takes the nearest of the part centroids and the background centroids (the co-segmentation's
   non-foreground clusters): a part index, or -1 for background.

Step 3 is the unary term the reference then smooths with a dense CRF on the pixels; the CRF (pydensecrf) is left
out, so parts are on the descriptor grid. With no foreground anywhere every patch is background (-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .cosegment import CosegmentConfig, CosegmentOutput, cosegment, nearest_centroid
from ..kmeans import kmeans

__all__ = ["PartsConfig", "PartsOutput", "part_cosegment"]


@dataclass
class PartsConfig:
    num_parts: int = 4
    cosegment: CosegmentConfig = field(default_factory=CosegmentConfig)

    def __post_init__(self):
        if isinstance(self.cosegment, dict):
            self.cosegment = CosegmentConfig(**self.cosegment)
        if self.num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {self.num_parts}")


@dataclass
class PartsOutput:
    parts: list[torch.Tensor]  # per image (h, w) part index, -1 for background
    centroids: torch.Tensor  # (parts, D) part centres (0 rows when there is no foreground)
    cosegmentation: CosegmentOutput

    @property
    def num_parts(self) -> int:
        return len(self.centroids)


def part_cosegment(descriptors: Sequence[torch.Tensor], saliency: Sequence[torch.Tensor],
                   config: PartsConfig | None = None) -> PartsOutput:
    """Common parts of a set of images from per image (h, w, D) descriptors and (h, w) saliency."""
    cfg = config or PartsConfig()
    coseg = cosegment(descriptors, saliency, cfg.cosegment)
    flat = [F.normalize(d.reshape(-1, d.shape[-1]).float(), dim=-1) for d in descriptors]  # each (n_i, D)
    foreground = [f[m.reshape(-1)] for f, m in zip(flat, coseg.masks)]  # each (f_i, D)
    samples = torch.cat([f[:: cfg.cosegment.sample_interval] for f in foreground])  # (M, D)
    if len(samples) == 0:
        return PartsOutput(parts=[torch.full(d.shape[:2], -1, dtype=torch.long) for d in descriptors],
                           centroids=flat[0].new_zeros(0, flat[0].shape[-1]), cosegmentation=coseg)
    k = min(cfg.num_parts, len(samples))
    sub = cfg.cosegment
    centroids = kmeans(samples[None], k, sub.restarts, sub.max_iter, seed=sub.seed).centroids[0]  # (k, D)
    background = coseg.centroids[~coseg.salient]  # (b, D)
    candidates = torch.cat([centroids, background])  # (k + b, D)
    parts = []
    for f, d in zip(flat, descriptors):
        nearest, _ = nearest_centroid(f, candidates)  # (n_i,)
        parts.append(torch.where(nearest < k, nearest, -1).view(d.shape[:2]))
    return PartsOutput(parts=parts, centroids=centroids, cosegmentation=coseg)
