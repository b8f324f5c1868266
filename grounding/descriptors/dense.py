"""Dense ViT descriptors (Amir et al., "Deep ViT Features as Dense Descriptors"): overlapping patches, facets,
log-binning and [CLS] saliency, on the library's tower and its q/k/v capture.

`DenseExtractor(tower, stride)` runs the tower's own forward with the patch embedding's stride lowered to `stride`
(a divisor of the patch size p), so neighbouring patches overlap and the grid becomes 1 + (H - p) // stride per
side. The position information follows the finer grid:

* HF Dinov2 / Dinov2WithRegisters: the model's own position-embedding interpolation, asked for the strided grid;
* HF DINOv3 (RoPE): the rotary tables are computed at the strided patch centres (i * stride + p / 2 pixels);
* timm (``dynamic_img_size=True``, as `RegisterViT` loads them): timm resamples its table to the conv's output grid.

All changes are made for the duration of one forward and undone afterwards (the tower object is as before), and
with stride = p nothing is changed at all: the outputs are exactly the tower's.

Descriptors of a layer are one of four facets: "key", "query", "value" (the captured q/k/v of that layer, heads
concatenated with the head index fastest, channel = i * H + h, as the reference extractor lays them out) or
"token" (the layer's output tokens); prefix tokens ([CLS], registers) are dropped. `log_bin` turns them into the
paper's log-binned descriptors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..tower.attention import attention_qk, strided_grid, strided_rope
from ..tower.backbone import RegisterViT, TowerOutput

__all__ = ["DenseExtractor", "DenseDescription", "FACETS", "facet_descriptors", "saliency_map", "log_bin"]

Facet = Literal["key", "query", "value", "token"]
FACETS: tuple[str, ...] = ("key", "query", "value", "token")
_QKV = {"query": "q", "key": "k", "value": "v"}


def _layer_index(layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} is out of range for a tower with {num_layers} layers "
                         f"(use 0..{num_layers - 1}, or negative indices from the end)")
    return layer % num_layers


def facet_descriptors(out: TowerOutput, layer: int = -1, facet: Facet = "key") -> torch.Tensor:
    """(B, h, w, D) descriptors of one layer's facet, prefix tokens dropped.

    key / query / value: D = H * d with channel i * H + h (the reference extractor's layout); token: D = C, the
    layer's output tokens (before the final norm), which needs a forward with ``output_hidden_states=True``.
    """
    if facet not in FACETS:
        raise ValueError(f"facet must be one of {', '.join(FACETS)}; got {facet!r}")
    index = _layer_index(layer, out.num_layers)
    batch, (h, w) = out.q.shape[1], out.grid
    if facet == "token":
        if out.hidden_states is None:
            raise ValueError("facet='token' needs the layer outputs: run the tower with output_hidden_states=True")
        tokens = out.patches(out.hidden_states[index + 1])  # (B, N, C)
        return tokens.reshape(batch, h, w, -1)
    x = out.patches(getattr(out, _QKV[facet])[index])  # (B, H, N, d)
    return x.permute(0, 2, 3, 1).reshape(batch, h, w, -1)  # (B, h, w, d*H), head index fastest


def saliency_map(out: TowerOutput, tower: RegisterViT | None = None,
                 heads: Sequence[int] | None = None) -> torch.Tensor:
    """(B, h, w) last-layer [CLS] attention to the patches, mean over `heads` (None: all), min-max per image.

    Attention is softmax(q_cls k^T / sqrt(d)) over all tokens (registers included) from the captured q/k as
    attention saw them (`tower` is needed to rotate pre-rotary DINOv3 q/k). An image whose map is flat (e.g. a
    uniform image) gets all zeros: no salient region, never NaN.
    """
    q, k = attention_qk(out, tower, -1)  # (B, H, T, d) each
    if heads is not None:
        heads = list(heads)
        bad = [head for head in heads if not 0 <= head < q.shape[1]]
        if not heads or bad:
            raise ValueError(f"saliency heads must be a non-empty subset of 0..{q.shape[1] - 1}; got {heads}")
        q, k = q[:, heads], k[:, heads]
    attention = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, :, 0]  # (B, H', T)
    cls = attention[..., out.num_prefix_tokens :].mean(1)  # (B, N)
    low, high = cls.amin(-1, keepdim=True), cls.amax(-1, keepdim=True)
    spread = high - low
    flat = spread <= 1e-12 * high.abs().clamp_min(1e-30)
    normalised = torch.where(flat, torch.zeros_like(cls), (cls - low) / spread.clamp_min(1e-30))
    return normalised.view(-1, *out.grid)


def log_bin(x: torch.Tensor, hierarchy: int = 2) -> torch.Tensor:
    """(B, h, w, C) -> (B, h, w, (1 + 8 * hierarchy) * C): the log-binned descriptor.

    Level 0 holds the 3 x 3 neighbourhood of raw descriptors (offsets -1, 0, 1, row by row, centre included);
    level k >= 1 holds the 3^k x 3^k average pools (padding not counted) at offsets -3^k, 0, 3^k, row by row,
    skipping the centre. Offsets past the border are clamped to the nearest row / column. Bins are concatenated
    in that order (bin-major, then channel), as the reference extractor does. Works on any grid, also one smaller
    than the largest bin.
    """
    if x.ndim != 4:
        raise ValueError(f"log_bin expects (B, h, w, C) descriptors, got shape {tuple(x.shape)}")
    if hierarchy < 1:
        raise ValueError(f"hierarchy must be >= 1, got {hierarchy}")
    batch, h, w, channels = x.shape
    grid = x.permute(0, 3, 1, 2)  # (B, C, h, w)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    bins = []
    for level in range(hierarchy):
        size = 3**level
        pooled = grid if size == 1 else F.avg_pool2d(grid, size, stride=1, padding=size // 2, count_include_pad=False)
        for dy in (-size, 0, size):
            r = (rows + dy).clamp(0, h - 1)
            for dx in (-size, 0, size):
                if level and dy == 0 and dx == 0:
                    continue
                bins.append(pooled[:, :, r][:, :, :, (cols + dx).clamp(0, w - 1)])  # (B, C, h, w)
    stacked = torch.stack(bins, dim=1)  # (B, bins, C, h, w)
    return stacked.permute(0, 3, 4, 1, 2).reshape(batch, h, w, len(bins) * channels)


@dataclass
class DenseDescription:
    """One image's dense descriptors and saliency, and where its grid cells lie in the image."""

    descriptors: torch.Tensor  # (h, w, D)
    saliency: torch.Tensor  # (h, w) in [0, 1]
    image_size: tuple[int, int]  # original (H, W)
    pixel_scale: tuple[float, float]  # original pixels per input pixel along (x, y)
    patch_scale: torch.Tensor  # (2,) original pixels per grid cell (x, y), as `TowerOutput.patch_scale`
    patch_size: int
    stride: int

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.descriptors.shape[:2])

    def centres(self, cells: torch.Tensor) -> torch.Tensor:
        """(K, 2) (row, col) grid cells -> (K, 2) (x, y) original-image pixels of their patch centres."""
        cells = cells.float().view(-1, 2)
        centre = cells * self.stride + self.patch_size / 2  # (K, 2) input pixels (row, col)
        return torch.stack([centre[:, 1] * self.pixel_scale[0], centre[:, 0] * self.pixel_scale[1]], dim=-1)


