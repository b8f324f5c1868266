"""Sampling defaults of the grounding methods, and a record of what a generate() call really used.

When `do_sample` is on and nothing sets top_k, transformers fills in its global default top_k = 50. The
Object-DINO release and VCD sample from the full softmax (temperature only), so every method here passes
top_k = 0 and top_p = 1.0 when the call samples, unless the caller set them (as generate kwargs, or as non-None
fields of a `generation_config` they pass). A checkpoint's own `generation_config.json` values for top_k / top_p
do not count as set by the caller: they are replaced too, and `sampling_settings` records what was used.

Why 0 and not None: as a generate() kwarg None also disables top-k, but a None inside a GenerationConfig is
filled from the model's config and then with 50; transformers skips the top-k warper for 0 in both places.
Greedy calls are passed through unchanged (top_k with do_sample=False only draws a warning).
"""

from __future__ import annotations

import copy

from .compat import merged_generation_config

__all__ = ["REFERENCE_WARPERS", "with_reference_sampling", "sampling_settings"]

REFERENCE_WARPERS = {"top_k": 0, "top_p": 1.0}
RECORDED = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "top_h", "epsilon_cutoff",
            "eta_cutoff", "repetition_penalty", "num_beams", "num_return_sequences", "max_new_tokens")


def with_reference_sampling(model, generate_kwargs: dict) -> dict:
    """`generate_kwargs` plus top_k = 0 / top_p = 1.0 where generate() would sample and the caller set neither."""
    kwargs = dict(generate_kwargs)
    if not merged_generation_config(model, kwargs).do_sample:
        return kwargs
    passed = kwargs.get("generation_config")
    missing = {k: v for k, v in REFERENCE_WARPERS.items()
               if k not in kwargs and (passed is None or getattr(passed, k, None) is None)}
    if passed is None:
        kwargs.update(missing)
    elif missing:
        passed = copy.deepcopy(passed)
        for key, value in missing.items():
            setattr(passed, key, value)  # on the config itself: kwargs beside a generation_config are deprecated
        kwargs["generation_config"] = passed
    return kwargs


def sampling_settings(generate_kwargs: dict, model) -> dict:
    """JSON-ready record of the decoding settings a method's generate() runs with for these kwargs."""
    merged = merged_generation_config(model, with_reference_sampling(model, generate_kwargs))
    return {key: getattr(merged, key, None) for key in RECORDED}
