"""Registry of grounding methods by name: what the eval runner and the CLI look up.

A method is built as `factory(tower, processor, **options)` and answers
`method.generate(model, images, prompts, **generate_kwargs) -> list[str]`. Register new ones with
`@register_method("name")`; the runner needs no change.

Every built-in method samples from the full softmax unless top_k / top_p are given (`grounding.sampling`), and
sets `method.generation_settings` to the decoding settings its last generate() call used;
`sampling_settings(generate_kwargs, model)` gives the same record before a call.

Methods with a `prefix_cache` attribute (baseline, highlight, masked-contrast, vcd) share the KV cache of each
image's prompt prefix across the rows that hold it when it is set to a `grounding.prefix_cache.PrefixCache`
(the eval runner does so when several questions share an image); answers are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .guidance import ObjectGuidance, encode_chat
from .images import as_pil
from .prefix_cache import PrefixCache, generate_new_tokens
from .sampling import sampling_settings, with_reference_sampling

__all__ = ["METHODS", "register_method", "build_method", "Baseline", "needs_tower", "sampling_settings"]

METHODS: dict[str, Callable] = {}
_NEEDS_TOWER: set[str] = set()


def register_method(name: str, needs_tower: bool = False):
    def decorator(factory):
        METHODS[name] = factory
        if needs_tower:
            _NEEDS_TOWER.add(name)
        return factory

    return decorator


def needs_tower(name: str) -> bool:
    return name in _NEEDS_TOWER


def build_method(name: str, tower=None, processor=None, **options):
    if name not in METHODS:
        raise KeyError(f"unknown grounding method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](tower, processor, **options)


@register_method("baseline")
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


@register_method("highlight", needs_tower=True)
def _highlight(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="highlight", **options)


@register_method("masked-contrast", needs_tower=True)
def _masked_contrast(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="masked-contrast", **options)


@register_method("vcd")
def _vcd(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="vcd", **options)


from . import region_method  # noqa: E402,F401  (registers "region-tokens")
