"""Pictures: map overlays with boxes, token-norm histograms per layer, head-cluster grids, prefix attention.

Everything returns PIL images or matplotlib figures in memory; callers decide where (and whether) to save.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

__all__ = ["overlay", "draw_boxes", "norm_histograms", "head_cluster_grid", "figure_to_image"]

BOX_COLOURS = ["#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55"]


def overlay(image: Image.Image, heat: torch.Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend an (H, W) map in [0, 1] (already at image size) over the image with a colormap."""
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if heat.shape != (image.height, image.width):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
    colours = plt.get_cmap(cmap)(np.clip(heat, 0, 1))[..., :3]  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mixed = (1 - alpha) * base + alpha * colours
    return Image.fromarray((mixed * 255).round().astype(np.uint8))


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None,
               width: int = 3) -> Image.Image:
    out = image.convert("RGB").copy()
    pen = ImageDraw.Draw(out)
    for i, box in enumerate(boxes):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        pen.rectangle([float(v) for v in box], outline=colour, width=width)
        if labels is not None:
            pen.text((float(box[0]) + 3, float(box[1]) + 2), labels[i], fill=colour)
    return out


def figure_to_image(figure) -> Image.Image:
    figure.canvas.draw()
    image = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
    plt.close(figure)
    return image


def norm_histograms(norms: torch.Tensor, thresholds: torch.Tensor | None = None, title: str = "") -> Image.Image:
    """(L+1, B, N) patch norms -> one small log-count histogram per layer."""
    layers = norms.shape[0]
    cols = min(layers, 5)
    rows = -(-layers // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for i, axis in enumerate(axes.flat):
        if i >= layers:
            axis.axis("off")
            continue
        axis.hist(norms[i].flatten().cpu().numpy(), bins=50, color="#007aff", log=True)
        if thresholds is not None:
            axis.axvline(float(thresholds[i]), color="#ff3b30", lw=1)
        axis.set_title("embeddings" if i == 0 else f"layer {i}", fontsize=8)
        axis.tick_params(labelsize=6)
    figure.suptitle(title or "patch-token norms per layer (red: outlier threshold)", fontsize=9)
    figure.tight_layout()
    return figure_to_image(figure)


def head_cluster_grid(labels: torch.Tensor, object_cluster: int, title: str = "") -> Image.Image:
    """(L, H) head cluster labels -> a coloured grid, object-cluster heads marked with a dot."""
    labels = labels.cpu().numpy()
    layers, heads = labels.shape
    figure, axis = plt.subplots(figsize=(0.35 * heads + 1.5, 0.3 * layers + 1))
    axis.imshow(labels, cmap="tab20", aspect="auto", interpolation="nearest")
    ys, xs = np.nonzero(labels == object_cluster)
    axis.scatter(xs, ys, c="black", s=10)
    axis.set_xlabel("head")
    axis.set_ylabel("layer")
    axis.set_title(title or f"head clusters (dots: object cluster {object_cluster})", fontsize=8)
    figure.tight_layout()
    return figure_to_image(figure)
