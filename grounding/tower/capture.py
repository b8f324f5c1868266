"""Capturing q, k and v of every attention layer, without `output_attentions` and without copying a forward.

Two mechanisms, both reversible:

* `attention_capture(model)`: a function registered in transformers' `AttentionInterface` under
  ``"grounding_qkv"`` records q, k, v - already (B, H, T, d) - and then calls transformers' own sdpa, so the
  fast kernel is kept and module names never matter. The model is switched with `set_attn_implementation`
  and switched back on exit. q and k are what the attention function sees, i.e. after any rotary embedding.
* `projection_capture(model)`: forward hooks on the q/k/v projection Linear layers (5.x ``q_proj``,
  4.x ``attention.attention.query``, timm's fused ``qkv``). q and k are the projection outputs, i.e. before
  any rotary embedding (what the Object-DINO release uses for DINOv3). Hooks are removed on exit.

Both fill a `QKVCollector`, whose `stacked()` returns (L, B, H, T, d) tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..compat import register_attention_function, sdpa_attention_forward

__all__ = ["QKVCollector", "attention_capture", "projection_capture", "CAPTURE_ATTENTION_NAME"]

CAPTURE_ATTENTION_NAME = "grounding_qkv"
_ACTIVE: contextvars.ContextVar[QKVCollector | None] = contextvars.ContextVar("grounding_qkv", default=None)


@dataclass
class QKVCollector:
    """Per-layer q, k, v in call order; each entry (B, H, T, d).

    With `num_layers` given, each layer's q, k, v are copied, as they arrive (still in cache), into one
    preallocated (L, B, H, T, d) tensor per facet, and `stacked()` returns those tensors without a final copy."""

    num_heads: int
    num_layers: int | None = None
    q: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    _buffers: tuple[torch.Tensor, ...] | None = field(default=None, repr=False)

    def add(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        q, k, v = q.detach(), k.detach(), v.detach()
        index = len(self.q)
        if self.num_layers is not None and index < self.num_layers:
            if index == 0:
                self._buffers = tuple(x.new_empty((self.num_layers, *x.shape)) for x in (q, k, v))  # (L, B, H, T, d)
            buffers = self._buffers
            same = buffers is not None and all(b.shape[1:] == x.shape and b.dtype == x.dtype
                                               for b, x in zip(buffers, (q, k, v)))
            if same:
                for buffer, x in zip(buffers, (q, k, v)):
                    buffer[index].copy_(x)
                q, k, v = (buffer[index] for buffer in buffers)
            else:  # layers of different shapes: keep the tensors, stack at the end
                self._buffers = None
        self.q.append(q)
        self.k.append(k)
        self.v.append(v)

    def stacked(self, num_layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not (len(self.q) == len(self.k) == len(self.v) == num_layers):
            raise RuntimeError(
                f"captured q/k/v for {len(self.q)}/{len(self.k)}/{len(self.v)} layers, expected {num_layers}: "
                "the model's attention did not go through the capture (unsupported architecture?)"
            )
        if self._buffers is not None and self.num_layers == num_layers:
            return self._buffers  # each (L, B, H, T, d)
        return torch.stack(self.q), torch.stack(self.k), torch.stack(self.v)  # each (L, B, H, T, d)


def _capturing_sdpa(module, query, key, value, attention_mask, **kwargs):
    collector = _ACTIVE.get()
    if collector is not None:
        collector.add(query, key, value)  # (B, H, T, d) each
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


_REGISTERED = False


def _register() -> None:
    """Register the capturing sdpa with transformers once, on first use (never at import)."""
    global _REGISTERED
    if not _REGISTERED:
        register_attention_function(CAPTURE_ATTENTION_NAME, _capturing_sdpa)
        _REGISTERED = True


@contextlib.contextmanager
def attention_capture(model: nn.Module, collector: QKVCollector) -> Iterator[QKVCollector]:
    """Route `model`'s attention through the capturing sdpa for the duration of the block."""
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_ATTENTION_NAME)
    token = _ACTIVE.set(collector)
    try:
        yield collector
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation(previous)


_SEPARATE = {"q": ("q_proj", "query"), "k": ("k_proj", "key"), "v": ("v_proj", "value")}
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _layer_index(name: str) -> int:
    match = _LAYER_INDEX.search(name)
    if match is None:
        raise RuntimeError(f"cannot tell the layer index of module {name!r}")
    return int(match.group(1))


def find_projections(model: nn.Module) -> dict[str, list[nn.Linear]]:
    """Locate q/k/v projections by name, ordered by layer index; fused ``qkv`` comes back under key "qkv"."""
    found: dict[str, list[tuple[int, nn.Linear]]] = {"q": [], "k": [], "v": [], "qkv": []}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "qkv":
            found["qkv"].append((_layer_index(name), module))
        for facet, leaves in _SEPARATE.items():
            if leaf in leaves and "attention" in name or leaf in leaves and ".attn." in name:
                found[facet].append((_layer_index(name), module))
    return {facet: [m for _, m in sorted(items, key=lambda item: item[0])] for facet, items in found.items()}


@contextlib.contextmanager
def projection_capture(model: nn.Module, collector: QKVCollector) -> Iterator[QKVCollector]:
    """Forward hooks on the q/k/v projections; removed on exit even if the forward raises."""
    projections = find_projections(model)
    heads = collector.num_heads
    buffers: dict[str, list[torch.Tensor]] = {"q": [], "k": [], "v": []}
    handles = []

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # (B, T, H*d) -> (B, H, T, d)
        batch, tokens, width = x.shape
        return x.view(batch, tokens, heads, width // heads).transpose(1, 2)

    def separate_hook(facet: str):
        def hook(_module, _inputs, output):
            buffers[facet].append(split_heads(output.detach()))

        return hook

    def fused_hook(_module, _inputs, output):
        batch, tokens, width = output.shape
        qkv = output.detach().view(batch, tokens, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
        for facet, tensor in zip("qkv", qkv):  # each (B, H, T, d)
            buffers[facet].append(tensor)

    if projections["qkv"]:
        handles = [m.register_forward_hook(fused_hook) for m in projections["qkv"]]
    elif all(projections[f] for f in "qkv"):
        handles = [m.register_forward_hook(separate_hook(f)) for f in "qkv" for m in projections[f]]
    else:
        counts = {f: len(v) for f, v in projections.items()}
        raise RuntimeError(f"no q/k/v projections found by name (counts {counts}); use attention capture instead")
    try:
        yield collector
    finally:
        for handle in handles:
            handle.remove()
        for q, k, v in zip(buffers["q"], buffers["k"], buffers["v"]):
            collector.add(q, k, v)
