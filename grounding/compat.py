"""Every transformers 4.x / 5.x difference the library touches, in one place.

* `register_attention_function`: `AttentionInterface.register` (4.48+ and 5.x).
* `sdpa_attention_forward`: transformers' own sdpa attention function.
* `image_features_as_list`: `get_image_features` returns a list of per-image tensors in `pooler_output`
  (5.x) or one (B, N, D) tensor (4.x).
* `set_num_additional_image_tokens` / `get_num_additional_image_tokens`: the processor attribute that says
  how many tokens `<image>` expands to beyond the patch count.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import torch

__all__ = [
    "TRANSFORMERS_MAJOR",
    "register_attention_function",
    "sdpa_attention_forward",
    "image_features_as_list",
    "image_features_like",
]

TRANSFORMERS_MAJOR = int(version("transformers").split(".")[0])  # from the metadata: no transformers import


def register_attention_function(name: str, function) -> None:
    """Add a new named attention function (does not replace any existing one)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)


def sdpa_attention_forward(*args, **kwargs):
    """transformers' own sdpa attention function (imported on first call: transformers is slow to import)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as forward

    return forward(*args, **kwargs)


def image_features_as_list(output: Any) -> list[torch.Tensor]:
    """Normalise `get_image_features`' return value to a list of per-image (N_i, D) tensors."""
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        if features.ndim == 2:  # already flattened over images: cannot split without sizes
            return [features]
        return list(features.unbind(0))
    return list(features)


def image_features_like(original: Any, features: list[torch.Tensor]) -> Any:
    """Return `features` in the same container type `get_image_features` produced (inverse of the above)."""
    container = getattr(original, "pooler_output", None)
    if container is None:  # 4.x style: a plain tensor or a tuple/list
        if isinstance(original, torch.Tensor):
            return torch.stack(features) if original.ndim == 3 else torch.cat(features)
        return type(original)(features)
    if isinstance(container, torch.Tensor):
        stacked = torch.stack(features) if container.ndim == 3 else torch.cat(features)
        original.pooler_output = stacked
    else:
        original.pooler_output = type(container)(features) if isinstance(container, (list, tuple)) else features
    return original
