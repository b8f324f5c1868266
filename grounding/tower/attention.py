"""Facts about the tower's attention, read off a `TowerOutput`: q/k as attention sees them, and DINOv3's rotary
tables at the centres of overlapping (strided) patches.

Both are about the tower, not about what is built on it: discovery (`grounding.objects`) and dense descriptors
(`grounding.descriptors`) use them, and neither imports the other.
"""

from __future__ import annotations

import math

import torch

from .backbone import TowerOutput

__all__ = ["attention_qk", "strided_grid", "strided_rope"]


def strided_grid(height: int, width: int, patch: int, stride: int) -> tuple[int, int]:
    """(h, w) grid of `patch`-sized patches every `stride` pixels over a (height, width) input."""
    return 1 + (height - patch) // stride, 1 + (width - patch) // stride


def strided_rope(inv_freq: torch.Tensor, input_size: tuple[int, int], patch: int, stride: int,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3's rotary (cos, sin) tables, (N, head_dim) each, for patches centred at i * stride + patch / 2.

    The same construction as the model's own tables (coordinates in [-1, 1] relative to the input size, angles
    2 pi * coordinate * inv_freq for y then x, tiled twice), at the centres of the overlapping patches.
    """
    height, width = input_size
    grid_h, grid_w = strided_grid(height, width, patch, stride)
    device = inv_freq.device
    ys = (torch.arange(grid_h, device=device, dtype=torch.float32) * stride + patch / 2) / height  # (h,)
    xs = (torch.arange(grid_w, device=device, dtype=torch.float32) * stride + patch / 2) / width  # (w,)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0  # (N, 2)
    angles = (2 * math.pi * coords[:, :, None] * inv_freq.float()[None, None, :]).flatten(1, 2).tile(2)  # (N, hd)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)



def attention_qk(out: TowerOutput, tower=None, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's q and k as attention sees them, (B, H, T, d) each.

    DINOv3 rotates patch q/k inside attention (RoPE). A DINOv3 tower that captured them before the rotation (its
    default, `TowerConfig(qk_position="pre_rope")`, to match Object-DINO) needs `tower`: the rotation is then
    applied here with the model's own rotary embedding. Without `tower`, q/k are taken as captured, which is what
    attention saw for DINOv2 / registers / timm towers and DINOv3 towers built with qk_position="post_rope".
    """
    q, k = out.q[layer].float(), out.k[layer].float()  # (B, H, T, d)
    if tower is None or not tower.is_rotary or tower._capture_mode() != "projection":
        return q, k
    from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

    h, w = out.grid
    if out.step != out.patch_size:  # overlapping patches (a DenseExtractor): rotary tables at the strided centres
        size = ((h - 1) * out.step + out.patch_size, (w - 1) * out.step + out.patch_size)
        cos, sin = strided_rope(tower.model.rope_embeddings.inv_freq, size, out.patch_size, out.step)
    else:
        shape_only = torch.empty(1, 1, h * out.patch_size, w * out.patch_size, device=q.device)  # RoPE reads the shape
        cos, sin = tower.model.rope_embeddings(shape_only)  # (N, d) each
    return apply_rotary_pos_emb(q, k, cos.to(q), sin.to(q))
