"""vlm-grounding: register-ViT grounding towers, Object-DINO object maps, and grounded decoding for HF VLMs."""

from .backbone import PreprocessConfig, RegisterViT, TowerConfig, TowerOutput, WeightsNotFoundError
from .guidance import GuidanceConfig, ObjectGuidance
from .images import ImageError, load_image
from .object_dino import ObjectDINO, ObjectDINOConfig, ObjectDINOOutput
from .region_tokens import RegionConfig, RegionGrounding

__all__ = [
    "RegisterViT",
    "TowerConfig",
    "PreprocessConfig",
    "TowerOutput",
    "WeightsNotFoundError",
    "ObjectDINO",
    "ObjectDINOConfig",
    "ObjectDINOOutput",
    "ObjectGuidance",
    "GuidanceConfig",
    "RegionGrounding",
    "RegionConfig",
    "ImageError",
    "load_image",
]
