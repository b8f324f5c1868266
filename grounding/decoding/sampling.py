"""Sampling defaults of the grounding methods, and a record of what a generate() call really used.

When `do_sample` is on and nothing sets top_k, transformers fills in its global default top_k = 50. The
Object-DINO release and VCD sample from the full softmax (temperature only), so every method here passes
top_k = 0 and top_p = 1.0 when the call samples, unless the caller set them (as generate kwargs, or as non-None
fields of a `generation_config` they pass). A checkpoint's own `generation_config.json` values for top_k / top_p
do not count as set by the caller: they are replaced too, and `sampling_settings` records what was used.

Why 0 and not None: as a generate() kwarg None also disables top-k, but a None inside a GenerationConfig is
filled from the model's config and then with 50; transformers skips the top-k warper for 0 in both places.
Greedy calls are passed through unchanged (top_k with do_sample=False only draws a warning).

Per-item randomness (`ItemSampler`): generate() draws every row of a batch from one global random stream, so a
sampled answer depends on what it is batched with and on where a resumed run restarts. An `ItemSampler` passed
as the last logits processor draws each row's token itself, from that row's own generator (seeded per item,
e.g. `item_seed(seed, question_id)`), after applying the same warpers generate() applies next (temperature,
top-k, top-p, min-p, typical, epsilon, eta, in generate()'s order), and hands generate() a distribution with
all its mass on that token, which the warpers keep and generate()'s own draw then takes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import torch

from ..compat import merged_generation_config

__all__ = ["REFERENCE_WARPERS", "with_reference_sampling", "sampling_settings", "ItemSampler", "item_seed"]

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


def item_seed(seed: int, key) -> int:
    """A 63-bit seed for one item from the run's seed and the item's id (same item, same seed, in any batch)."""
    digest = hashlib.sha256(f"{seed}:{json.dumps(key, sort_keys=True, default=str)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _warpers(config) -> list:
    """The sampling warpers generate() appends for `config`, in its order (one sequence per prompt)."""
    from transformers.generation import logits_process as lp
    from transformers.generation.logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
                                                        TypicalLogitsWarper)

    warpers = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if getattr(config, "top_h", None) is not None:
        warpers.append(lp.TopHLogitsWarper(top_h=config.top_h))  # transformers 5.x
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p))
    if config.typical_p is not None and config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=config.typical_p))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        warpers.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        warpers.append(EtaLogitsWarper(epsilon=config.eta_cutoff))
    return warpers


class ItemSampler:
    """Logits processor: row i's next token drawn from row i's own generator (seeds[i]); see the module doc.

    Build it with the generate kwargs the call will use (`ItemSampler(model, kwargs, seeds)`) and pass it as the
    last entry of `logits_processor`. Single use (one generate() call)."""

    def __init__(self, model, generate_kwargs: dict, seeds: Sequence[int]):
        config = merged_generation_config(model, with_reference_sampling(model, generate_kwargs))
        if not config.do_sample:
            raise ValueError("ItemSampler is for sampling calls (do_sample=True)")
        if (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
            raise ValueError("per-item sampling draws one sequence per prompt: num_beams and num_return_sequences "
                             "must be 1")
        self.warpers = _warpers(config)
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"ItemSampler has {len(self.generators)} seeds but generate() runs {scores.shape[0]} "
                             "rows (beam search, num_return_sequences or joint branches are not per-item sampled)")
        warped = scores.float()
        for warper in self.warpers:
            warped = warper(input_ids, warped)
        probs = warped.softmax(dim=-1)  # (B, V)
        cdf = probs.cumsum(dim=-1)  # (B, V)
        # u in (0, 1]: the first index whose cdf reaches u * total has positive probability
        u = torch.stack([1.0 - torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])  # (B,)
        target = (u.to(cdf.device, torch.float64) * cdf[:, -1].double()).to(cdf.dtype)[:, None]  # (B, 1)
        tokens = torch.searchsorted(cdf, target).clamp_max(scores.shape[-1] - 1)  # (B, 1)
        chosen = torch.full_like(scores, -float("inf"))
        return chosen.scatter_(1, tokens, 0.0)
