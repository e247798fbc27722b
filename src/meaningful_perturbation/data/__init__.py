"""Data for evaluating explanations: the ShapeEvidence and TextureEvidence ground-truth
benchmarks (DESIGN.md §4; :mod:`.families` names them).

Only numpy is imported here; scikit-image / scikit-learn (the bundled background photos)
are imported lazily on the first draw.
"""

from __future__ import annotations

from .backgrounds import PROCEDURAL_KINDS, TEST_PHOTOS, TRAIN_PHOTOS, available_photos
from .shapes import (
    CLASSES,
    MEAN,
    MIN_SIZE,
    SPLITS,
    STD,
    ShapeEvidence,
    ShapeTensors,
    make_shape_evidence,
    normalize,
)
from .textures import TEXTURE_CLASSES, TextureEvidence, make_texture_evidence
from .families import FAMILIES, Family, get_family

__all__ = [
    "CLASSES",
    "FAMILIES",
    "Family",
    "MEAN",
    "MIN_SIZE",
    "PROCEDURAL_KINDS",
    "SPLITS",
    "STD",
    "TEXTURE_CLASSES",
    "TextureEvidence",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "ShapeEvidence",
    "ShapeTensors",
    "available_photos",
    "get_family",
    "make_shape_evidence",
    "make_texture_evidence",
    "normalize",
]
