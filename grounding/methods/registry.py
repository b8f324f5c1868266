"""Registry of grounding methods by name: what the eval runner and the CLI look up. A leaf: it imports no method.

A method is built as `factory(tower, processor, **options)` and answers
`method.generate(model, images, prompts, **generate_kwargs) -> list[str]`. Register new ones with
`@register_method("name")`; the runner needs no change. The built-in methods (`baseline.py`, `guided.py`,
`region.py`) register themselves when `grounding.methods` imports them, as timm's `@register_model` does.

Every built-in method samples from the full softmax unless top_k / top_p are given (`grounding.decoding.sampling`), and
sets `method.generation_settings` to the decoding settings its last generate() call used;
`sampling_settings(generate_kwargs, model)` gives the same record before a call.

Variants of one method with some options fixed (the mask-source twins `highlight@random`, `region-evidence@oracle`,
...) register `fixed_options(Config, name, mask_source="random")`: the config with those fields fixed, so the checks
and the recorded options see the variant's values.

`check_method_options(name, options)` validates a method's options before any model loads: unknown names,
wrong types and bad values are a ValueError that names the option and what it takes. A method registers what
it takes with `register_method(..., options=...)`: a config dataclass (its fields, typed) or a set of names.

Methods with a `prefix_cache` attribute (baseline, highlight, masked-contrast, vcd) share the KV cache of each
image's prompt prefix across the rows that hold it when it is set to a `grounding.decoding.prefix_cache.PrefixCache`
(the eval runner does so when several questions share an image); answers are the same either way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable

__all__ = ["METHODS", "register_method", "build_method", "needs_tower", "check_method_options", "method_options",
           "fixed_options"]

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


def fixed_options(config: type, name: str, **fixed) -> type:
    """A subclass of the config dataclass `config` in which each field of `fixed` defaults to its value and takes no
    other: what a variant of a method registers as its options (`highlight@random`: `mask_source="random"`). So
    `check_method_options` refuses another value ("... must be one of 'random'") and what the fixed value needs
    (`oracle` without `oracle_instances`) before any model loads, and `effective_options` records the variant's
    value."""
    if not (dataclasses.is_dataclass(config) and isinstance(config, type)):
        raise TypeError(f"fixed_options takes a config dataclass, got {config!r}")
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(fixed) - names)
    if unknown:
        raise ValueError(f"{name}: {config.__name__} has no field(s) {', '.join(map(repr, unknown))}")
    base_post_init = getattr(config, "__post_init__", None)

    def __post_init__(self):
        for key, value in fixed.items():
            if getattr(self, key) != value:
                raise ValueError(f"{name} runs {key} {value!r}, not {getattr(self, key)!r}")
        if base_post_init is not None:
            base_post_init(self)

    fields = [(key, typing.Literal[value], dataclasses.field(default=value)) for key, value in fixed.items()]
    variant = dataclasses.make_dataclass(config.__name__, fields, bases=(config,),
                                         namespace={"__post_init__": __post_init__})
    variant.__module__, variant.__qualname__ = config.__module__, f"{config.__qualname__}[{name}]"
    return variant


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


def method_options(name: str) -> type | frozenset | Callable | None:
    """What `name` registered as its options (a config dataclass, a set of names, a checker), or None."""
    return _OPTIONS.get(name)


def needs_tower(name: str) -> bool:
    return name in _NEEDS_TOWER


def build_method(name: str, tower=None, processor=None, **options):
    if name not in METHODS:
        raise KeyError(f"unknown grounding method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](tower, processor, **options)
