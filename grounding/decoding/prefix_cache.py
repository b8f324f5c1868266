"""Shared prompt prefixes: the KV cache of (system prompt + image tokens) computed once per distinct prefix.

POPE asks six questions about each image. The rows of a batch whose prompts start with the same tokens up to
and including the last image token, with the same image inputs, share that prefix: it runs through the model
once (one forward for all the distinct prefixes of a call, vision tower included), its keys and values are kept
in a small LRU (so a prefix met again in the next batch is not recomputed), and each call builds a transformers
`DynamicCache` holding every row's prefix. `model.generate()` gets the full input_ids and attention mask and
that cache; as with any pre-filled cache, generate() runs only the tokens after the cache (transformers 5.x
slices input_ids by the cache length) with positions from the attention-mask cumsum, so every token sits at the
same position and attends to the same keys as in the unshared run.

Row layout: ``[pad .. pad | prefix | pad .. pad | suffix]``: prefixes left-padded to the call's longest prefix
(cache rows zero there), suffixes left-padded to the longest suffix, attention mask 0 on every pad. A prefix
is keyed by its token ids and its row's image inputs (the processed pixels, so VCD's noised copy of an image is
another prefix), never by batch position.

Supported: models with 1-D rotary positions and a plain per-layer key/value cache (LLaVA, LLaVA-NeXT, ...) whose
processor returns input_ids, attention_mask, pixel_values and optionally image_sizes. `PrefixCache.unsupported`
says why any other case is refused; `generate_new_tokens` then runs the plain, unshared generate().
"""

from __future__ import annotations

import hashlib
import inspect
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..compat import CACHE_KWARG, output_cache

__all__ = ["PrefixCache", "SharedPrompt", "generate_new_tokens"]

_IMAGE_KEYS = ("pixel_values", "image_sizes")
_TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class SharedPrompt:
    """What `model.generate()` needs to continue every row from its shared prefix."""

    input_ids: torch.Tensor  # (B, P + S): [pad | prefix | pad | suffix]
    attention_mask: torch.Tensor  # (B, P + S), 0 on every pad
    past_key_values: DynamicCache  # per layer (B, heads, P, d): each row's prefix, left-padded
    prefix_length: int  # P, the cache length
    distinct: int  # distinct prefixes among the rows
    computed: int  # of which this call computed (the others came from the LRU)

    def generate_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                CACHE_KWARG: self.past_key_values}


@dataclass
class _Row:
    key: str
    prefix: torch.Tensor  # (P_r,) token ids
    suffix: torch.Tensor  # (S_r,) token ids, at least one


