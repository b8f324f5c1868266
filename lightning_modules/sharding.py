"""FSDP for the LoRA'd VLM: which modules become sharded units, for FSDP1 (Lightning's `fsdp`) and FSDP2
(`FSDP2Strategy`, `--trainer.strategy=fsdp2`: Lightning's ModelParallelStrategy, data parallel only).

Units: every decoder layer of the language model and of the vision tower (the classes the model lists in
`_no_split_modules`), then the rest of the model as the root unit. FSDP1 also needs one dtype per unit, so each
trainable leaf module (a LoRA matrix, a projector layer) is a unit of its own (peft's `fsdp_auto_wrap_policy`):
frozen bf16 weights and fp32 LoRA weights never share a flat parameter. FSDP2 keeps each parameter separately and
takes mixed dtypes, so its units are the decoder layers and the root. The grounding tower is not part of the model
(`RegionTokensModule` keeps it outside) and is never sharded.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

__all__ = ["layer_classes", "fsdp_wrap_policy", "apply_fsdp2", "fsdp_units", "FSDP2Strategy"]


def layer_classes(model: nn.Module) -> set[type]:
    """The decoder-layer classes of `model` (language model and vision tower), from `_no_split_modules`."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__} names no decoder-layer classes (_no_split_modules): cannot choose "
                         "FSDP units; give the strategy an auto_wrap_policy")
    return classes


def _trainable_leaf(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return not list(module.children()) and isinstance(weight, nn.Parameter) and weight.requires_grad


def fsdp_wrap_policy(model: nn.Module):
    """FSDP1 auto-wrap policy: decoder layers, and each trainable leaf on its own (peft's policy, our layer set)."""
    from torch.distributed.fsdp.wrap import (ModuleWrapPolicy, _or_policy, lambda_auto_wrap_policy)
    from functools import partial

    layers = ModuleWrapPolicy(layer_classes(model))
    leaves = partial(lambda_auto_wrap_policy, lambda_fn=_trainable_leaf)
    return partial(_or_policy, policies=[leaves, layers])


def fsdp_units(model: nn.Module, policy) -> dict[str, list[str]]:
    """What FSDP1 would wrap with `policy`: {unit module name ("" = root): the parameter names it holds}.

    Mirrors FSDP's bottom-up auto-wrap (a module is wrapped when the policy says so for it, given the parameters
    not already in a unit below it), without process groups or devices: for checks on any machine."""
    units: dict[str, list[str]] = {}

    def visit(prefix: str, module: nn.Module) -> list[str]:
        free = [f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False)]
        for name, child in module.named_children():
            free += visit(f"{prefix}{name}.", child)
        numel = sum(model.get_parameter(n).numel() for n in free)
        if prefix and policy(module=module, recurse=False, nonwrapped_numel=numel):
            units[prefix[:-1]] = free
            return []
        return free

    units[""] = visit("", model)
    return units


def apply_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """FSDP2: `fully_shard` each decoder layer, then the whole model, over `mesh` (data-parallel dimension)."""
    from torch.distributed.fsdp import fully_shard

    classes = tuple(layer_classes(model))
    for module in list(model.modules()):
        if isinstance(module, classes):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP2: every process in one data-parallel group (no tensor
    parallelism), checkpoints in one file (they hold the trainable weights only). The module shards itself in
    `configure_model` (`apply_fsdp2`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
