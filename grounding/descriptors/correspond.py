"""Point correspondences between two images (Amir et al., section 4.3): best buddies on dense descriptors.

1. cosine similarity of every descriptor of image 1 with every one of image 2 (in row chunks);
2. best buddies: pairs (i, j) where j is i's nearest neighbour and i is j's;
3. kept when both ends are salient (saliency > `threshold`);
4. k-means (k = num_pairs) on the pairs' concatenated descriptors, normalised; in each cluster the pair of
   highest mean saliency is kept, so the pairs spread over the object; they are returned by that saliency,
   highest first.

The reference tests image 2's side through "i is the nearest neighbour of some salient patch of image 2"; here
the buddy itself must be salient, which is what the paper states. Fewer buddies than num_pairs give fewer pairs;
none gives an empty result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kmeans import kmeans

__all__ = ["CorrespondenceConfig", "Correspondences", "best_buddies", "correspondences"]


@dataclass
class CorrespondenceConfig:
    num_pairs: int = 10
    threshold: float = 0.05  # saliency above which a patch counts as foreground
    restarts: int = 10
    max_iter: int = 300
    seed: int = 0
    chunk: int = 4096  # rows of the similarity matrix at a time

    def __post_init__(self):
        if self.num_pairs < 1 or self.chunk < 1:
            raise ValueError(f"num_pairs and chunk must be >= 1 (got {self.num_pairs}, {self.chunk})")


@dataclass
class Correspondences:
    cells1: torch.Tensor  # (K, 2) (row, col) on image 1's grid
    cells2: torch.Tensor  # (K, 2) (row, col) on image 2's grid
    similarity: torch.Tensor  # (K,) cosine similarity of each pair
    saliency: torch.Tensor  # (K,) mean saliency of each pair (the ranking, descending)
    buddies: int  # salient best-buddy pairs found before picking K of them

    def __len__(self) -> int:
        return len(self.cells1)


def best_buddies(a: torch.Tensor, b: torch.Tensor,
                 chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N1, D), (N2, D) -> ((N1,) bool: i is a best buddy, (N1,) nearest j of each i, (N1,) its cosine)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    row_best, row_index = [], []
    col_best = torch.full((len(b),), -float("inf"), device=a.device)
    col_index = torch.zeros(len(b), dtype=torch.long, device=a.device)
    for start in range(0, len(a), chunk):
        sim = a[start : start + chunk] @ b.T  # (c, N2)
        best = sim.max(-1)
        row_best.append(best.values)
        row_index.append(best.indices)
        column = sim.max(0)  # (N2,)
        better = column.values > col_best  # strictly: the first row of a tie wins, as a full argmax
        col_best = torch.where(better, column.values, col_best)
        col_index = torch.where(better, column.indices + start, col_index)
    nearest, similarity = torch.cat(row_index), torch.cat(row_best)  # (N1,)
    buddies = col_index[nearest] == torch.arange(len(a), device=a.device)
    return buddies, nearest, similarity


def correspondences(descriptors1: torch.Tensor, descriptors2: torch.Tensor, saliency1: torch.Tensor,
                    saliency2: torch.Tensor, config: CorrespondenceConfig | None = None) -> Correspondences:
    """Up to num_pairs salient best-buddy pairs from (h1, w1, D) / (h2, w2, D) descriptors and their saliency."""
    cfg = config or CorrespondenceConfig()
    for name, d, s in (("image 1", descriptors1, saliency1), ("image 2", descriptors2, saliency2)):
        if d.ndim != 3 or tuple(s.shape) != tuple(d.shape[:2]):
            raise ValueError(f"{name}: descriptors must be (h, w, D) and saliency (h, w) on the same grid; got "
                             f"{tuple(d.shape)} and {tuple(s.shape)}")
    if descriptors1.shape[-1] != descriptors2.shape[-1]:
        raise ValueError(f"descriptor sizes differ: {descriptors1.shape[-1]} vs {descriptors2.shape[-1]}")
    (h1, w1), (_, w2) = descriptors1.shape[:2], descriptors2.shape[:2]
    a = descriptors1.reshape(h1 * w1, -1)
    b = descriptors2.reshape(-1, descriptors2.shape[-1])
    s1, s2 = saliency1.reshape(-1).float().to(a.device), saliency2.reshape(-1).float().to(a.device)
    buddies, nearest, similarity = best_buddies(a, b, cfg.chunk)
    keep = buddies & (s1 > cfg.threshold) & (s2[nearest] > cfg.threshold)  # (N1,)
    index1 = keep.nonzero().squeeze(1)  # (M,)
    index2 = nearest[index1]  # (M,)
    empty = torch.zeros(0, 2, dtype=torch.long, device=a.device)
    if len(index1) == 0:
        return Correspondences(empty, empty.clone(), similarity[:0], s1[:0], 0)
    rank = (s1[index1] + s2[index2]) / 2  # (M,)
    pairs = F.normalize(torch.cat([a[index1].float(), b[index2].float()], dim=-1), dim=-1)  # (M, 2D)
    k = min(cfg.num_pairs, len(index1))
    labels = kmeans(pairs[None], k, cfg.restarts, cfg.max_iter, seed=cfg.seed).labels[0]  # (M,)
    members = labels[:, None] == torch.arange(k, device=a.device)  # (M, k)
    scores = torch.where(members, rank[:, None], torch.full_like(members, -float("inf"), dtype=rank.dtype))
    best = scores.max(0)  # per cluster: its most salient pair (first on ties)
    chosen = best.indices[torch.isfinite(best.values)]  # clusters left empty by k-means pick nothing
    chosen = chosen[torch.argsort(rank[chosen], descending=True, stable=True)]
    i, j = index1[chosen], index2[chosen]
    return Correspondences(
        cells1=torch.stack([i // w1, i % w1], dim=-1), cells2=torch.stack([j // w2, j % w2], dim=-1),
        similarity=similarity[i], saliency=rank[chosen], buddies=len(index1))
