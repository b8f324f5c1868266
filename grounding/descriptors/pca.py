"""PCA of dense descriptors, and its components shown as RGB (the "PCA as RGB" pictures of dense-descriptor work).

The projection is exact (an eigendecomposition of the smaller Gram matrix, in float64), deterministic, and signs
are fixed as scikit-learn's `svd_flip` fixes them: each component's largest-magnitude score is positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pca_project", "pca_rgb"]


def pca_project(x: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) points -> ((N, n) scores on the top-n principal components, (n,) explained variance).

    n is min(n_components, N, D); components past the data's rank have zero scores.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"pca_project expects (N, D) points with N >= 1, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("pca_project got NaN or infinite values")
    points, dim = x.shape
    n = max(1, min(n_components, points, dim))
    centred = x.double() - x.double().mean(0, keepdim=True)  # (N, D)
    if dim <= points:
        values, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending, (D,), (D, D)
        vectors = vectors[:, -n:].flip(-1)  # (D, n)
        scores = centred @ vectors  # (N, n)
        values = values[-n:].flip(-1)
    else:
        values, vectors = torch.linalg.eigh(centred @ centred.T)  # (N,), (N, N)
        values = values[-n:].flip(-1)
        scores = vectors[:, -n:].flip(-1) * values.clamp_min(0).sqrt()  # (N, n)
    biggest = scores.abs().argmax(0)  # (n,)
    signs = torch.sign(scores[biggest, torch.arange(n)])
    scores = scores * torch.where(signs == 0, torch.ones_like(signs), signs)
    return scores.float(), (values.clamp_min(0) / max(points - 1, 1)).float()


def pca_rgb(descriptors: Sequence[torch.Tensor], n_components: int = 4, joint: bool = True) -> list[torch.Tensor]:
    """Per image (h, w, D) descriptors -> (h, w, 3) RGB in [0, 1] from the last three of `n_components`
    principal components (the first usually splits object from background; the next three colour its parts).

    joint: one PCA over all images (colours comparable across images) or one per image. Each component is
    min-max normalised per image; a constant component is shown as 0.
    """
    if not descriptors:
        raise ValueError("pca_rgb needs at least one descriptor map")
    if n_components < 3:
        raise ValueError(f"n_components must be >= 3 for an RGB picture, got {n_components}")
    flat = [d.reshape(-1, d.shape[-1]) for d in descriptors]  # each (h*w, D)
    if joint:
        scores, _ = pca_project(torch.cat(flat), n_components)
        per_image = torch.split(scores, [len(f) for f in flat])
    else:
        per_image = [pca_project(f, n_components)[0] for f in flat]
    pictures = []
    for d, s in zip(descriptors, per_image):
        s = torch.cat([s, s.new_zeros(len(s), max(0, n_components - s.shape[1]))], dim=1)[:, -3:]  # (h*w, 3)
        low, high = s.amin(0, keepdim=True), s.amax(0, keepdim=True)
        rgb = torch.where(high > low, (s - low) / (high - low).clamp_min(1e-30), torch.zeros_like(s))
        pictures.append(rgb.view(*d.shape[:2], 3))
    return pictures
