"""Every transformers 4.x / 5.x difference the library touches, in one place.

* `register_attention_function`: `AttentionInterface.register` (4.48+ and 5.x).
* `sdpa_attention_forward`: transformers' own sdpa attention function.
* `image_features_as_list`: `get_image_features` returns a list of per-image tensors in `pooler_output`
  (5.x) or one (B, N, D) tensor (4.x).
* `set_num_additional_image_tokens` / `get_num_additional_image_tokens`: the processor attribute that says
  how many tokens `<image>` expands to beyond the patch count.
* `merged_generation_config`: the `GenerationConfig` that `generate()` really runs with (its own merge, 5.x).
* `CACHE_KWARG` / `output_cache`: the KV cache goes into forward() and generate() as `cache` (5.24+; the old
  `past_key_values` keyword is deprecated there) or `past_key_values` (earlier), and comes back by the same name.
* `activation_checkpointing_enable` / `is_activation_checkpointing`: 5.24 renamed transformers'
  `gradient_checkpointing_enable` / `is_gradient_checkpointing` (the old names warn).
* `rope_index_function` / `multimodal_position_ids`: Qwen2-VL-style multimodal rotary positions (M-RoPE) for
  a forward that runs outside `generate()`, built the way `generate()` builds them (5.x).
"""

from __future__ import annotations

import contextlib
import warnings
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import GenerationConfig

__all__ = [
    "TRANSFORMERS_MAJOR",
    "register_attention_function",
    "sdpa_attention_forward",
    "image_features_as_list",
    "image_features_like",
    "merged_generation_config",
    "rope_index_function",
    "multimodal_position_ids",
    "MROPE_MODEL_TYPES",
    "CACHE_KWARG",
    "output_cache",
    "activation_checkpointing_enable",
    "is_activation_checkpointing",
    "peft_quietly",
]

TRANSFORMERS_MAJOR = int(version("transformers").split(".")[0])  # from the metadata: no transformers import
_TRANSFORMERS_MINOR = int(version("transformers").split(".")[1])
# transformers 5.24 renamed the KV-cache keyword of forward() / generate() and the model outputs' field
CACHE_KWARG = "cache" if (TRANSFORMERS_MAJOR, _TRANSFORMERS_MINOR) >= (5, 24) else "past_key_values"


def output_cache(output: Any):
    """The KV cache a forward() returned (`output.cache`, or `output.past_key_values` before 5.24)."""
    return getattr(output, CACHE_KWARG)


def activation_checkpointing_enable(model, **checkpoint_kwargs) -> None:
    """Recompute layer activations in backward (`use_reentrant` etc. go to torch.utils.checkpoint)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)


def is_activation_checkpointing(model) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


@contextlib.contextmanager
def peft_quietly():
    """Within: peft's own read of the deprecated `is_gradient_checkpointing` (peft 0.19 on transformers 5.24) does
    not print its FutureWarning. Scoped to the block (warnings.catch_warnings) and to that one message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


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


def merged_generation_config(model, generate_kwargs: dict) -> GenerationConfig:
    """The config `model.generate(**generate_kwargs)` runs with: a passed `generation_config` (or an empty one), its
    unset fields filled from `model.generation_config`, then from transformers' global defaults (top_k = 50, ...),
    then overridden by the kwargs. Uses generate()'s own merge so the two cannot disagree."""
    kwargs = dict(generate_kwargs)
    passed = kwargs.pop("generation_config", None)
    merged, _ = model._prepare_generation_config(passed, **kwargs)
    return merged


MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def rope_index_function(model):
    """`get_rope_index` of a model with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL), None for 1-D RoPE models.

    Other models with a `get_rope_index` (Qwen3-VL, GLM-4V, ...) lay their positions out differently: refused."""
    inner = getattr(model, "model", None)
    function = getattr(inner, "get_rope_index", None) or getattr(model, "get_rope_index", None)
    if function is None:
        return None
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MROPE_MODEL_TYPES:
        raise NotImplementedError(
            f"{type(model).__name__} (model_type={model_type!r}) uses multimodal rotary positions (get_rope_index); "
            f"a separate guidance branch builds them only for {', '.join(MROPE_MODEL_TYPES)}. Use "
            "GuidanceConfig(branches='joint') with greedy decoding, where generate() builds the positions itself.")
    return function


def multimodal_position_ids(get_rope_index, inputs: dict, text_positions: torch.Tensor) -> torch.Tensor:
    """(4, B, T) position ids [text; temporal; height; width], as Qwen2-VL's `generate()` builds them for its prefill.

    inputs: what the processor returned (input_ids, attention_mask, mm_token_type_ids, image_grid_thw, ...);
    text_positions: (B, T) 1-D positions from the attention mask. Decoding steps add 1 to the last column."""
    if inputs.get("mm_token_type_ids") is None:
        raise ValueError("the processor returned no mm_token_type_ids: multimodal rotary positions need them "
                         "(call the model's own processor with return_mm_token_type_ids=True)")
    others = {k: v for k, v in inputs.items() if k != "input_ids"}
    vision, _ = get_rope_index(inputs["input_ids"], **others)  # (3, B, T)
    return torch.cat([text_positions[None], vision.to(text_positions.device, text_positions.dtype)], dim=0)
