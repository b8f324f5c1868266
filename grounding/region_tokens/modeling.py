"""Grounded region tokens: K embeddings per image saying what objects are where, from Object-DINO regions.

Per image: object map -> connected regions (largest first, up to K) -> for each region a feature pooled from the
grounding tower's final patch tokens under its mask (or, with feature_source="vlm", from the VLM's own image
features) and a box encoding [x0, y0, x1, y1, area] in [0, 1] -> `RegionProjector` -> K vectors in the language
model's width. Missing regions get a learned null embedding, so every image always yields exactly K tokens.

`RegionGrounding` bundles config + projector + tower, attaches to a model (`grounding.region_tokens.injection`) and saves /
loads as safetensors + JSON (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..objects.object_dino import ObjectDINO, ObjectDINOConfig
from ..objects.regions import object_regions

__all__ = ["RegionConfig", "RegionBatch", "RegionProjector", "RegionGrounding", "extract_regions"]

CONFIG_NAME = "region_grounding.json"
WEIGHTS_NAME = "region_projector.safetensors"


@dataclass
class RegionConfig:
    num_regions: int = 8  # K tokens appended after each image's tokens
    tower: str = "facebook/dinov2-with-registers-base"
    tower_short_side: int = 224
    feature_source: Literal["tower", "vlm"] = "tower"
    map_threshold: float = 0.0  # regions = connected components of map > threshold (the map is already cut at 0.6)
    min_area: int = 1  # patches
    projector_hidden: int = 1024
    object_dino: ObjectDINOConfig = field(default_factory=lambda: ObjectDINOConfig(k=5))

    def __post_init__(self):
        if isinstance(self.object_dino, dict):
            self.object_dino = ObjectDINOConfig(**self.object_dino)
        if self.num_regions < 0:
            raise ValueError(f"num_regions must be >= 0, got {self.num_regions}")
        if self.feature_source not in ("tower", "vlm"):
            raise ValueError(f"feature_source must be 'tower' or 'vlm', got {self.feature_source!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["object_dino"]["facets"] = list(data["object_dino"]["facets"])
        return data


@dataclass
class RegionBatch:
    features: torch.Tensor  # (B, K, C) pooled region features (zeros in empty slots)
    boxes: torch.Tensor  # (B, K, 5) [x0, y0, x1, y1, area] in [0, 1]
    valid: torch.Tensor  # (B, K) bool
    masks: torch.Tensor  # (B, K, h, w) bool on the tower's patch grid


def _tower_outputs(tower, images) -> list:
    """Tower outputs for a (B, 3, H, W) RGB batch in [0, 1] (one batched forward) or a list of PIL images (one each)."""
    if isinstance(images, torch.Tensor):
        height, width = images.shape[-2:]
        _, (h, w) = tower.input_geometry(height, width)
        pixels = F.interpolate(images.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        pixels = (pixels.clamp(0, 1).to(tower.mean.device) - tower.mean) / tower.std  # (B, 3, h, w)
        return [tower(pixels)]
    return [tower([image]) for image in images]


def extract_regions(tower, object_dino: ObjectDINO, images: torch.Tensor | list, config: RegionConfig) -> RegionBatch:
    """Regions of each image: images are PIL images, or (B, 3, H, W) RGB in [0, 1] (e.g. from `pixels_to_rgb`)."""
    k = config.num_regions
    features, boxes, valid, masks = [], [], [], []
    for out in _tower_outputs(tower, images):
        maps = object_dino.analyse(out).maps  # (b, h, w)
        tokens = out.patch_tokens().float()  # (b, N, C)
        h, w = out.grid
        for object_map, patch_tokens in zip(maps, tokens):
            found = object_regions(object_map, config.map_threshold, max_regions=k, min_area=config.min_area)
            f = torch.zeros(k, patch_tokens.shape[-1], device=patch_tokens.device)
            b = torch.zeros(k, 5, device=patch_tokens.device)
            v = torch.zeros(k, dtype=torch.bool, device=patch_tokens.device)
            m = torch.zeros(k, h, w, dtype=torch.bool, device=patch_tokens.device)
            for slot, region in enumerate(found):
                flat = region.mask.flatten().to(patch_tokens.device)
                f[slot] = patch_tokens[flat].mean(0)
                x0, y0, x1, y1 = region.box.tolist()
                b[slot] = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h, region.area / (h * w)])
                v[slot] = True
                m[slot] = region.mask
            features.append(f)
            boxes.append(b)
            valid.append(v)
            masks.append(m)
    return RegionBatch(torch.stack(features), torch.stack(boxes), torch.stack(valid), torch.stack(masks))


class RegionProjector(nn.Module):
    """(B, K, C) features + (B, K, 5) boxes -> (B, K, D) embeddings; empty slots -> a learned null embedding."""

    def __init__(self, feature_dim: int, output_dim: int, hidden: int = 1024):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.mlp = nn.Sequential(nn.Linear(feature_dim + 5, hidden), nn.GELU(), nn.Linear(hidden, output_dim))
        self.null = nn.Parameter(torch.zeros(output_dim))
        nn.init.normal_(self.null, std=0.02)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        x = torch.cat([self.norm(features.to(dtype)), boxes.to(dtype)], dim=-1)  # (B, K, C + 5)
        projected = self.mlp(x)  # (B, K, D)
        return torch.where(valid[..., None], projected, self.null.to(projected.dtype).expand_as(projected))


class RegionGrounding(nn.Module):
    """Config + projector (+ the frozen grounding tower, loaded lazily). Attach with `attach(model, processor)`."""

    def __init__(self, config: RegionConfig, feature_dim: int | None = None, output_dim: int | None = None, tower=None):
        super().__init__()
        self.config = config
        self.tower = tower
        self.object_dino = ObjectDINO(config.object_dino)
        self.projector = RegionProjector(feature_dim, output_dim, config.projector_hidden) if feature_dim else None
        self._attached_to = None  # weakref to the model of the last attach(): its projector is the one trained

    def load_tower(self, device: torch.device | str = "cpu"):
        if self.tower is None:
            from ..tower.backbone import RegisterViT

            self.tower = RegisterViT.from_pretrained(self.config.tower, device=str(device),
                                                     preprocess={"short_side": self.config.tower_short_side})
        return self.tower

    def build_projector(self, model) -> RegionProjector:
        """Create the projector for `model` (output width = the language model's hidden size)."""
        output_dim = model.get_input_embeddings().embedding_dim
        if self.projector is not None:
            if self.projector.null.shape[0] != output_dim:
                raise ValueError(f"projector outputs {self.projector.null.shape[0]} wide, the model's embeddings "
                                 f"are {output_dim}: this adapter was trained for another model")
            return self.projector
        if self.config.feature_source == "vlm":
            feature_dim = output_dim
        else:
            tower = self.load_tower(model.device)
            feature_dim = tower.model.config.hidden_size if tower.backend == "hf" else tower.model.embed_dim
        self.projector = RegionProjector(feature_dim, output_dim, self.config.projector_hidden)
        return self.projector

    def attach(self, model, processor):
        from .injection import attach

        handle = attach(self, model, processor)
        self._attached_to = weakref.ref(model)
        return handle

    def active_projector(self) -> RegionProjector | None:
        """The projector the attached model runs: after peft wrapped it (`modules_to_save`), the trained copy of the
        active adapter, not the original module that `self.projector` still points to."""
        model = self._attached_to() if self._attached_to is not None else None
        module = getattr(model, "region_projector", None) if model is not None else None
        if module is None:
            return self.projector
        copies = getattr(module, "modules_to_save", None)  # peft's ModulesToSaveWrapper
        if copies is None:
            return module
        active = module.active_adapter
        active = active[0] if isinstance(active, (list, tuple)) else active
        if active in copies and not getattr(module, "disable_adapters", False):
            return copies[active]
        return module.original_module

    def save_pretrained(self, directory: str | Path, projector: nn.Module | None = None) -> None:
        """Config + projector weights (safetensors). The projector saved is `projector` if given, else the one the
        attached model runs (the trained one after fine-tuning, see `active_projector`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        projector = projector or self.active_projector()
        state = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        dims = {"feature_dim": projector.norm.normalized_shape[0], "output_dim": projector.null.shape[0]}
        (directory / CONFIG_NAME).write_text(json.dumps({**self.config.to_dict(), **dims}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, tower=None) -> RegionGrounding:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory} holds no {CONFIG_NAME}: not a saved RegionGrounding adapter")
        data = json.loads((directory / CONFIG_NAME).read_text())
        feature_dim, output_dim = data.pop("feature_dim"), data.pop("output_dim")
        grounding = cls(RegionConfig(**data), feature_dim, output_dim, tower)
        grounding.projector.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return grounding


def pool_vlm_features(image_features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, D) square-grid VLM image features, (K, h, w) tower masks -> (K, D) means under the resized masks."""
    side = int(round(image_features.shape[0] ** 0.5))
    if side * side != image_features.shape[0]:
        raise ValueError(f"feature_source='vlm' needs a square feature grid, got {image_features.shape[0]} tokens")
    resized = F.interpolate(masks[:, None].float(), size=(side, side), mode="nearest")[:, 0].flatten(1)  # (K, N)
    weights = resized / resized.sum(-1, keepdim=True).clamp_min(1)
    return weights.to(image_features.dtype) @ image_features  # (K, D)
