"""How guidance mixes the two branches' next-token logits z (original) and z' (branch), both (B, V)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["highlight_mix", "contrastive_mix"]


def highlight_mix(alpha: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """alpha z + (1 - alpha) z'; tokens banned in z (-inf from generate()'s own processors) stay banned, and a
    zero weight drops its term (0 * -inf would be NaN)."""

    def mix(original: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        mixed = original if alpha == 1 else alpha * original + (1 - alpha) * branch
        return mixed.masked_fill(original == -float("inf"), -float("inf"))

    return mix


def contrastive_mix(a: float, beta: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    log_beta = float(torch.log(torch.tensor(beta)))

    def mix(original: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        cutoff = log_beta + original.max(dim=-1, keepdim=True).values  # p(v) < beta * max p(v)
        mixed = original if a == 0 else (1 + a) * original - a * branch  # a = 0: no 0 * -inf NaN
        return mixed.masked_fill(original < cutoff, -float("inf"))

    return mix
