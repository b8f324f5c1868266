"""Checks that run before the first model loads: every weight folder or hub id a run will need can be had, and
the device exists. Each failure is one line naming the option (`--model`, `--tower`, `--device`, a method
option) and what is wrong, so no run fails after minutes of loading or after a first method has finished.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_device", "check_weights", "check_run", "loading", "load_tower"]


def check_device(device: str | None, option: str = "--device") -> None:
    """`device` names a device this machine has (cpu, cuda, cuda:N with N < the GPU count, mps); None passes."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {device!r}: not a device (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{option} {device}: this machine has no CUDA device (use --device cpu)")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{option} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif parsed.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{option} {device}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise ValueError(f"{option} {device}: unsupported device type {parsed.type!r} (cpu, cuda, cuda:N, mps)")


def check_weights(name: str, option: str, what: str) -> None:
    """The weights (a folder, a LoRA chain down to its base, or a hub id) can be had; else one line naming `option`."""
    from grounding.weights import WeightsNotFoundError, lora_chain, resolve_weights

    try:
        base, _ = lora_chain(name)
        resolve_weights(base, what)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(f"{option}: {error}") from None


def check_run(config, device: str | None) -> None:
    """Everything `eval pope | chair` will load, for every method, before the first model loads."""
    from grounding.methods import needs_tower

    check_device(config.device, "--device")
    check_weights(config.model, "--model", "VLM")
    towered = [m for m in config.methods if needs_tower(m)]
    if towered:
        check_weights(config.tower, "--tower", f"grounding tower (for {', '.join(towered)})")
    for method, options in config.method_options.items():
        for key, value in options.items():
            if key == "adapter" and isinstance(value, str) and not Path(value).expanduser().exists():
                raise FileNotFoundError(f"--method-options {method}.{key}: no such folder: {value}")


class loading:
    """`with loading("--model", name):` a checkpoint that exists but cannot be loaded (damaged or truncated weights,
    a config that does not match them) is one line naming the option and the folder, not a library traceback."""

    def __init__(self, option: str, name: str):
        self.option, self.name = option, name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        from grounding.weights import WeightsNotFoundError

        if error is None or not isinstance(error, Exception) or isinstance(error, WeightsNotFoundError):
            return False
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise WeightsNotFoundError(f"{self.option} {self.name}: the checkpoint could not be loaded "
                                   f"({type(error).__name__}: {reason}); is the folder complete and undamaged?"
                                   ) from error


def load_tower(args):
    """The grounding tower the command-line flags name (--model, --device, --dtype, --resize-mode, --short-side);
    a checkpoint that cannot be loaded is one line naming --model."""
    from grounding.tower.backbone import PreprocessConfig, RegisterViT, TowerConfig

    config = TowerConfig(model=args.model, device=args.device, dtype=args.dtype,
                         preprocess=PreprocessConfig(mode=args.resize_mode, short_side=args.short_side))
    with loading("--model", args.model):
        return RegisterViT.from_config(config)
