"""Pictures: map overlays with boxes, token-norm histograms per layer, head-cluster grids, prefix attention.

Everything returns PIL images in memory; callers decide where (and whether) to save. Figures are drawn with
matplotlib's object API (`Figure` on an Agg canvas), so the user's pyplot backend is never touched, and
matplotlib is imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageDraw

__all__ = ["overlay", "draw_boxes", "norm_histograms", "head_cluster_grid", "figure_to_image", "new_figure",
           "grid_to_image", "side_by_side", "instance_picture"]

BOX_COLOURS = ["#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55"]


def overlay(image: Image.Image, heat: torch.Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend an (H, W) map in [0, 1] (already at image size) over the image with a colormap."""
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if heat.shape != (image.height, image.width):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
    from matplotlib import colormaps

    colours = colormaps[cmap](np.clip(heat, 0, 1))[..., :3]  # (H, W, 3)
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


def new_figure(**kwargs):
    """A matplotlib `Figure` on its own Agg canvas (no pyplot, no backend switch, nothing global to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_to_image(figure) -> Image.Image:
    """Render a `new_figure` figure to an RGB PIL image."""
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def norm_histograms(norms: torch.Tensor, thresholds: torch.Tensor | None = None, title: str = "") -> Image.Image:
    """(L+1, B, N) patch norms -> one small log-count histogram per layer."""
    layers = norms.shape[0]
    cols = min(layers, 5)
    rows = -(-layers // cols)
    figure = new_figure(figsize=(3 * cols, 2.2 * rows))
    axes = figure.subplots(rows, cols, squeeze=False)
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
    figure = new_figure(figsize=(0.35 * heads + 1.5, 0.3 * layers + 1))
    axis = figure.subplots()
    axis.imshow(labels, cmap="tab20", aspect="auto", interpolation="nearest")
    ys, xs = np.nonzero(labels == object_cluster)
    axis.scatter(xs, ys, c="black", s=10)
    axis.set_xlabel("head")
    axis.set_ylabel("layer")
    axis.set_title(title or f"head clusters (dots: object cluster {object_cluster})", fontsize=8)
    figure.tight_layout()
    return figure_to_image(figure)


def grid_to_image(grid: torch.Tensor, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(h, w[, c]) grid values -> (H, W[, c]) numpy over the image (the grid spread over the whole image)."""

    x = grid.float()
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    mode = "nearest" if nearest else "bilinear"
    up = F.interpolate(x, size=size, mode=mode, **({} if nearest else {"align_corners": False}))[0]
    return (up[0] if grid.ndim == 2 else up.permute(1, 2, 0)).cpu().numpy()


def side_by_side(*pictures: Image.Image) -> Image.Image:
    """The pictures left to right on a white canvas, 4 pixels apart."""
    width = sum(p.width for p in pictures) + 4 * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + 4
    return canvas


def instance_picture(image, masks, boxes, scores=None, alpha: float = 0.45):
    """An RGB picture of `image` with each (H, W) bool mask tinted in its own colour and its box drawn in the same
    colour (`grounding.viz.BOX_COLOURS` order), labelled with its rank (and score)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)[: base.shape[0], : base.shape[1]]
        colour = np.array(ImageColor.getrgb(BOX_COLOURS[i % len(BOX_COLOURS)]), dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
    picture = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    labels = [f"{i + 1}" + (f" {scores[i]:.2f}" if scores is not None else "") for i in range(len(boxes))]
    return draw_boxes(picture, [list(map(float, b)) for b in boxes], labels, width=2)
