"""Grounding methods by name: the registry the eval runner and the CLI look up, and the built-in methods.

`registry.py` is a leaf (it imports no method); each method module registers itself with `@register_method` when
this package imports it (timm's `@register_model` pattern), so `from grounding.methods import build_method` sees
them all. `pipeline.py` (transformers' pipeline with a method) is imported on use: `grounding.grounded_pipeline`.
"""

from ..decoding.sampling import sampling_settings
from . import baseline, evidence, guided, region  # noqa: F401  (each registers its methods)
from .baseline import Baseline
from .evidence import EvidenceConfig, RegionEvidence
from .region import RegionTokens
from .registry import METHODS, build_method, check_method_options, method_options, needs_tower, register_method

__all__ = ["METHODS", "register_method", "build_method", "Baseline", "RegionTokens", "RegionEvidence", "EvidenceConfig",
           "needs_tower", "sampling_settings", "check_method_options", "method_options"]
