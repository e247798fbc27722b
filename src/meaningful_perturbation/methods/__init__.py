"""Method presets: each assembles the core parts (perturbation, mask, objective, loop)."""

from .registry import MethodSpec, get_method, methods, resolve_config

# Importing a preset module registers its presets (registration order = listing order is
# fixed by registry._ORDER, not by this list).
from . import paper, seed, extremal, channels, baselines  # noqa: E402,F401  (after the registry they use)
from . import sweep  # noqa: E402,F401  (extremal-sweep, after extremal)
from ..masker import method as _masker_method  # noqa: E402,F401  (registers "masker")

__all__ = ["MethodSpec", "get_method", "methods", "resolve_config"]
