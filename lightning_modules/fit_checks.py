"""`grounding fit` settings checked before anything loads: one line naming the key and its allowed range.

LightningCLI checks each value's type against the signatures (an int where an int is declared), not its range:
`lora_r: -4` or a NaN learning rate would reach peft / the optimizer and end in a traceback, possibly after the
model had loaded. `check_fit_config(config)` walks the parsed config: every number anywhere must be finite, and
the keys in `RULES` must lie in their range.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FitConfigError", "check_fit_config", "RULES"]


class FitConfigError(ValueError):
    """A fit setting outside its range."""


# dotted key (under the subcommand): (low, high, integer?) - None bounds are open
RULES: dict[str, tuple[float | None, float | None, bool]] = {
    "model.lora_r": (1, 4096, True),
    "model.lora_alpha": (1e-9, None, False),
    "model.lora_dropout": (0, 0.999, False),
    "model.learning_rate": (1e-12, 10, False),
    "model.projector_learning_rate": (1e-12, 10, False),
    "model.weight_decay": (0, 10, False),
    "model.warmup_steps": (0, None, True),
    "model.image_size": (1, 16384, True),
    "model.regions.num_regions": (0, 4096, True),
    "model.regions.tower_short_side": (1, 16384, True),
    "model.regions.min_area": (0, None, True),
    "model.regions.projector_hidden": (1, None, True),
    "data.val_fraction": (0, 0.999, False),
    "data.batch_size": (1, None, True),
    "data.num_workers": (0, 1024, True),
    "data.questions_per_image": (1, None, True),
    "data.max_records": (1, None, True),
    "data.captions_per_image": (1, None, True),
    "data.pad_to_multiple_of": (1, None, True),
    "data.map_workers": (1, 1024, True),
    "trainer.max_steps": (-1, None, True),
    "trainer.max_epochs": (-1, None, True),
    "trainer.accumulate_grad_batches": (1, None, True),
    "trainer.log_every_n_steps": (1, None, True),
    "trainer.gradient_clip_val": (0, None, False),
}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, (list, tuple)):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def _range(low, high, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if high is None:
        return f"{kind} >= {low:g}"
    return f"{kind} in {low:g}..{high:g}"


def check_fit_config(config: Any) -> None:
    """FitConfigError naming the first non-finite number or out-of-range key of a parsed fit config."""
    data = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    flat = _flatten(data)
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FitConfigError(f"{key} is {value}: a setting must be a finite number")
    for key, (low, high, integer) in RULES.items():
        value = flat.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (integer and not float(value).is_integer()) or value < low or (high is not None and value > high):
            raise FitConfigError(f"{key} must be {_range(low, high, integer)}, got {value!r}")
