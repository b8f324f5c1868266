"""attach()/detach() of grounded region tokens on ONE Hugging Face LLaVA-style model instance.

Seams used (nothing global is patched, everything is undone by `detach()`):
* `get_image_features` of the module whose forward calls it (5.x: `model.model`; 4.x: the model itself) is
  replaced by an instance attribute wrapping the original bound method with `functools.wraps` (generate() filters
  kwargs by its signature). The wrapper appends K region embeddings after each image's features.
* the processor's `num_additional_image_tokens` is raised by K, so `<image>` expands to the new count.
* the projector is registered as `model.region_projector` (a submodule: it moves with the model and peft can
  list it in `modules_to_save`); the wrapper looks it up at call time, so a peft-wrapped copy is the one used.

Regions are computed from the pixels the VLM itself receives (de-normalised with the processor's mean / std),
so `model.generate(**processor(images=..., text=...))` needs nothing extra.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..compat import image_features_as_list, image_features_like
from ..weights import PROJECTOR_ATTRIBUTE
from .features import RegionBatch, extract_regions, pool_vlm_features

if TYPE_CHECKING:  # the annotation only: modeling.py imports this module (RegionGrounding.attach calls attach)
    from .modeling import RegionGrounding

__all__ = ["RegionHandle", "attach", "pixels_to_rgb", "image_feature_owner", "PROJECTOR_ATTRIBUTE"]


def image_feature_owner(model):
    """The module whose forward calls `get_image_features` (5.x: the inner `model.model`)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "get_image_features"):
        return inner
    if hasattr(model, "get_image_features"):
        return model
    raise TypeError(f"{type(model).__name__} has no get_image_features: not a LLaVA-style model")


def pixels_to_rgb(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """Processor-normalised pixels -> (B, 3, H, W) RGB in [0, 1]; LLaVA-NeXT's (B, P, 3, H, W) uses patch 0
    (the whole image resized)."""
    if pixel_values.ndim == 5:
        pixel_values = pixel_values[:, 0]
    mean = torch.tensor(mean, dtype=torch.float32, device=pixel_values.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=pixel_values.device).view(1, -1, 1, 1)
    return (pixel_values.float() * std + mean).clamp(0, 1)


@dataclass
class RegionHandle:
    """What `attach` changed; `detach()` puts it back (idempotent)."""

    model: object
    owner: object
    processor: object
    previous_additional_tokens: int
    attached: bool = True

    def detach(self) -> None:
        if not self.attached:
            return
        self.owner.__dict__.pop("get_image_features", None)
        if PROJECTOR_ATTRIBUTE in self.model._modules:
            del self.model._modules[PROJECTOR_ATTRIBUTE]
        self.processor.num_additional_image_tokens = self.previous_additional_tokens
        self.attached = False

    def __enter__(self) -> RegionHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def _distinct_regions(tower, grounding: RegionGrounding, rgb: torch.Tensor) -> RegionBatch:
    """`extract_regions` of the distinct images of a batch only (a POPE batch holds one image's questions: its
    rows share pixels), gathered back to one row per image. (B, 3, H, W) -> RegionBatch of B rows."""
    flat = rgb.flatten(1)  # (B, 3HW)
    first: dict[bytes, int] = {}
    rows = [first.setdefault(row.cpu().numpy().tobytes(), i) for i, row in enumerate(flat)]
    distinct = sorted(set(rows))
    if len(distinct) == len(rows):
        return extract_regions(tower, grounding.object_dino, rgb, grounding.config)
    found = extract_regions(tower, grounding.object_dino, rgb[distinct], grounding.config)
    where = torch.tensor([distinct.index(r) for r in rows])
    return RegionBatch(found.features[where], found.boxes[where], found.valid[where], found.masks[where])


def attach(grounding: RegionGrounding, model, processor) -> RegionHandle:
    config = grounding.config
    owner = image_feature_owner(model)
    if "get_image_features" in owner.__dict__:
        raise RuntimeError("region tokens are already attached to this model: detach() the other handle first")
    if not hasattr(processor, "num_additional_image_tokens"):
        raise TypeError(f"{type(processor).__name__} has no num_additional_image_tokens: cannot add region tokens")
    k = config.num_regions
    previous = processor.num_additional_image_tokens
    handle = RegionHandle(model, owner, processor, previous)
    if k == 0:
        return handle
    projector = grounding.build_projector(model).to(device=model.device, dtype=model.dtype)
    model.add_module(PROJECTOR_ATTRIBUTE, projector)
    tower = grounding.load_tower(model.device)  # its object maps give the regions, whatever pools the features
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    original = owner.get_image_features
    model_ref = weakref.ref(model)

    @functools.wraps(original)
    def get_image_features(pixel_values, *args, **kwargs):
        output = original(pixel_values, *args, **kwargs)
        features = image_features_as_list(output)  # per image (N_i, D)
        with torch.no_grad():
            regions = _distinct_regions(tower, grounding, pixels_to_rgb(pixel_values, mean, std))
        pooled = regions.features
        if config.feature_source == "vlm":
            pooled = torch.stack([pool_vlm_features(f.float(), m.to(f.device))
                                  for f, m in zip(features, regions.masks)])
        device = features[0].device
        tokens = model_ref().get_submodule(PROJECTOR_ATTRIBUTE)(
            pooled.to(device), regions.boxes.to(device), regions.valid.to(device))  # (B, K, D)
        merged = [torch.cat([f, t.to(f.dtype)], dim=0) for f, t in zip(features, tokens)]
        return image_features_like(output, merged)

    owner.get_image_features = get_image_features
    processor.num_additional_image_tokens = previous + k
    return handle
