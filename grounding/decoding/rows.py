"""Stack processor outputs row-wise into one left-padded batch.

Used where encodings are made apart but must run as one batch: a transformers pipeline encodes one item at a
time (its branch inputs are stacked here), and the joint 2B batch puts the original rows above their branch rows.
Token keys are padded on the left (the side generate() needs for decoder-only models); pixel tensors are
concatenated, LLaVA-NeXT's (B, tiles, C, H, W) first padded with zero tiles to the most tiles (what its image
processor does inside one batch; the model drops padded tiles by `image_sizes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["SEQUENCE_KEYS", "stack_rows"]

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # (B, T), padded on the left


def _left_pad(tensors: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    length = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (length - t.shape[1], 0), value=value) for t in tensors])  # (sum B, T)


def _pad_tiles(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    tiles = max(t.shape[1] for t in tensors)
    return [torch.cat([t, t.new_zeros(t.shape[0], tiles - t.shape[1], *t.shape[2:])], dim=1) for t in tensors]


def stack_rows(encodings: Sequence[Mapping[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Encodings with the same keys -> one batch, rows in order; token keys left-padded to the longest."""
    if not encodings:
        raise ValueError("stack_rows needs at least one encoding")
    keys = list(encodings[0])
    for encoding in encodings[1:]:
        if set(encoding) != set(keys):
            raise ValueError(f"cannot stack encodings with different keys: {sorted(keys)} vs {sorted(encoding)}")
    stacked = {}
    for key in keys:
        tensors = [encoding[key] for encoding in encodings]
        if key in SEQUENCE_KEYS:
            stacked[key] = _left_pad(tensors, pad_token_id if key == "input_ids" else 0)
            continue
        if key == "pixel_values" and tensors[0].ndim == 5:
            tensors = _pad_tiles(tensors)  # (B, P, C, H, W) -> same P
        if any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
            raise ValueError(f"cannot stack {key!r} of shapes {[tuple(t.shape) for t in tensors]}: only token keys "
                             f"{SEQUENCE_KEYS} are padded; run these rows as separate batches")
        stacked[key] = torch.cat(tensors)
    return stacked
