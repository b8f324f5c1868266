"""The logits processors of guided decoding: `BranchLogitsProcessor` (a second branch with its own KV cache, mixed
into generate()'s logits every step) and `PairedMixLogitsProcessor` (the joint 2B batch), plus the helpers they
need. User logits processors run before generate()'s sampling warpers, so the mix is on raw logits for greedy and
sampling alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessor

from ..compat import CACHE_KWARG, multimodal_position_ids, output_cache, rope_index_function

__all__ = ["BranchLogitsProcessor", "PairedMixLogitsProcessor", "positions_from_mask", "check_paired_rows"]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) attention mask -> (B, T) position ids, left padding at 0 (what generate() does)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class BranchLogitsProcessor(LogitsProcessor):
    r"""
    [`LogitsProcessor`] that runs `model` on a second branch alongside `generate()` and mixes the two next-token
    logits, like transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor`: the branch owns its input_ids,
    image inputs (first step only), attention mask and KV cache; it prefills once, then feeds one token per step.
    Single use: the KV cache lives until `release()` or until the processor is dropped.

    Args:
        model (`PreTrainedModel`):
            The model `generate()` runs; it also runs the branch.
        branch (`dict[str, torch.Tensor]`):
            The branch's inputs: `input_ids` (B, T') and `attention_mask` (B, T'), left-padded, plus image inputs
            (`pixel_values`, ...) used on the first step only; or `input_ids`, `attention_mask` and a
            `past_key_values` cache pre-filled with the first positions (a
            `grounding.decoding.prefix_cache.SharedPrompt`), continued from there.
        mix (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`):
            `mix(scores, branch_scores) -> scores`, both (B, V): `highlight_mix` or `contrastive_mix`
            (`grounding.decoding.mixing`).
    """

    def __init__(self, model, branch: dict[str, torch.Tensor],
                 mix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        missing = [key for key in ("input_ids", "attention_mask") if key not in branch]
        if missing:
            held = ", ".join(sorted(branch)) or "nothing"
            raise ValueError(f"the branch needs {', '.join(missing)}; it holds {held}")
        if not callable(mix):
            raise ValueError(f"`mix` has to be a callable (scores, branch_scores) -> scores, got {type(mix).__name__}")
        self.model = model
        self.branch = dict(branch)
        self.mix = mix
        self.rope_index = rope_index_function(model)  # None for 1-D RoPE; raises for unsupported M-RoPE models
        self.cache = None
        self.attention_mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # (B, 1), or (4, B, 1) with multimodal rotary positions

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch = self.branch["input_ids"].shape[0]
        if input_ids.shape[0] != batch:
            raise ValueError(f"generate() runs {input_ids.shape[0]} sequences but the branch has {batch}: beam search "
                             "and num_return_sequences > 1 are not supported by guided decoding")
        if self.cache is None:
            self.attention_mask = self.branch["attention_mask"]
            positions = positions_from_mask(self.attention_mask)  # (B, T')
            if self.rope_index is not None:
                positions = multimodal_position_ids(self.rope_index, self.branch, positions)  # (4, B, T')
            prefilled = self.branch.get(CACHE_KWARG)  # a shared prefix (`grounding.decoding.prefix_cache`)
            if prefilled is not None:
                start = prefilled.get_seq_length()
                out = self.model(input_ids=self.branch["input_ids"][:, start:], attention_mask=self.attention_mask,
                                 position_ids=positions[..., start:], use_cache=True, **{CACHE_KWARG: prefilled})
            else:
                out = self.model(**self.branch, position_ids=positions, use_cache=True)
            self.positions = positions[..., -1:]
        else:
            self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(batch, 1)], dim=1)
            self.positions = self.positions + 1
            out = self.model(input_ids=input_ids[:, -1:], attention_mask=self.attention_mask,
                             position_ids=self.positions, use_cache=True, **{CACHE_KWARG: self.cache})
        self.cache = output_cache(out)
        branch_logits = out.logits[:, -1, :].to(scores.dtype)  # (B, V)
        return self.mix(scores, branch_logits[:, : scores.shape[-1]])

    def release(self) -> None:
        self.cache = None
        self.attention_mask = None
        self.branch = {}


class PairedMixLogitsProcessor(LogitsProcessor):
    r"""
    [`LogitsProcessor`] for a batch of 2B rows, [original rows; branch rows] (the "joint" way to run guidance,
    greedy only): row i is mixed with row i + B and both get the result, so both take the same token and stay in
    step. `check_paired_rows` verifies afterwards that they did.

    Args:
        mix (`Callable[[torch.Tensor, torch.Tensor], torch.Tensor]`):
            `mix(scores, branch_scores) -> scores`, both (B, V): `highlight_mix` or `contrastive_mix`
            (`grounding.decoding.mixing`).
    """

    def __init__(self, mix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        if not callable(mix):
            raise ValueError(f"`mix` has to be a callable (scores, branch_scores) -> scores, got {type(mix).__name__}")
        self.mix = mix

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] % 2:
            raise ValueError(f"joint guidance needs 2B rows, got {scores.shape[0]}: beam search and "
                             "num_return_sequences > 1 are not supported")
        original, branch = scores.chunk(2, dim=0)
        mixed = self.mix(original, branch)
        return torch.cat([mixed, mixed], dim=0)


def check_paired_rows(new_tokens: torch.Tensor, batch: int) -> None:
    """Joint branches: row i and row i + B must hold the same new tokens; raise naming the first row that drifted."""
    if new_tokens.shape[0] != 2 * batch:
        raise RuntimeError(f"joint guidance expected {2 * batch} rows back from generate(), got {new_tokens.shape[0]}")
    differs = new_tokens[:batch] != new_tokens[batch:]  # (B, S)
    rows = differs.any(-1).nonzero().flatten().tolist()
    if rows:
        row = rows[0]
        step = int(differs[row].nonzero()[0])
        raise RuntimeError(
            f"joint guidance: row {row} and its branch row {row + batch} first differ at new token {step} "
            f"({len(rows)} of {batch} rows drifted), so the answers would not be guided. Something after the mix "
            "treats the rows differently (sampling, or a row-dependent logits processor); use branches='separate'.")