class DenseExtractor:
    """A `RegisterViT` run with overlapping patches (stride < patch size); see the module docstring.

    ``DenseExtractor(tower, stride)(images)`` returns the tower's `TowerOutput` on the strided grid, so everything
    that takes a `TowerOutput` (Object-DINO maps, discovery) runs on it unchanged.
    """

    def __init__(self, tower: RegisterViT, stride: int | None = None):
        patch = tower.patch_size
        stride = patch if stride is None else int(stride)
        if not 1 <= stride <= patch or patch % stride:
            raise ValueError(f"stride {stride} must divide the patch size {patch} (e.g. {patch // 2} or {patch})")
        if tower.backend == "timm" and stride != patch and not getattr(tower.model, "dynamic_img_size", False):
            raise ValueError("a timm tower needs dynamic_img_size=True for a stride below the patch size "
                             "(RegisterViT.from_pretrained creates timm models that way)")
        self.tower = tower
        self.stride = stride

    @property
    def patch_size(self) -> int:
        return self.tower.patch_size

    @property
    def max_input_side(self) -> int:
        return self.tower.max_input_side

    @contextlib.contextmanager
    def strided(self) -> Iterator[RegisterViT]:
        """Lower the patch stride for the duration of the block; everything is restored on exit."""
        tower, patch, stride = self.tower, self.tower.patch_size, self.stride
        if stride == patch:
            yield tower
            return
        conv = tower.patch_conv()
        previous_stride = conv.stride
        restore: list = []
        if tower.backend == "hf" and tower.is_rotary:
            inv_freq = tower.model.rope_embeddings.inv_freq

            def rope_hook(_module, args, output):
                pixels = args[0]
                return strided_rope(inv_freq, tuple(pixels.shape[-2:]), patch, stride, output[0].dtype)

            handle = tower.model.rope_embeddings.register_forward_hook(rope_hook)
            restore.append(handle.remove)
        elif tower.backend == "hf":
            embeddings = tower.model.embeddings
            own = vars(embeddings).get("interpolate_pos_encoding")
            interpolate = embeddings.interpolate_pos_encoding  # the model's own (bound) interpolation

            def strided_interpolation(tokens, height, width):
                grid_h, grid_w = strided_grid(height, width, patch, stride)
                return interpolate(tokens, grid_h * patch, grid_w * patch)  # it sizes the table as height // patch

            embeddings.interpolate_pos_encoding = strided_interpolation  # this instance only, undone below

            def undo():
                if own is None:
                    del embeddings.interpolate_pos_encoding
                else:
                    embeddings.interpolate_pos_encoding = own

            restore.append(undo)
        conv.stride = (stride, stride)
        try:
            yield tower
        finally:
            conv.stride = previous_stride
            for step in reversed(restore):
                step()

    def __call__(self, images, output_hidden_states: bool = False) -> TowerOutput:
        """The tower's forward on the strided grid (images as `RegisterViT.forward` takes them)."""
        with self.strided() as tower:
            return tower(images, output_hidden_states=output_hidden_states)

    def descriptors(self, images, layer: int = -1, facet: Facet = "key", bin: bool = False,
                    hierarchy: int = 2) -> torch.Tensor:
        """(B, h, w, D) descriptors of `layer`'s `facet` (log-binned when `bin`), prefix tokens excluded."""
        if facet not in FACETS:
            raise ValueError(f"facet must be one of {', '.join(FACETS)}; got {facet!r}")
        out = self(images, output_hidden_states=facet == "token")
        x = facet_descriptors(out, layer, facet).float()
        return log_bin(x, hierarchy) if bin else x

    def saliency(self, images, heads: Sequence[int] | None = None) -> torch.Tensor:
        """(B, h, w) last-layer [CLS] attention in [0, 1] (see `saliency_map`)."""
        return saliency_map(self(images), self.tower, heads)

    def describe(self, images: Sequence, layer: int = -1, facet: Facet = "key", bin: bool = False,
                 hierarchy: int = 2, heads: Sequence[int] | None = None) -> list[DenseDescription]:
        """Descriptors and saliency of each image from ONE forward per image (images keep their aspect, so each
        runs alone)."""
        described = []
        for image in images:
            out = self([image], output_hidden_states=facet == "token")
            x = facet_descriptors(out, layer, facet).float()  # (1, h, w, D)
            x = log_bin(x, hierarchy) if bin else x
            grid = torch.tensor([out.grid[1], out.grid[0]], dtype=torch.float64)
            inputs = (grid - 1) * out.step + out.patch_size  # (2,) input pixels (x, y)
            pixel_scale = out.patch_scale[0].double() * grid / inputs
            described.append(DenseDescription(
                descriptors=x[0], saliency=saliency_map(out, self.tower, heads)[0], image_size=out.image_sizes[0],
                pixel_scale=(float(pixel_scale[0]), float(pixel_scale[1])), patch_scale=out.patch_scale[0],
                patch_size=out.patch_size, stride=out.step))
        return described
