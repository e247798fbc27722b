"""Ground-truth families: the data sets the benchmark and the demo models are built on.

One table maps a family name to its generator, classes and how its labels move under the
dihedral augmentations of :mod:`meaningful_perturbation.demo.train`:

* ``"shapes"``: :func:`~meaningful_perturbation.data.make_shape_evidence` (a flat-coloured
  class shape; every class is invariant to flips and 90° rotations);
* ``"textures"``: :func:`~meaningful_perturbation.data.make_texture_evidence` (an oriented
  grating; a mirror or a 90° rotation changes the orientation, hence the label).

Example:
    >>> get_family("textures").classes
    ('0deg', '45deg', '90deg', '135deg')
    >>> get_family("shapes").flip is None
    True
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..errors import ConfigError
from .shapes import CLASSES, make_shape_evidence
from .textures import FLIP_PERMUTATION, ROT90_PERMUTATION, TEXTURE_CLASSES, make_texture_evidence

__all__ = ["FAMILIES", "Family", "get_family"]


class Family(NamedTuple):
    """One ground-truth family.

    Attributes:
        name: ``"shapes"`` or ``"textures"``.
        title: the data set's name in tables (``"ShapeEvidence"``, ``"TextureEvidence"``).
        make: ``make(n, size=, split=, seed=)`` → a data set with ``images``, ``labels``,
            ``masks``, ``distractors``, ``counterfactuals``, ``backgrounds``, ``classes``.
        classes: class names in label order.
        flip: label permutation under a horizontal mirror, ``None`` if labels are invariant.
        rot90: label permutation under a 90° rotation, ``None`` if labels are invariant.
    """

    name: str
    title: str
    make: Callable[..., Any]
    classes: tuple[str, ...]
    flip: tuple[int, ...] | None
    rot90: tuple[int, ...] | None


#: Every family, by name; ``"shapes"`` is the default everywhere.
FAMILIES: dict[str, Family] = {
    "shapes": Family("shapes", "ShapeEvidence", make_shape_evidence, CLASSES, None, None),
    "textures": Family(
        "textures", "TextureEvidence", make_texture_evidence, TEXTURE_CLASSES, FLIP_PERMUTATION, ROT90_PERMUTATION
    ),
}


def get_family(name: Any, argument: str = "family") -> Family:
    """The family called ``name``.

    Raises:
        ConfigError: ``name`` is not a key of :data:`FAMILIES`; the message names
            ``argument``, the valid names and what arrived.
    """
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(f"{argument}: expected one of {', '.join(FAMILIES)}, got {name!r}")
    return FAMILIES[name]
