"""vlm-grounding: register-ViT grounding towers, Object-DINO object maps, and grounded decoding for HF VLMs.

Importing the package is cheap and changes no global state: each public name is imported from its module on
first use (``from grounding import RegisterViT`` loads torch and the tower code then, not before).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve through __getattr__
    from .backbone import PreprocessConfig, RegisterViT, TowerConfig, TowerOutput, WeightsNotFoundError
    from .descriptors import DenseExtractor
    from .guidance import GuidanceConfig, ObjectGuidance
    from .images import ImageError, load_image
    from .object_dino import ObjectDINO, ObjectDINOConfig, ObjectDINOOutput
    from .pipeline import grounded_pipeline
    from .region_tokens import RegionConfig, RegionGrounding

_EXPORTS = {
    "RegisterViT": "backbone",
    "TowerConfig": "backbone",
    "PreprocessConfig": "backbone",
    "TowerOutput": "backbone",
    "WeightsNotFoundError": "backbone",
    "DenseExtractor": "descriptors",
    "ObjectDINO": "object_dino",
    "ObjectDINOConfig": "object_dino",
    "ObjectDINOOutput": "object_dino",
    "ObjectGuidance": "guidance",
    "GuidanceConfig": "guidance",
    "grounded_pipeline": "pipeline",
    "RegionGrounding": "region_tokens",
    "RegionConfig": "region_tokens",
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
