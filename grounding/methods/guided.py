"""The training-free methods: "highlight", "masked-contrast" (Object-DINO object maps) and "vcd" (diffusion
noise), each an `ObjectGuidance` in its mode (`grounding.decoding`)."""

from __future__ import annotations

from ..decoding.guidance import GuidanceConfig, ObjectGuidance
from .registry import register_method

__all__: list[str] = []  # nothing to import: the methods are built by name (`build_method`)


@register_method("highlight", needs_tower=True, options=GuidanceConfig)
def _highlight(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="highlight", **options)


@register_method("masked-contrast", needs_tower=True, options=GuidanceConfig)
def _masked_contrast(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="masked-contrast", **options)


@register_method("vcd", options=GuidanceConfig)
def _vcd(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="vcd", **options)
