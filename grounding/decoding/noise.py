"""VCD's noised branch: diffusion noise drawn per image, from a seed derived from the image's pixels and the
configured seed, so an image's noised branch does not depend on what it is batched with."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from PIL import Image

from ..images import image_key
from .highlight import diffusion_noise

__all__ = ["image_key", "noise_seed", "pixel_blocks", "noise_images"]


def noise_seed(seed: int, image_key: str, part: int) -> int:
    digest = hashlib.sha1(f"{seed}:{image_key}:{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid torch seed


def pixel_blocks(encoded: dict, index: int) -> list[torch.Tensor]:
    """Views of image `index`'s pixels in a processor's output, each noised from its own seed.

    (B, C, H, W): one block; (B, P, C, H, W) (LLaVA-NeXT tiles, padded to the batch's most tiles): one block per
    tile, so an image's real tiles get the same noise whatever the padding; (sum of patches, D) with
    image_grid_thw (Qwen2-VL): the image's t*h*w patch rows."""
    pixels = encoded["pixel_values"]
    grid = encoded.get("image_grid_thw")
    if grid is not None and pixels.ndim == 2:
        counts = grid.prod(-1).tolist()
        start = sum(counts[:index])
        return [pixels[start : start + counts[index]]]  # (t*h*w, D)
    if pixels.ndim == 4:
        return [pixels[index]]  # (C, H, W)
    if pixels.ndim == 5:
        return list(pixels[index].unbind(0))  # P x (C, H, W)
    raise ValueError(f"cannot tell image {index}'s pixels apart in pixel_values of shape {tuple(pixels.shape)}"
                     f"{' with image_grid_thw' if grid is not None else ''}: VCD noise supports (B, C, H, W), "
                     "(B, tiles, C, H, W) and Qwen2-VL's (patches, D) + image_grid_thw")


def noise_images(encoded: dict, images: Sequence[Image.Image], first: int, seed: int, step: int) -> None:
    """VCD: noise the pixels of images first, first + 1, ... of `encoded` in place (diffusion noise at `step`),
    each block from its own seed derived from `seed` and the image's pixels. `images` are the images whose pixels
    lie in `encoded` in that order."""
    for offset, image in enumerate(images):
        for part, block in enumerate(pixel_blocks(encoded, first + offset)):
            block.copy_(diffusion_noise(block, step, seed=noise_seed(seed, image_key(image), part)))
