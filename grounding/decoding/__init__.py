"""Guided decoding through generate(): the orchestrator (`ObjectGuidance`), its logits processors, the mixing
functions, branch images (highlight, VCD noise), chat encoding, sampling settings and the prompt-prefix cache."""

from .guidance import GuidanceConfig, ObjectGuidance
from .logits_process import BranchLogitsProcessor, PairedMixLogitsProcessor

__all__ = ["GuidanceConfig", "ObjectGuidance", "BranchLogitsProcessor", "PairedMixLogitsProcessor"]
