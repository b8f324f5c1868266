"""The training-free methods: "highlight", "masked-contrast" (Object-DINO object maps) and "vcd" (diffusion
noise), each an `ObjectGuidance` in its mode (`grounding.decoding`).

highlight and masked-contrast take a mask source (`mask_source`: object-dino, random, oracle;
grounding/objects/mask_source.py), also registered as the twins `highlight@random`, `highlight@oracle`,
`masked-contrast@random` and `masked-contrast@oracle` (the oracle needs `oracle_instances`, not a tower)."""

from __future__ import annotations

from ..decoding.guidance import GuidanceConfig, ObjectGuidance
from .registry import fixed_options, register_method

__all__: list[str] = []  # nothing to import: the methods are built by name (`build_method`)

TWIN_SOURCES = ("random", "oracle")  # `METHOD@SOURCE`: the method with mask_source fixed to SOURCE


def _guidance(name: str, **fixed):
    """The factory of method `name`: an `ObjectGuidance` with the `fixed` options (its mode, a twin's source)."""
    options = fixed_options(GuidanceConfig, name, **fixed)

    def build(tower, processor, **given):
        options(**given)  # refuses another mode / mask source with the method's name
        return ObjectGuidance(tower, processor, **{**given, **fixed})

    return build, options


for _mode in ("highlight", "masked-contrast", "vcd"):
    _build, _options = _guidance(_mode, mode=_mode)
    register_method(_mode, needs_tower=_mode != "vcd", options=_options)(_build)

for _mode in ("highlight", "masked-contrast"):
    for _source in TWIN_SOURCES:
        _name = f"{_mode}@{_source}"
        _build, _options = _guidance(_name, mode=_mode, mask_source=_source)
        register_method(_name, needs_tower=_source != "oracle", options=_options)(_build)
