"""Image edits that make the second decoding branch, all in memory (no files written).

* `red_tint` (POPE questions): where the upsampled object map v > 0.5, blend towards pure red with
  alpha = clip((v - 0.5) / 0.5, 0, 1) * 0.6 (docs/method.md, section 3).
* `jet_overlay` (captions): jet colormap of the map blended over the whole image with alpha 0.5.
* `remove_objects` (object-masked contrastive decoding): pixels where the map > threshold replaced by the
  image mean colour or a strong blur.
* `diffusion_noise` (plain VCD): q(x_t | x_0) of a 1000-step sigmoid beta schedule at step t, on pixel values.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..viz import overlay

__all__ = ["red_tint", "jet_overlay", "remove_objects", "diffusion_noise"]


def _map_array(object_map: torch.Tensor | np.ndarray, image: Image.Image) -> np.ndarray:
    if isinstance(object_map, torch.Tensor):
        values = object_map.detach().float().cpu().numpy()
    else:
        values = np.asarray(object_map)
    if values.shape != (image.height, image.width):
        raise ValueError(f"object map {values.shape} does not match the image {(image.height, image.width)}; "
                         "upsample it")
    if not np.isfinite(values).all():
        raise ValueError("object map holds NaN or infinite values")
    return values.astype(np.float64)


def red_tint(image: Image.Image, object_map, threshold: float = 0.5, strength: float = 0.6) -> Image.Image:
    values = _map_array(object_map, image)
    alpha = np.clip((values - threshold) / (1 - threshold), 0, 1) * strength  # (H, W); zero where v <= 0.5
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    red = np.array([255.0, 0.0, 0.0])
    tinted = (1 - alpha[..., None]) * pixels + alpha[..., None] * red
    return Image.fromarray(np.clip(tinted.round(), 0, 255).astype(np.uint8))


def jet_overlay(image: Image.Image, object_map, alpha: float = 0.5) -> Image.Image:
    return overlay(image, _map_array(object_map, image), alpha=alpha, cmap="jet")


def remove_objects(image: Image.Image, object_map, threshold: float = 0.5, fill: str = "mean") -> Image.Image:
    mask = _map_array(object_map, image) > threshold  # (H, W)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    if fill == "mean":
        replacement = np.broadcast_to(pixels.reshape(-1, 3).mean(0), pixels.shape)
    elif fill == "blur":
        radius = max(4, min(image.size) // 16)
        replacement = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
    else:
        raise ValueError(f"fill must be 'mean' or 'blur', got {fill!r}")
    out = np.where(mask[..., None], replacement, pixels)
    return Image.fromarray(out.round().astype(np.uint8))


def diffusion_noise(pixel_values: torch.Tensor, step: int = 500, steps: int = 1000, seed: int = 0) -> torch.Tensor:
    """VCD's noised image: sqrt(abar_t) x + sqrt(1 - abar_t) eps with betas = sigmoid(linspace(-6, 6)) scaled."""
    if not 0 <= step < steps:
        raise ValueError(f"noise step {step} outside [0, {steps})")
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1 - betas, 0)[step]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(pixel_values.shape, generator=generator, dtype=torch.float32).to(pixel_values.device)
    noisy = alpha_bar.sqrt().float() * pixel_values.float() + (1 - alpha_bar).sqrt().float() * noise
    return noisy.to(pixel_values.dtype)