def _image_token_id(model) -> int | None:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _digest(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return repr((tuple(tensor.shape), str(tensor.dtype))).encode() + flat.view(torch.uint8).numpy().tobytes()


def _image_digest(inputs: dict, row: int) -> bytes:
    """The row's image inputs as bytes; LLaVA-NeXT's all-zero padding tiles (batch-dependent) left out."""
    parts = []
    pixels = inputs["pixel_values"][row]
    if pixels.ndim == 4:  # (tiles, C, H, W), padded to the batch's most tiles
        real = pixels.flatten(1).ne(0).any(-1)  # (tiles,)
        count = int(real.nonzero().max()) + 1 if bool(real.any()) else 0
        pixels = pixels[:count]
    parts.append(_digest(pixels))
    if "image_sizes" in inputs:
        parts.append(_digest(inputs["image_sizes"][row]))
    return b"".join(parts)


class PrefixCache:
    """An LRU of prefix keys/values (at most `max_prefixes`) and the assembly of per-row caches for generate()."""

    def __init__(self, max_prefixes: int = 8):
        if max_prefixes < 1:
            raise ValueError(f"max_prefixes must be >= 1, got {max_prefixes}")
        self.max_prefixes = max_prefixes
        self._store: OrderedDict[str, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()  # per layer (1, h, P, d)
        self.hits = 0  # rows whose prefix was already known (in the LRU or earlier in the same call)
        self.misses = 0  # prefixes computed

    def clear(self) -> None:
        self._store.clear()

    # ------------------------------------------------------------------ checks
    def unsupported(self, model, inputs: dict) -> str | None:
        """None when these inputs can share prefixes on this model, else the reason they cannot."""
        extra = set(inputs) - set(_TEXT_KEYS) - set(_IMAGE_KEYS)
        if extra:
            return f"the processor returned {sorted(extra)}, which prefix sharing does not split"
        if "pixel_values" not in inputs or "attention_mask" not in inputs:
            return "no pixel_values or attention_mask in the inputs"
        if inputs["pixel_values"].shape[0] != inputs["input_ids"].shape[0]:
            return "pixel_values are not one entry per row"
        inner = getattr(model, "model", None)
        if getattr(inner, "get_rope_index", None) is not None or getattr(model, "get_rope_index", None) is not None:
            return f"{type(model).__name__} uses multimodal rotary positions (get_rope_index)"
        if not all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers):
            return "the model's cache has sliding-window or other non-plain layers"
        image_token = _image_token_id(model)
        if image_token is None:
            return "the model config names no image token id"
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            real = ids[mask.bool()]
            where = (real == image_token).nonzero()
            if len(where) == 0:
                return "a row holds no image token"
            if int(where.max()) + 1 >= len(real):
                return "a row ends with its image tokens (nothing after the prefix)"
        return None

    # ------------------------------------------------------------------ the cache
    def _rows(self, model, inputs: dict) -> list[_Row]:
        image_token = _image_token_id(model)
        rows = []
        for r, (ids, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"])):
            real = ids[mask.bool()]  # (T_r,)
            split = int((real == image_token).nonzero().max()) + 1
            prefix, suffix = real[:split], real[split:]
            key = hashlib.sha1(_digest(prefix) + _image_digest(inputs, r)).hexdigest()
            rows.append(_Row(key, prefix, suffix))
        return rows

    @torch.no_grad()
    def _compute(self, model, inputs: dict, wanted: dict[str, int], rows: list[_Row]) -> None:
        """One forward over the distinct prefixes not stored yet (left-padded); store each one unpadded."""
        keys = list(wanted)
        reps = [wanted[key] for key in keys]  # a row that holds each prefix
        longest = max(len(rows[r].prefix) for r in reps)
        device = inputs["input_ids"].device
        ids = torch.zeros(len(reps), longest, dtype=inputs["input_ids"].dtype, device=device)
        mask = torch.zeros(len(reps), longest, dtype=inputs["attention_mask"].dtype, device=device)
        for i, r in enumerate(reps):
            n = len(rows[r].prefix)
            ids[i, longest - n :] = rows[r].prefix
            mask[i, longest - n :] = 1
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (G, P), as generate() builds them
        index = torch.tensor(reps, device=device)
        images = {k: inputs[k].index_select(0, index.to(inputs[k].device)) for k in _IMAGE_KEYS if k in inputs}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            images["logits_to_keep"] = 1  # the prefix's logits are never used
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{CACHE_KWARG: DynamicCache(config=model.config)}, **images)
        for i, (key, r) in enumerate(zip(keys, reps)):
            n = len(rows[r].prefix)
            self._store[key] = [(layer.keys[i : i + 1, :, longest - n :].clone(),
                                 layer.values[i : i + 1, :, longest - n :].clone())
                                for layer in output_cache(out).layers]  # each (1, h, P_r, d)
        self.misses += len(keys)

    def prepare(self, model, inputs: dict) -> SharedPrompt:
        """The shared layout and cache for `inputs` (what `encode_chat` / the processor returned)."""
        reason = self.unsupported(model, inputs)
        if reason is not None:
            raise ValueError(f"these inputs cannot share prefixes: {reason}")
        rows = self._rows(model, inputs)
        wanted: dict[str, int] = {}
        for r, row in enumerate(rows):
            if row.key in self._store:
                self._store.move_to_end(row.key)
            else:
                wanted.setdefault(row.key, r)
        self.hits += len(rows) - len(wanted)
        if wanted:
            self._compute(model, inputs, wanted, rows)
        used = {row.key: self._store[row.key] for row in rows}
        prefix_length = max(len(row.prefix) for row in rows)
        suffix_length = max(len(row.suffix) for row in rows)
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        batch, device = len(rows), input_ids.device
        pad = model.generation_config.pad_token_id
        pad = int(pad[0] if isinstance(pad, (list, tuple)) else pad) if pad is not None else 0
        ids = torch.full((batch, prefix_length + suffix_length), pad, dtype=input_ids.dtype, device=device)
        mask = torch.zeros(batch, prefix_length + suffix_length, dtype=attention_mask.dtype, device=device)
        for r, row in enumerate(rows):
            p, s = len(row.prefix), len(row.suffix)
            ids[r, prefix_length - p : prefix_length] = row.prefix
            ids[r, ids.shape[1] - s :] = row.suffix
            mask[r, prefix_length - p : prefix_length] = 1
            mask[r, ids.shape[1] - s :] = 1
        layers = []
        first = next(iter(used.values()))
        for layer, (k0, v0) in enumerate(first):
            keys = k0.new_zeros(batch, k0.shape[1], prefix_length, k0.shape[3])  # (B, h, P, d)
            values = v0.new_zeros(batch, v0.shape[1], prefix_length, v0.shape[3])
            for r, row in enumerate(rows):
                k, v = used[row.key][layer]
                keys[r, :, prefix_length - k.shape[2] :] = k[0]
                values[r, :, prefix_length - v.shape[2] :] = v[0]
            layers.append((keys, values))
        while len(self._store) > self.max_prefixes:  # this call's prefixes are the most recent: older ones go first
            self._store.popitem(last=False)
        cache = DynamicCache(layers, config=model.config)
        return SharedPrompt(ids, mask, cache, prefix_length, distinct=len(used), computed=len(wanted))


def generate_new_tokens(model, inputs: dict, prefix_cache: PrefixCache | None = None,
                        **generate_kwargs) -> torch.Tensor:
    """(B, new) tokens of `model.generate(**inputs, **generate_kwargs)`, through `prefix_cache` when it can share
    these inputs' prefixes (same answers), else the plain call."""
    if prefix_cache is not None and prefix_cache.unsupported(model, inputs) is None:
        shared = prefix_cache.prepare(model, inputs)
        output = model.generate(**shared.generate_inputs(), **generate_kwargs)
        return output[:, shared.input_ids.shape[1] :]
    output = model.generate(**inputs, **generate_kwargs)
    return output[:, inputs["input_ids"].shape[1] :]
