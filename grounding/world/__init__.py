"""The procedural hallucination world: scenes built, drawn and captioned from a seed."""

from .build import DEFAULT_CATEGORIES, DEFAULT_PAIRS, SPLITS, WorldConfig, WorldSummary, build_world

__all__ = ["WorldConfig", "WorldSummary", "build_world", "SPLITS", "DEFAULT_CATEGORIES", "DEFAULT_PAIRS"]
