"""Grounding methods by name: the registry the eval runner and the CLI look up, and the built-in methods."""

from .registry import METHODS, Baseline, build_method, check_method_options, needs_tower, register_method, \
    sampling_settings

__all__ = ["METHODS", "register_method", "build_method", "Baseline", "needs_tower", "sampling_settings",
           "check_method_options"]
