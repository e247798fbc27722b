"""Input/output at the edges: image files, preprocessing, and mapping saliency back.

Example:
    >>> from meaningful_perturbation.io import Preprocessing, preprocess
    >>> from PIL import Image
    >>> x, geometry = preprocess(Image.new("RGB", (32, 24)), Preprocessing(input_size=16, resize=16))
    >>> tuple(x.shape)
    (3, 16, 16)
"""

from meaningful_perturbation.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    expand_images,
    load_image,
    to_rgb,
)
from meaningful_perturbation.io.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Geometry,
    Preprocessing,
    denormalize,
    map_to_original,
    preprocess,
    resolve_preprocessing,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Geometry",
    "Preprocessing",
    "denormalize",
    "expand_images",
    "load_image",
    "map_to_original",
    "preprocess",
    "resolve_preprocessing",
    "to_rgb",
]
