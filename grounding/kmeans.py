"""Batched k-means in torch: many independent problems, many restarts, one set of tensor ops (GPU friendly).

k-means++ seeding (probabilities proportional to squared distance, as scikit-learn's), Lloyd iterations until
the centroids stop moving, the restart with the lowest inertia wins. An empty cluster keeps its centroid.
Deterministic for a seed and independent of the batch: restart r's draws are uniform numbers u[r, c] from a CPU
generator, shared by every point set and turned into picks by inverse CDF, so a point set gets the same clusters
alone or next to any others, on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["KMeansResult", "kmeans"]


@dataclass
class KMeansResult:
    labels: torch.Tensor  # (B, M) cluster index of each point
    centroids: torch.Tensor  # (B, k, D)
    inertia: torch.Tensor  # (B,) sum of squared distances to the assigned centroid


def _sq_dist(x: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(P, M, D), (P, k, D) -> (P, M, k) squared Euclidean distances, clamped at 0; x_sq: (P, M, 1) |x|^2 if known."""
    x_sq = (x * x).sum(-1, keepdim=True) if x_sq is None else x_sq
    d = x_sq - 2 * (x @ c.transpose(1, 2)) + (c * c).sum(-1).unsqueeze(1)  # 2 * (x c^T): the same bits as (2x) c^T
    return d.clamp_min_(0)


def kmeans(x: torch.Tensor, k: int, restarts: int = 10, max_iter: int = 100, tol: float = 1e-8,
           seed: int = 0) -> KMeansResult:
    """Cluster each of B point sets x (B, M, D) into k clusters."""
    if x.ndim != 3:
        raise ValueError(f"kmeans expects (B, M, D) points, got {tuple(x.shape)}")
    batch, points, dim = x.shape
    if not 1 <= k <= points:
        raise ValueError(f"k={k} must be between 1 and the number of points {points}")
    if not torch.isfinite(x).all():
        raise ValueError("kmeans got NaN or infinite values")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    uniforms = torch.rand(restarts, k, generator=generator, dtype=torch.float64)  # (R, k), shared by all B
    uniforms = uniforms.to(x.device).repeat(batch, 1)  # (P, k): row b * R + r uses restart r's numbers
    problems = batch * restarts
    xr = x.float().unsqueeze(1).expand(batch, restarts, points, dim).reshape(problems, points, dim)  # (P, M, D)
    rows = torch.arange(problems, device=x.device)
    x_sq = (xr * xr).sum(-1, keepdim=True)  # (P, M, 1), the same in every distance computation

    def draw(weights: torch.Tensor, c: int) -> torch.Tensor:  # (P, M) weights -> (P,) index by inverse CDF
        cdf = weights.double().cumsum(-1)
        total = cdf[:, -1:]
        uniform = torch.arange(1, points + 1, device=x.device) / points
        cdf = torch.where(total > 0, cdf / total.clamp_min(1e-300), uniform)
        return (cdf <= uniforms[:, c : c + 1]).sum(-1).clamp_max(points - 1)

    centroids = torch.empty(problems, k, dim, device=x.device)
    centroids[:, 0] = xr[rows, draw(torch.ones(problems, points, device=x.device), 0)]
    closest = _sq_dist(xr, centroids[:, :1], x_sq).squeeze(-1)  # (P, M)
    for c in range(1, k):
        centroids[:, c] = xr[rows, draw(closest, c)]
        closest = torch.minimum(closest, _sq_dist(xr, centroids[:, c : c + 1], x_sq).squeeze(-1))

    for _ in range(max_iter):
        labels = _sq_dist(xr, centroids, x_sq).argmin(-1)  # (P, M)
        onehot = F.one_hot(labels, k).float()  # (P, M, k)
        counts = onehot.sum(1).unsqueeze(-1)  # (P, k, 1)
        sums = onehot.transpose(1, 2) @ xr  # (P, k, D)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        shift = (updated - centroids).pow(2).sum((-1, -2))  # (P,)
        centroids = updated
        if bool((shift <= tol).all()):
            break
    labels = _sq_dist(xr, centroids, x_sq).argmin(-1)  # (P, M)
    assigned = centroids.gather(1, labels[..., None].expand(-1, -1, dim))  # (P, M, D)
    inertia = (xr - assigned).pow(2).sum((-1, -2)).view(batch, restarts)  # exact, no expansion cancellation
    winner = inertia.argmin(-1)  # (B,)  first restart on ties
    pick = torch.arange(batch, device=x.device) * restarts + winner
    return KMeansResult(labels=labels[pick], centroids=centroids[pick],
                        inertia=inertia.gather(1, winner[:, None])[:, 0])
