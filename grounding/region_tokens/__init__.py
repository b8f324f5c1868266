"""Grounded region tokens: region features, the projector, and attach()/detach() on one HF model instance."""

from .injection import RegionHandle, attach
from .modeling import RegionBatch, RegionConfig, RegionGrounding, RegionProjector, extract_regions

__all__ = ["RegionConfig", "RegionBatch", "RegionProjector", "RegionGrounding", "extract_regions", "RegionHandle",
           "attach"]
