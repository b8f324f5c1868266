"""RegisterViT: the grounding vision tower.

Loads Hugging Face ``dinov2_with_registers``, ``dinov2`` and ``dinov3_vit`` checkpoints, or timm
``*_reg4_dinov2`` models, from a hub name or a local directory, preprocesses images with its `TowerProcessor`
(processing.py: WITHOUT centre crop) and returns q, k, v of every layer plus the patch grid in a `TowerOutput`.

Token order in every layer: ``[CLS, reg_1 .. reg_R, patches row-major]``; ``num_prefix_tokens = 1 + R`` is read
from the model's config, never hard-coded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from ..weights import WeightsNotFoundError, missing_weights, resolve_weights
from .capture import QKVCollector, attention_capture, projection_capture
from .processing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig, TowerProcessor

__all__ = ["PreprocessConfig", "TowerConfig", "TowerOutput", "RegisterViT", "WeightsNotFoundError",
           "per_input_size"]

_HF_TYPES = ("dinov2_with_registers", "dinov2", "dinov3_vit")


@dataclass
class TowerConfig:
    """Which tower and how to run it. Round-trips through YAML (plain fields only)."""

    model: str = "facebook/dinov2-with-registers-base"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    capture: Literal["auto", "attention", "projection"] = "auto"
    # where q/k are taken for rotary models (DINOv3): before the rotary embedding (the Object-DINO release)
    # or after it (what attention actually uses). DINOv2 has no rotary embedding: both are identical.
    qk_position: Literal["pre_rope", "post_rope"] = "pre_rope"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self):
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)


@dataclass
class TowerOutput:
    """q/k/v of every layer for a batch of images that share one patch grid.

    q, k, v: (L, B, H, T, d) with T = num_prefix_tokens + h * w.
    last_hidden_state: (B, T, C) after the final norm.
    hidden_states: L + 1 tensors (B, T, C) (embeddings, then each layer) when requested, else None.
    patch_scale: (B, 2) original-image pixels per grid cell along (x, y): boxes in patch units times this give
    original-image pixels. image_sizes: original (H, W) per image.
    stride: the patch embedding's stride; the patch size, or smaller on a `DenseExtractor` (overlapping patches,
    grid 1 + (H - p) // stride per side; patch_scale then spreads the grid over the input: input side / grid).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    num_prefix_tokens: int
    num_register_tokens: int
    grid: tuple[int, int]
    patch_size: int
    image_sizes: list[tuple[int, int]]
    patch_scale: torch.Tensor
    stride: int | None = None  # None: the patch size

    @property
    def step(self) -> int:
        """Input pixels between neighbouring grid cells (the stride)."""
        return self.patch_size if self.stride is None else self.stride

    @property
    def num_layers(self) -> int:
        return self.q.shape[0]

    @property
    def num_heads(self) -> int:
        return self.q.shape[2]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Drop [CLS] and register tokens along the token axis (second to last)."""
        return x[..., self.num_prefix_tokens :, :]

    def patch_tokens(self) -> torch.Tensor:
        return self.last_hidden_state[:, self.num_prefix_tokens :]  # (B, N, C)


def _is_local(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def _detect_backend(name: str) -> Literal["hf", "timm"]:
    if _is_local(name):
        config_file = Path(name).expanduser() / "config.json"
        if not config_file.is_file():
            raise WeightsNotFoundError(f"{name} is a directory but holds no config.json")
        config = json.loads(config_file.read_text())
        return "timm" if "architecture" in config and "model_type" not in config else "hf"
    if name.startswith(("timm/", "hf-hub:timm/", "hf_hub:timm/")) or "reg4_dinov2" in name:
        return "timm"
    return "hf"


def _hub_id(name: str) -> str:
    """The hub id behind a tower name: ``hf-hub:`` prefixes dropped, bare timm names mapped to theirs."""
    name = name.split(":", 1)[1] if name.startswith(("hf-hub:", "hf_hub:")) else name
    if "/" not in name and not _is_local(name) and _detect_backend(name) == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        name = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else name
    return name


class RegisterViT(nn.Module):
    """A ViT (DINOv2 / DINOv2-with-registers / DINOv3 / timm reg4) that returns q/k/v of every layer."""

    def __init__(self, model: nn.Module, config: TowerConfig, backend: Literal["hf", "timm"],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.backend = backend
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if backend == "hf":
            mc = model.config
            self.patch_size = int(mc.patch_size)
            self.num_layers = int(mc.num_hidden_layers)
            self.num_heads = int(mc.num_attention_heads)
            self.num_register_tokens = int(getattr(mc, "num_register_tokens", 0) or 0)
            self.num_prefix_tokens = 1 + self.num_register_tokens
            self.is_rotary = mc.model_type == "dinov3_vit"
        else:
            patch = model.patch_embed.patch_size
            self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
            self.num_layers = len(model.blocks)
            self.num_heads = int(model.blocks[0].attn.num_heads)
            self.num_prefix_tokens = int(model.num_prefix_tokens)
            self.num_register_tokens = int(getattr(model, "num_reg_tokens", self.num_prefix_tokens - 1))
            self.is_rotary = False
        self.to(device=config.device, dtype=getattr(torch, config.dtype))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, **overrides) -> RegisterViT:
        """Load from a hub name or a local directory; keyword overrides go into `TowerConfig`."""
        config = TowerConfig(model=str(model), **overrides)
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config: TowerConfig) -> RegisterViT:
        # a local directory, the cache's snapshot, or the hub id: fails fast (and clearly) when none can be had
        name = resolve_weights(_hub_id(config.model), "grounding tower")
        backend = _detect_backend(name)
        if backend == "timm":
            return cls._load_timm(name, config)
        from huggingface_hub.errors import HFValidationError
        from transformers import AutoConfig, AutoModel

        try:
            hf_config = AutoConfig.from_pretrained(name)
        except (OSError, HFValidationError, ValueError) as error:
            reason = f"loading failed ({type(error).__name__}: {error})"
            raise missing_weights(name, "grounding tower", reason) from error
        if hf_config.model_type not in _HF_TYPES:
            raise ValueError(f"{name} is a {hf_config.model_type!r} model; RegisterViT supports {_HF_TYPES}")
        model = AutoModel.from_pretrained(name, attn_implementation="sdpa", dtype=torch.float32)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        processor_file = Path(name) / "preprocessor_config.json"
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
            mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        return cls(model, config, "hf", mean, std)

    @classmethod
    def _load_timm(cls, name: str, config: TowerConfig) -> RegisterViT:
        import timm

        source = f"local-dir:{name}" if _is_local(name) else name
        if "/" in name and not _is_local(name):  # a hub id
            source = "hf-hub:" + source
        try:
            model = timm.create_model(source, pretrained=True, dynamic_img_size=True)
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "Unknown model" in str(error):
                raise
            reason = f"loading failed ({type(error).__name__}: {error})"
            raise missing_weights(name, "grounding tower", reason) from error
        cfg = model.pretrained_cfg
        return cls(model, config, "timm", cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))

    # ------------------------------------------------------------------ preprocessing (a `TowerProcessor`)
    @property
    def processor(self) -> TowerProcessor:
        """The pixel processor for this tower: its preprocessing config, patch size and normalisation."""
        return TowerProcessor(self.config.preprocess, self.patch_size, self.mean.flatten().tolist(),
                              self.std.flatten().tolist())

    def input_geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Return ((content_h, content_w), (input_h, input_w)) in pixels for an original image size."""
        return self.processor.input_geometry(height, width)

    @property
    def max_input_side(self) -> int:
        """The longest image side the tower ever feeds: decode images at no more than this (`load_image`)."""
        return self.processor.max_input_side

    def preprocess(self, images: Sequence) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """Images -> (B, 3, H, W) normalised pixels, original (H, W) sizes, (B, 2) pixels per patch (x, y)."""
        return self.processor(images)

    # ------------------------------------------------------------------ forward
    def patch_conv(self) -> nn.Conv2d:
        """The patch embedding's convolution (its stride sets the grid; `DenseExtractor` lowers it for a while)."""
        if self.backend == "timm":
            return self.model.patch_embed.proj
        embedding = self.model.embeddings.patch_embeddings
        return embedding if isinstance(embedding, nn.Conv2d) else embedding.projection

    @property
    def patch_stride(self) -> int:
        stride = self.patch_conv().stride
        if stride[0] != stride[1]:
            raise ValueError(f"the patch embedding has a non-square stride {stride}")
        return int(stride[0])

    def _capture_mode(self) -> Literal["attention", "projection"]:
        if self.config.capture != "auto":
            return self.config.capture
        if self.backend == "timm":
            return "projection"
        if self.is_rotary and self.config.qk_position == "pre_rope":
            return "projection"
        return "attention"

    @torch.inference_mode()
    def forward(self, images: Sequence | torch.Tensor, output_hidden_states: bool = False) -> TowerOutput:
        """Run the tower on PIL images / paths / arrays (preprocessed here) or a normalised (B, 3, H, W) tensor."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            pixels = images
            sizes = [tuple(images.shape[-2:])] * images.shape[0]
            scales = torch.full((images.shape[0], 2), float(self.patch_size))
        else:
            pixels, sizes, scales = self.preprocess(images)
        if pixels.shape[-1] % self.patch_size or pixels.shape[-2] % self.patch_size:
            raise ValueError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        pixels = pixels.to(device=self.mean.device, dtype=next(self.model.parameters()).dtype)
        stride = self.patch_stride
        grid = (1 + (pixels.shape[-2] - self.patch_size) // stride, 1 + (pixels.shape[-1] - self.patch_size) // stride)
        if stride != self.patch_size:  # overlapping patches: spread the grid over the input
            scales = scales * torch.tensor([pixels.shape[-1] / grid[1], pixels.shape[-2] / grid[0]]) / self.patch_size
        mode = self._capture_mode()
        if mode == "attention" and self.backend == "timm":
            raise ValueError("timm towers support only capture='projection' (hooks on the fused qkv Linear)")
        capture = attention_capture if mode == "attention" else projection_capture
        collector = QKVCollector(num_heads=self.num_heads, num_layers=self.num_layers)
        with capture(self.model, collector):
            last, hidden = self._run(pixels, output_hidden_states)
        q, k, v = collector.stacked(self.num_layers)  # each (L, B, H, T, d)
        expected = self.num_prefix_tokens + grid[0] * grid[1]
        if q.shape[-2] != expected:
            raise RuntimeError(f"captured {q.shape[-2]} tokens, expected {self.num_prefix_tokens} prefix + "
                               f"{grid[0]}x{grid[1]} patches = {expected}")
        return TowerOutput(q=q, k=k, v=v, last_hidden_state=last, hidden_states=hidden,
                           num_prefix_tokens=self.num_prefix_tokens, num_register_tokens=self.num_register_tokens,
                           grid=grid, patch_size=self.patch_size, image_sizes=list(sizes), patch_scale=scales,
                           stride=stride)

    def _run(self, pixels: torch.Tensor, output_hidden_states: bool):
        if self.backend == "hf":
            out = self.model(pixel_values=pixels, output_hidden_states=output_hidden_states)
            return out.last_hidden_state, (tuple(out.hidden_states) if output_hidden_states else None)
        hidden: list[torch.Tensor] = []
        handles = []
        if output_hidden_states:
            handles.append(self.model.pos_drop.register_forward_hook(lambda m, i, o: hidden.append(o)))
            handles += [b.register_forward_hook(lambda m, i, o: hidden.append(o)) for b in self.model.blocks]
        try:
            last = self.model.forward_features(pixels)  # (B, T, C), normed
        finally:
            for handle in handles:
                handle.remove()
        return last, (tuple(hidden) if output_hidden_states else None)


def per_input_size(tower: RegisterViT, images: Sequence, compute: Callable[[TowerOutput], Sequence]) -> list:
    """One result per PIL image, in order: the images go through the tower in one call per tower input size (one
    call for all of them when they share a size or the tower resizes to a fixed size), and `compute(output)` turns
    each call's output into one result per image of that call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tower.input_geometry(image.height, image.width)[1], []).append(i)
    results: list = [None] * len(images)
    for group in groups.values():
        for i, result in zip(group, compute(tower([images[i] for i in group]))):
            results[i] = result
    return results
