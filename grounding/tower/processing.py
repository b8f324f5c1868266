"""The tower's pixel processor, kept apart from the nn.Module as transformers keeps processing_*.py apart from
modeling_*.py: images (PIL, paths, arrays) -> normalised (B, 3, H, W) pixels, WITHOUT centre crop (resize to a
multiple of the patch size, aspect kept; or LOST's zero padding), plus each image's original size and pixels per
patch. `RegisterViT.processor` gives the one for a loaded tower; `RegisterViT.preprocess` calls it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..images import as_pil, load_image, original_size

__all__ = ["PreprocessConfig", "TowerProcessor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PreprocessConfig:
    """How images become the ViT's input. No centre crop, ever: masks must cover the whole image.

    mode="resize": the shorter side becomes ~`short_side` pixels, both sides rounded to a multiple of the patch
    size (aspect kept), the longer side capped at `max_side`; or a fixed `size` (H, W) when given (batchable).
    mode="pad": the image keeps its resolution (downscaled only above `max_side`) and is zero-padded at the
    right/bottom to a multiple of the patch size (LOST's protocol).
    """

    mode: Literal["resize", "pad"] = "resize"
    short_side: int = 224
    size: tuple[int, int] | None = None
    max_side: int = 1024
    min_patches: int = 2


class TowerProcessor:
    """Images -> the tower's input. Holds the preprocessing config, the patch size and the normalisation (the
    checkpoint's mean / std); no weights, no device: the pixels come back on the CPU in float32.

    `processor(images)` returns ((B, 3, H, W) normalised pixels, original (H, W) sizes, (B, 2) pixels per patch
    (x, y)). Images in one call must resize to the same input (a fixed `PreprocessConfig.size` batches anything).
    """

    def __init__(self, config: PreprocessConfig | None = None, patch_size: int = 14,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.config = config if config is not None else PreprocessConfig()
        if self.config.mode not in ("resize", "pad"):
            raise ValueError(f"preprocess mode must be 'resize' or 'pad', got {self.config.mode!r}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.patch_size = int(patch_size)
        self.mean = torch.tensor(mean, dtype=torch.float32)  # (3,)
        self.std = torch.tensor(std, dtype=torch.float32)  # (3,)

    def input_geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Return ((content_h, content_w), (input_h, input_w)) in pixels for an original image size."""
        pre, p = self.config, self.patch_size
        if pre.mode == "resize":
            if pre.size is not None:
                target = pre.size
            else:
                scale = pre.short_side / min(height, width)
                scale = min(scale, pre.max_side / max(height, width))
                target = (height * scale, width * scale)
            h, w = (max(pre.min_patches, round(side / p)) * p for side in target)
            return (h, w), (h, w)
        scale = min(1.0, pre.max_side / max(height, width))
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        if min(h, w) < pre.min_patches * p:  # tiny images: upscale so the grid has min_patches per side
            up = pre.min_patches * p / min(h, w)
            h, w = math.ceil(h * up), math.ceil(w * up)
        return (h, w), (math.ceil(h / p) * p, math.ceil(w / p) * p)

    @property
    def max_input_side(self) -> int:
        """The longest image side the tower ever feeds: decode images at no more than this (`load_image`)."""
        pre = self.config
        return max([pre.max_side, *(pre.size or ())])

    def open(self, image) -> tuple[Image.Image, tuple[int, int]]:
        """A PIL image and the (H, W) its boxes and maps refer to. A path is decoded at no more than
        `max_input_side` and reported in the file's pixels; any other input in its own pixels."""
        if isinstance(image, (str, os.PathLike)):
            pil = load_image(image, max_side=self.max_input_side)
            width, height = original_size(pil)
            return pil, (height, width)
        pil = as_pil(image)
        return pil, (pil.height, pil.width)

    def __call__(self, images: Sequence) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """Images -> (B, 3, H, W) normalised pixels, original (H, W) sizes, (B, 2) pixels per patch (x, y)."""
        opened = [self.open(image) for image in images]
        pils = [pil for pil, _ in opened]
        sizes = [size for _, size in opened]
        geometries = [self.input_geometry(height, width) for height, width in sizes]
        input_sizes = {g[1] for g in geometries}
        if len(input_sizes) > 1:
            raise ValueError(
                f"images in one batch resize to different inputs {sorted(input_sizes)}; pass them one at a time "
                "or set preprocess.size=(H, W) to batch them"
            )
        (in_h, in_w) = input_sizes.pop()
        batch = torch.zeros(len(pils), 3, in_h, in_w)
        scales = torch.zeros(len(pils), 2)
        mean, std = self.mean.view(3, 1, 1), self.std.view(3, 1, 1)  # (3, 1, 1)
        for i, (image, (height, width), ((h, w), _)) in enumerate(zip(pils, sizes, geometries)):
            resized = image if (image.height, image.width) == (h, w) else image.resize((w, h), Image.BICUBIC)
            pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, h, w)
            batch[i, :, :h, :w] = (pixels - mean) / std
            scales[i] = torch.tensor([width / w * self.patch_size, height / h * self.patch_size])
        return batch, sizes, scales
