"""The "baseline" method: plain `model.generate` with the guided methods' chat prompt building and left padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..decoding.chat import encode_chat
from ..decoding.prefix_cache import PrefixCache, generate_new_tokens
from ..decoding.sampling import sampling_settings, with_reference_sampling
from ..images import as_pil
from .registry import register_method

__all__ = ["Baseline"]


@register_method("baseline", options=set())
class Baseline:
    """Plain `model.generate` with the same chat prompt building and left padding as the guided methods."""

    def __init__(self, tower=None, processor=None, **_):
        self.processor = processor
        self.generation_settings: dict | None = None  # decoding settings of the last generate() call
        self.prefix_cache: PrefixCache | None = None  # set to share image prefixes across rows (same answers)

    @torch.no_grad()
    def generate(self, model, images: Sequence, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        generate_kwargs = with_reference_sampling(model, generate_kwargs)
        self.generation_settings = sampling_settings(generate_kwargs, model)
        inputs = encode_chat(self.processor, [as_pil(i) for i in images], prompts, model.device, model.dtype)
        new_tokens = generate_new_tokens(model, inputs, self.prefix_cache, **generate_kwargs)
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)
