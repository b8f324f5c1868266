"""Grounded region tokens: region features, the projector, and attach()/detach() on one HF model instance.

features.py (RegionConfig, extract_regions) <- injection.py (attach, RegionHandle) <- modeling.py (RegionGrounding).
"""

from .features import RegionBatch, RegionConfig, extract_regions, pool_vlm_features
from .injection import RegionHandle, attach
from .modeling import RegionGrounding, RegionProjector

__all__ = ["RegionConfig", "RegionBatch", "RegionProjector", "RegionGrounding", "extract_regions", "pool_vlm_features",
           "RegionHandle", "attach"]
