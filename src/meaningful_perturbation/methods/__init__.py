"""Method presets: each assembles the core parts (perturbation, mask, objective, loop)."""

from .registry import MethodSpec, get_method, methods, resolve_config

__all__ = ["MethodSpec", "get_method", "methods", "resolve_config"]
