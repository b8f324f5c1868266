"""Guided decoding through generate(): the orchestrator, its logits processors, branch images, sampling and the
prompt-prefix cache."""

from .guidance import GuidanceConfig, ObjectGuidance

__all__ = ["GuidanceConfig", "ObjectGuidance"]
