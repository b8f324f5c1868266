"""Co-segmentation of a set of images from dense descriptors (Amir et al., section 4.1), batched torch.

1. all images' descriptors are L2-normalised; every `sample_interval`-th of each image is kept for fitting;
2. k-means for k = 1, 2, ... on the samples (restarts, fixed seed); each fit is scored by the mean squared
   distance of ALL descriptors to their nearest centroid; the search stops at the first k whose score is above
   `elbow` times the previous one (the reference keeps that k), or at `max_clusters`;
3. each image votes for the clusters whose patches have a mean saliency above `threshold` in it; clusters with
   at least ceil(`votes` * images) votes are foreground;
4. an image's mask is its patches in foreground clusters.

The reference refines the masks with GrabCut on the pixels; that step (OpenCV) is left out: masks are on the
descriptor grid. No salient region anywhere gives empty masks (and `CosegmentOutput.empty`), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kmeans import kmeans

__all__ = ["CosegmentConfig", "CosegmentOutput", "ElbowFit", "elbow_kmeans", "nearest_centroid", "cosegment"]


@dataclass
class CosegmentConfig:
    elbow: float = 0.975
    max_clusters: int = 14
    threshold: float = 0.065  # saliency above which an image votes for a cluster
    votes: float = 0.75  # share of images whose votes make a cluster foreground
    sample_interval: int = 100
    restarts: int = 10
    max_iter: int = 300
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.elbow <= 1:
            raise ValueError(f"elbow must be in (0, 1], got {self.elbow}")
        if self.max_clusters < 1 or self.sample_interval < 1 or self.restarts < 1:
            raise ValueError("max_clusters, sample_interval and restarts must be >= 1")
        if not 0 < self.votes <= 1:
            raise ValueError(f"votes is a share of the images in (0, 1], got {self.votes}")


@dataclass
class ElbowFit:
    centroids: torch.Tensor  # (k, D)
    labels: torch.Tensor  # (N,) nearest centroid of every point
    objectives: list[float]  # mean squared distance for k = 1, 2, ... as tried


@dataclass
class CosegmentOutput:
    masks: list[torch.Tensor]  # per image (h, w) bool foreground
    labels: list[torch.Tensor]  # per image (h, w) cluster index
    salient: torch.Tensor  # (k,) bool foreground clusters
    votes: torch.Tensor  # (k,) images that voted for each cluster
    centroids: torch.Tensor  # (k, D) cluster centres of the normalised descriptors
    objectives: list[float]  # the elbow curve

    @property
    def k(self) -> int:
        return len(self.salient)

    @property
    def empty(self) -> bool:
        """No cluster is foreground (no salient region in enough images): every mask is empty."""
        return not bool(self.salient.any())


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor,
                     chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) points, (k, D) centroids -> ((N,) index of the nearest, (N,) squared distance to it), in row chunks."""
    labels, distances = [], []
    norms = (centroids * centroids).sum(-1)  # (k,)
    for part in torch.split(x, chunk):
        d = ((part * part).sum(-1, keepdim=True) - 2 * part @ centroids.T + norms).clamp_min(0)  # (c, k)
        best = d.min(-1)
        labels.append(best.indices)
        distances.append(best.values)
    return torch.cat(labels), torch.cat(distances)


def elbow_kmeans(samples: torch.Tensor, points: torch.Tensor, elbow: float, max_clusters: int, restarts: int = 10,
                 max_iter: int = 300, seed: int = 0) -> ElbowFit:
    """k-means on `samples` (M, D) for k = 1, 2, ..., scored on all `points` (N, D); stops at the first k whose
    score is above elbow x the previous one (kept, as the reference does), at max_clusters, at M clusters, or when
    the previous score is already 0 (kept: nothing is left to split)."""
    objectives: list[float] = []
    fit = None
    for k in range(1, min(max_clusters, len(samples)) + 1):
        if objectives and objectives[-1] <= 1e-12:
            break
        result = kmeans(samples[None], k, restarts, max_iter, seed=seed)
        labels, distances = nearest_centroid(points, result.centroids[0])
        objectives.append(float(distances.mean()))
        fit = ElbowFit(centroids=result.centroids[0], labels=labels, objectives=objectives)
        if len(objectives) > 1 and objectives[-1] > elbow * objectives[-2]:
            break
    return fit


def _check(descriptors: Sequence[torch.Tensor], saliency: Sequence[torch.Tensor]) -> None:
    if not descriptors:
        raise ValueError("co-segmentation needs at least one image")
    if len(descriptors) != len(saliency):
        raise ValueError(f"got {len(descriptors)} descriptor maps but {len(saliency)} saliency maps")
    for i, (d, s) in enumerate(zip(descriptors, saliency)):
        if d.ndim != 3 or tuple(s.shape) != tuple(d.shape[:2]):
            raise ValueError(f"image {i}: descriptors must be (h, w, D) and saliency (h, w) on the same grid; got "
                             f"{tuple(d.shape)} and {tuple(s.shape)}")
        if not (torch.isfinite(d).all() and torch.isfinite(s).all()):
            raise ValueError(f"image {i}: descriptors or saliency hold NaN or infinite values")


def cosegment(descriptors: Sequence[torch.Tensor], saliency: Sequence[torch.Tensor],
              config: CosegmentConfig | None = None) -> CosegmentOutput:
    """Co-segment images given per image (h, w, D) descriptors and (h, w) saliency in [0, 1]."""
    cfg = config or CosegmentConfig()
    _check(descriptors, saliency)
    flat = [F.normalize(d.reshape(-1, d.shape[-1]).float(), dim=-1) for d in descriptors]  # each (n_i, D)
    points = torch.cat(flat)  # (N, D)
    samples = torch.cat([f[:: cfg.sample_interval] for f in flat])  # (M, D)
    fit = elbow_kmeans(samples, points, cfg.elbow, cfg.max_clusters, cfg.restarts, cfg.max_iter, cfg.seed)
    k = len(fit.centroids)
    sizes = [len(f) for f in flat]
    image = torch.repeat_interleave(torch.arange(len(flat), device=points.device),
                                    torch.tensor(sizes, device=points.device))  # (N,) image of each point
    cell = image * k + fit.labels  # (N,) (image, cluster) pair
    sal = torch.cat([s.reshape(-1).float() for s in saliency]).to(points.device)  # (N,)
    counts = torch.zeros(len(flat) * k, device=points.device).index_add_(0, cell, torch.ones_like(sal))
    sums = torch.zeros(len(flat) * k, device=points.device).index_add_(0, cell, sal)
    mean = sums / counts.clamp_min(1)  # (images * k,) clusters absent from an image cast no vote
    votes = ((counts > 0) & (mean > cfg.threshold)).view(len(flat), k).sum(0)  # (k,)
    salient = votes >= math.ceil(len(flat) * cfg.votes - 1e-9)  # (k,)
    labels = torch.split(fit.labels, sizes)
    return CosegmentOutput(
        masks=[salient[l].view(d.shape[:2]) for l, d in zip(labels, descriptors)],
        labels=[l.view(d.shape[:2]) for l, d in zip(labels, descriptors)],
        salient=salient, votes=votes, centroids=fit.centroids, objectives=fit.objectives)
