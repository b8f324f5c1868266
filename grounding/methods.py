"""Registry of grounding methods by name: what the eval runner and the CLI look up.

A method is built as `factory(tower, processor, **options)` and answers
`method.generate(model, images, prompts, **generate_kwargs) -> list[str]`. Register new ones with
`@register_method("name")`; the runner needs no change.

Every built-in method samples from the full softmax unless top_k / top_p are given (`grounding.sampling`), and
sets `method.generation_settings` to the decoding settings its last generate() call used;
`sampling_settings(generate_kwargs, model)` gives the same record before a call.

`check_method_options(name, options)` validates a method's options before any model loads: unknown names,
wrong types and bad values are a ValueError that names the option and what it takes. A method registers what
it takes with `register_method(..., options=...)`: a config dataclass (its fields, typed) or a set of names.

Methods with a `prefix_cache` attribute (baseline, highlight, masked-contrast, vcd) share the KV cache of each
image's prompt prefix across the rows that hold it when it is set to a `grounding.prefix_cache.PrefixCache`
(the eval runner does so when several questions share an image); answers are the same either way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence

import torch

from .guidance import GuidanceConfig, ObjectGuidance, encode_chat
from .images import as_pil
from .prefix_cache import PrefixCache, generate_new_tokens
from .sampling import sampling_settings, with_reference_sampling

__all__ = ["METHODS", "register_method", "build_method", "Baseline", "needs_tower", "sampling_settings",
           "check_method_options"]

METHODS: dict[str, Callable] = {}
_NEEDS_TOWER: set[str] = set()
_OPTIONS: dict[str, type | frozenset | Callable] = {}  # what each method takes (absent: not checked)


def register_method(name: str, needs_tower: bool = False, options: type | set | Callable | None = None):
    """options: a config dataclass whose fields are the options, a set of option names, or a callable that
    raises ValueError for bad options."""

    def decorator(factory):
        METHODS[name] = factory
        if needs_tower:
            _NEEDS_TOWER.add(name)
        if options is not None:
            _OPTIONS[name] = frozenset(options) if isinstance(options, (set, frozenset)) else options
        return factory

    return decorator


def _check_value(value, hint, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            names = ", ".join(f.name for f in dataclasses.fields(hint))
            raise ValueError(f"{where} takes an object of options ({names}), got {value!r}")
        _check_dataclass(hint, value, where)
    elif origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check_value(value, option, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    elif hint is type(None):
        if value is not None:
            raise ValueError(f"{where} must be null, got {value!r}")
    elif origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        for item in value:
            _check_value(item, args[0] if args else typing.Any, where)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")


def _check_dataclass(cls, options: dict, where: str, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; it takes {', '.join(names)}")
    for key, value in options.items():
        _check_value(value, hints[key], f"{where}.{key}")
    try:
        cls(**{k: (v if not dataclasses.is_dataclass(hints[k]) else hints[k](**v)) for k, v in options.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def check_method_options(name: str, options: dict) -> None:
    """ValueError naming the method and option when `options` are not what method `name` takes."""
    if name not in METHODS:
        raise ValueError(f"unknown grounding method {name!r}; choose from {', '.join(sorted(METHODS))}")
    if not isinstance(options, dict):
        raise ValueError(f"options of {name} must be an object of option: value, got {options!r}")
    rule = _OPTIONS.get(name)
    if rule is None:
        return
    if isinstance(rule, frozenset):
        unknown = sorted(set(options) - rule)
        if unknown:
            takes = f"it takes {', '.join(sorted(rule))}" if rule else "it takes none"
            raise ValueError(f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; {takes}")
    elif dataclasses.is_dataclass(rule):
        _check_dataclass(rule, options, name, skip=("mode",))
    else:
        rule(**options)


def needs_tower(name: str) -> bool:
    return name in _NEEDS_TOWER


def build_method(name: str, tower=None, processor=None, **options):
    if name not in METHODS:
        raise KeyError(f"unknown grounding method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](tower, processor, **options)


@register_method("baseline", options=set())
class Baseline:
    """Plain `model.generate` with the same chat prompt building and left padding as the guided methods."""

    def __init__(self, tower=None, processor=None, **_):
        self.processor = processor
        self.generation_settings: dict | None = None  # decoding settings of the last generate() call
        self.prefix_cache: PrefixCache | None = None  # set to share image prefixes across rows (same answers)

    @torch.no_grad()
    def generate(self, model, images: Sequence, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        generate_kwargs = with_reference_sampling(model, generate_kwargs)
        self.generation_settings = sampling_settings(generate_kwargs, model)
        inputs = encode_chat(self.processor, [as_pil(i) for i in images], prompts, model.device, model.dtype)
        new_tokens = generate_new_tokens(model, inputs, self.prefix_cache, **generate_kwargs)
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


@register_method("highlight", needs_tower=True, options=GuidanceConfig)
def _highlight(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="highlight", **options)


@register_method("masked-contrast", needs_tower=True, options=GuidanceConfig)
def _masked_contrast(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="masked-contrast", **options)


@register_method("vcd", options=GuidanceConfig)
def _vcd(tower, processor, **options):
    return ObjectGuidance(tower, processor, mode="vcd", **options)


from . import region_method  # noqa: E402,F401  (registers "region-tokens")
from . import evidence  # noqa: E402,F401  (registers "region-evidence" and its @random / @oracle / @none twins)
