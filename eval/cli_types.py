"""Value types of the command-line options, shared by the flags and by `--config` YAML files.

A nonsense value (`--max-new-tokens 0`, `--limit -1`, `--short-side 0`) is refused by argparse with the option
named. `config_value` passes a YAML value through the same type and choices as its flag, so a YAML file cannot
hold what the command line refuses (`parser: offical`, `dtype: bf16`, `batch_size: 8.5`, `do_sample: "yes"`).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["positive_int", "nonnegative_int", "positive_float", "unit_float", "finite_float", "config_value"]


def _integer(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def unit_float(text: str) -> float:
    """A number in 0..1 (a share, a probability, a threshold on a normalised map)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text!r}")
    return value


def config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """`value` from a config file, checked and converted as the flag `action` would; ValueError names `where`."""
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {action.dest} ({flag}) must be true or false, got {value!r}")
        return value
    if value is None:
        if action.default is None and not action.required:
            return None
        raise ValueError(f"{where}: {action.dest} ({flag}) needs a value")
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise ValueError(f"{where}: {action.dest} ({flag}) takes one value like the flag, got {value!r}")
    converted = value
    if action.type is not None:
        if isinstance(value, float) and action.type in (int, positive_int, nonnegative_int) and not value.is_integer():
            raise ValueError(f"{where}: {action.dest} ({flag}) expected an integer, got {value!r}")
        try:
            converted = action.type(str(int(value) if isinstance(value, float) and value.is_integer() and
                                        action.type is not float and action.type is not positive_float else value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            raise ValueError(f"{where}: {action.dest} ({flag}) {error}") from None
    elif not isinstance(value, str):
        converted = str(value)
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {action.dest} ({flag}) must be one of {', '.join(map(str, action.choices))}, "
                         f"got {value!r}")
    return converted
