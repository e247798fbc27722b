"""The project's one exception family.

Every error raised for bad user input derives from :class:`MeaningfulPerturbationError`
and says which argument was wrong, what was expected, what arrived and (where possible)
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MeaningfulPerturbationError",
    "InputError",
    "ConfigError",
    "ModelError",
    "MeaningfulPerturbationWarning",
    "HeadWarning",
    "AreaWarning",
]


class MeaningfulPerturbationError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(MeaningfulPerturbationError, ValueError):
    """An argument (tensor, target, file, ...) is not what the function accepts."""


class ConfigError(MeaningfulPerturbationError, ValueError):
    """A method name or a configuration override is unknown or out of range."""


class ModelError(MeaningfulPerturbationError, RuntimeError):
    """The model misbehaves: wrong output shape, NaN output, no gradient path to its input."""


class MeaningfulPerturbationWarning(UserWarning):
    """Base class of the warnings this package emits: the result is computed, but a choice made
    for the user may be wrong, or the result misses what was asked."""


class HeadWarning(MeaningfulPerturbationWarning):
    """``head="auto"`` chose how to read the model's output on values that also fit another
    reading (see :mod:`meaningful_perturbation.core.head`)."""


class AreaWarning(MeaningfulPerturbationWarning):
    """A mask's achieved area is far from the area it was optimised for (``extremal``)."""
