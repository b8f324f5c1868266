"""Grounded region tokens: K embeddings per image saying what objects are where, from Object-DINO regions.

Per image: object map -> connected regions (largest first, up to K) -> for each region a feature pooled from the
grounding tower's final patch tokens under its mask (or, with feature_source="vlm", from the VLM's own image
features) and a box encoding [x0, y0, x1, y1, area] in [0, 1] -> `RegionProjector` -> K vectors in the language
model's width. Missing regions get a learned null embedding, so every image always yields exactly K tokens.

`RegionGrounding` bundles config + projector + tower, attaches to a model (`grounding.region_tokens.injection`)
and saves / loads as safetensors + JSON (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..objects.object_dino import ObjectDINO
from ..tower.backbone import RegisterViT
from .features import RegionConfig
from .injection import RegionHandle, attach

__all__ = ["RegionProjector", "RegionGrounding"]

CONFIG_NAME = "region_grounding.json"
WEIGHTS_NAME = "region_projector.safetensors"


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

    def attach(self, model, processor) -> RegionHandle:
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
