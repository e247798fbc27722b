"""Data for evaluating explanations: the ShapeEvidence ground-truth benchmark (DESIGN.md §4).

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

__all__ = [
    "CLASSES",
    "MEAN",
    "MIN_SIZE",
    "PROCEDURAL_KINDS",
    "SPLITS",
    "STD",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "ShapeEvidence",
    "ShapeTensors",
    "available_photos",
    "make_shape_evidence",
    "normalize",
]
