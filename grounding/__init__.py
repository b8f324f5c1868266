"""vlm-grounding: register-ViT grounding towers, Object-DINO object maps, and grounded decoding for HF VLMs.

Importing the package is cheap and changes no global state: each public name is imported from its module on
first use (``from grounding import RegisterViT`` loads torch and the tower code then, not before).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve through __getattr__
    from .tower.backbone import PreprocessConfig, RegisterViT, TowerConfig, TowerOutput, WeightsNotFoundError
    from .descriptors.dense import DenseExtractor
    from .decoding.guidance import GuidanceConfig, ObjectGuidance
    from .images import ImageError, load_image
    from .objects.object_dino import ObjectDINO, ObjectDINOConfig, ObjectDINOOutput
    from .methods.pipeline import grounded_pipeline
    from .region_tokens.features import RegionConfig
    from .region_tokens.modeling import RegionGrounding

_EXPORTS = {
    "RegisterViT": "tower.backbone",
    "TowerConfig": "tower.backbone",
    "PreprocessConfig": "tower.backbone",
    "TowerOutput": "tower.backbone",
    "WeightsNotFoundError": "tower.backbone",
    "DenseExtractor": "descriptors.dense",
    "ObjectDINO": "objects.object_dino",
    "ObjectDINOConfig": "objects.object_dino",
    "ObjectDINOOutput": "objects.object_dino",
    "ObjectGuidance": "decoding.guidance",
    "GuidanceConfig": "decoding.guidance",
    "grounded_pipeline": "methods.pipeline",
    "RegionGrounding": "region_tokens.modeling",
    "RegionConfig": "region_tokens.features",
    "ImageError": "images",
    "load_image": "images",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounding' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
