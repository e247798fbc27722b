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
    ORIGINAL_SIZE_KEY,
    IMAGE_EXTENSIONS,
    convert_channels,
    expand_images,
    load_image,
    to_grey,
    to_rgb,
)
from meaningful_perturbation.io.preprocessing import (
    CHANNEL_COUNTS,
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_INPUT_SIDE,
    MAX_RESIZED_PIXELS,
    Geometry,
    Preprocessing,
    OVERLAY_MAX_SIDE,
    bounded_size,
    decode_size,
    overlay_base,
    denormalize,
    map_to_original,
    needed_size,
    preprocess,
    resolve_preprocessing,
    stats_for_channels,
)

__all__ = [
    "CHANNEL_COUNTS",
    "DEFAULT_MAX_PIXELS",
    "ORIGINAL_SIZE_KEY",
    "GREY_MEAN",
    "GREY_STD",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_INPUT_SIDE",
    "MAX_RESIZED_PIXELS",
    "Geometry",
    "Preprocessing",
    "OVERLAY_MAX_SIDE",
    "bounded_size",
    "decode_size",
    "overlay_base",
    "convert_channels",
    "denormalize",
    "expand_images",
    "load_image",
    "map_to_original",
    "needed_size",
    "preprocess",
    "resolve_preprocessing",
    "stats_for_channels",
    "to_grey",
    "to_rgb",
]
