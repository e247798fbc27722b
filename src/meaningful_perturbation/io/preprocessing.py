"""The preprocessing recipe, image -> model input, and saliency -> original image.

:class:`Preprocessing` is the resolved recipe (resize, crop, normalisation, class names);
:func:`resolve_preprocessing` shows its precedence: explicit override > the model's own
config > ImageNet defaults. :func:`preprocess` applies it and returns a :class:`Geometry`,
which :func:`map_to_original` uses to put a saliency map computed on the model input back in
place on the original image. :func:`denormalize` undoes the normalisation for figures.

Example:
    >>> from PIL import Image
    >>> image = Image.new("RGB", (300, 200), (200, 30, 30))
    >>> prep = Preprocessing(input_size=64, resize=64)
    >>> x, geometry = preprocess(image, prep)
    >>> tuple(x.shape), geometry.original_size, geometry.crop_box
    ((3, 64, 64), (200, 300), (0, 16, 64, 64))
    >>> tuple(map_to_original(torch.ones(64, 64), geometry).shape)
    (200, 300)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.io.images import ORIGINAL_SIZE_KEY, convert_channels

__all__ = [
    "CHANNEL_COUNTS",
    "GREY_MEAN",
    "GREY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_INPUT_SIDE",
    "MAX_RESIZED_PIXELS",
    "Geometry",
    "Preprocessing",
    "bounded_size",
    "check_stats",
    "denormalize",
    "map_to_original",
    "needed_size",
    "preprocess",
    "resolve_preprocessing",
    "stats_for_channels",
]

#: ImageNet channel statistics used by torchvision/timm ImageNet models.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Channel counts an image file can be decoded to: 1 (grey, Pillow mode ``"L"``) or 3 (RGB).
CHANNEL_COUNTS: tuple[int, ...] = (1, 3)

# ITU-R BT.601-2 luma weights, the ones Pillow's ``convert("L")`` uses (L = 0.299 R + 0.587 G
# + 0.114 B): a grey input is the luma of the colour image.
_LUMA = (0.299, 0.587, 0.114)


def _luma(values: tuple[float, ...]) -> float:
    return float(sum(w * v for w, v in zip(_LUMA, values)))


#: Default statistics of a one-channel (grey) input: the ImageNet statistics carried over to
#: the luma image. The mean is exact by linearity (mean of L = the weighted channel means,
#: 0.4590); the std is the same weighted sum of the channel stds (0.2256), the std of L when
#: the channels are perfectly correlated and an upper bound otherwise (natural-image RGB
#: channels correlate strongly, so it is close). Used when a 1-channel model states none.
GREY_MEAN: tuple[float] = (_luma(IMAGENET_MEAN),)
GREY_STD: tuple[float] = (_luma(IMAGENET_STD),)

#: Largest model input side (``input_size``) and ``resize`` accepted, checked before anything
#: is allocated. Common image models take 224-518 px, detection / segmentation backbones up to
#: ~1536 px; 4096 leaves room above those while one (3, 4096, 4096) float32 input is 201 MB and
#: the optimisation holds ~10 such tensors (image, perturbed image, blurred copy, mask,
#: gradients) — already ~2 GB. 100,000 would need ~120 GB per tensor.
MAX_INPUT_SIDE = 4096

#: Largest image (height x width) :func:`preprocess` resizes to before cropping: 2**26 = 67.1 M
#: pixels (201 MB as 8-bit RGB, 268 MB as the float32 canvas of :func:`map_to_original`). Only a
#: very elongated image (e.g. 1 x 100,000 px covering a 224 x 224 crop) or a huge ``resize``
#: reaches it; refused before the resize is allocated.
MAX_RESIZED_PIXELS = 1 << 26

# ImageNet evaluation recipe (torchvision reference scripts): resize the short side to 256,
# centre-crop 224, i.e. crop_pct = 224 / 256 = 0.875.
_IMAGENET_INPUT = 224
_IMAGENET_RESIZE = 256


# ----------------------------------------------------------------------------------------------
# Preprocessing recipe
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input, plus the class names of the model's outputs.

    Steps (:func:`preprocess`): convert the image to ``channels`` channels (3: RGB; 1: grey,
    the ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B`` as Pillow computes it); with
    ``crop="center"``, scale the image (aspect ratio kept) so its short side is ``resize`` pixels — or, with ``resize=None``, the smallest scale that
    covers ``input_size`` — then cut the centred ``input_size`` window; with ``crop="none"``,
    stretch the whole image to ``input_size`` (aspect ratio not kept, nothing cut off). Then
    scale to [0, 1] and normalise ``(x - mean) / std`` per channel.

    Attributes:
        input_size: model input side ``s`` (square) or ``(height, width)``. Default 224.
        resize: short side after resizing, before the centre crop; ``None`` = just cover
            ``input_size``. Default 256 (ImageNet evaluation, crop_pct 0.875). Ignored when
            ``crop="none"``. A value smaller than ``input_size`` is raised to cover it.
        crop: ``"center"`` or ``"none"``.
        mean: mean subtracted after scaling to [0, 1]: one value per channel, or one value
            used for every channel. Default (``None``): ImageNet for 3 channels,
            :data:`GREY_MEAN` for 1. Always stored as one value per channel.
        std: standard deviation divided by, given like ``mean``. Default ImageNet /
            :data:`GREY_STD`.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (Pillow resampling, antialiased).
        class_names: name of each output index, or ``None`` if unknown.
        channels: channels of the model input, 1 (grey) or 3 (RGB). Default 3.
        assumed: ``True`` when the model did not state its preprocessing and this recipe
            was assumed (e.g. a Hugging Face folder without ``preprocessor_config.json``);
            recorded in every summary so a result can be traced to a guess. Default ``False``.

    Example:
        >>> Preprocessing(input_size=(32, 48), resize=None, crop="center").size
        (32, 48)
        >>> Preprocessing(channels=1, mean=0.5, std=(0.25,)).mean
        (0.5,)

    Raises:
        ConfigError: an invalid value; ``channels`` not 1 or 3; ``mean``/``std`` with a count
            other than 1 or ``channels``.
    """

    input_size: int | tuple[int, int] = _IMAGENET_INPUT
    resize: int | None = _IMAGENET_RESIZE
    crop: Literal["center", "none"] = "center"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    class_names: tuple[str, ...] | None = None
    channels: int = 3
    assumed: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        set_(self, "input_size", _check_input_size(self.input_size))
        if self.resize is not None:
            if (
                isinstance(self.resize, bool) or not _is_int(self.resize)
                or not 1 <= int(self.resize) <= MAX_INPUT_SIDE
            ):
                raise ConfigError(
                    f"Preprocessing.resize: expected a positive int up to {MAX_INPUT_SIDE} "
                    f"(MAX_INPUT_SIDE) or None, got {self.resize!r}"
                )
            set_(self, "resize", int(self.resize))
        if self.crop not in ("center", "none"):
            raise ConfigError(f"Preprocessing.crop: expected 'center' or 'none', got {self.crop!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(
                "Preprocessing.interpolation: expected 'bilinear' or 'bicubic', "
                f"got {self.interpolation!r}"
            )
        channels = self.channels
        if isinstance(channels, bool) or not _is_int(channels) or int(channels) not in CHANNEL_COUNTS:
            raise ConfigError(
                f"Preprocessing.channels: expected 1 (grey) or 3 (RGB), got {channels!r}"
            )
        channels = int(channels)
        set_(self, "channels", channels)
        grey = channels == 1
        mean = (GREY_MEAN if grey else IMAGENET_MEAN) if self.mean is None else self.mean
        std = (GREY_STD if grey else IMAGENET_STD) if self.std is None else self.std
        set_(self, "mean", check_stats("Preprocessing.mean", mean, channels, positive=False))
        set_(self, "std", check_stats("Preprocessing.std", std, channels, positive=True))
        if not isinstance(self.assumed, bool):
            raise ConfigError(f"Preprocessing.assumed: expected True or False, got {self.assumed!r}")
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ConfigError(
                    "Preprocessing.class_names: expected a sequence of str or None, "
                    f"got {type(names).__name__}"
                )
            set_(self, "class_names", tuple(names))

    @property
    def size(self) -> tuple[int, int]:
        """The model input size as ``(height, width)``."""
        if isinstance(self.input_size, int):
            return (self.input_size, self.input_size)
        return self.input_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Preprocessing":
        """Build from a dict of field values over the ImageNet defaults.

        Unlike :func:`resolve_preprocessing`, a key that is present is taken as it is, so
        ``{"resize": None}`` means "no resize". An ``input_size`` without ``resize`` keeps
        the default crop ratio (256/224).

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        return _merge(Preprocessing(), dict(values), where="Preprocessing.from_dict")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) or (
        isinstance(value, float) and value.is_integer()
    )


def _check_input_size(value: Any, label: str = "Preprocessing.input_size") -> int | tuple[int, int]:
    def side(v: Any) -> bool:
        return _is_int(v) and not isinstance(v, bool) and 1 <= int(v) <= MAX_INPUT_SIDE

    if _is_int(value) and not isinstance(value, bool):
        if side(value):
            return int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if all(side(v) for v in value):
            h, w = (int(v) for v in value)
            return h if h == w else (h, w)
    raise ConfigError(
        f"{label}: expected a positive int or (height, width), each side from 1 to "
        f"{MAX_INPUT_SIDE} (MAX_INPUT_SIDE, checked before allocating), got {value!r}"
    )


def check_stats(name: str, value: Any, channels: int, *, positive: bool) -> tuple[float, ...]:
    """Validate a mean or std for ``channels`` channels: one value per channel, or one value
    used for every channel. Returns one float per channel.

    Args:
        name: how to call the value in messages (``"Preprocessing.mean"``, ``"--mean"``).
        value: a number or a sequence of numbers.
        channels: channels of the model input.
        positive: require values > 0 (a std) instead of just finite ones.

    Raises:
        ConfigError: not numbers, a non-finite (or, with ``positive``, non-positive) value,
            or a count other than 1 or ``channels``; the message names ``name``, the
            expected and the received count.

    Example:
        >>> check_stats("--std", [0.5], 3, positive=True)
        (0.5, 0.5, 0.5)
    """
    items = value if isinstance(value, (tuple, list)) else (value,)
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        numbers = None
    if isinstance(value, (str, bytes)) or any(isinstance(v, bool) for v in items):
        numbers = None
    what = "positive numbers" if positive else "finite numbers"
    if channels == 1:
        expected = "1 value (the model input has 1 channel)"
    else:
        expected = f"1 value (used for every channel) or {channels} (one per channel)"
    if numbers is None:
        raise ConfigError(f"{name}: expected {expected}, {what}; got {value!r}")
    if len(numbers) not in (1, channels):
        shown = " ".join(f"{v:g}" for v in numbers)
        raise ConfigError(f"{name}: expected {expected}, got {len(numbers)} ({shown})")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        raise ConfigError(f"{name}: expected {what}, got {value!r}")
    return numbers * channels if len(numbers) == 1 else numbers


def stats_for_channels(values: Any, channels: int) -> tuple[float, ...]:
    """Carry a model's mean or std over to another channel count.

    Same count: unchanged. One value: repeated. Three values to one channel: the luma-weighted
    sum ``0.299 v_R + 0.587 v_G + 0.114 v_B`` (exact for a mean, by linearity; for a std, the
    std of the luma of perfectly correlated channels — see :data:`GREY_STD`), or the common
    value when all three are equal.

    Example:
        >>> stats_for_channels((0.5, 0.5, 0.5), 1)
        (0.5,)
        >>> [round(v, 4) for v in stats_for_channels((0.485, 0.456, 0.406), 1)]
        [0.459]
    """
    vals = tuple(float(v) for v in values)
    if len(vals) == channels:
        return vals
    if len(vals) == 1:
        return vals * channels
    if channels == 1 and len(vals) == 3:
        return (vals[0],) if vals[0] == vals[1] == vals[2] else (_luma(vals),)
    raise ConfigError(f"cannot carry {len(vals)} channel statistics {vals!r} over to {channels} channel(s)")


_FIELDS = tuple(f.name for f in dataclasses.fields(Preprocessing))


def resolve_preprocessing(
    model_default: Preprocessing | None = None,
    *,
    names: dict[str, str] | None = None,
    **overrides: Any,
) -> Preprocessing:
    """Resolve the preprocessing: explicit override > model's own config > ImageNet defaults.

    ``model_default`` is what the model loader found (torchvision weights transforms, timm
    pretrained config, Hugging Face image-processor config, ...); ``None`` means ImageNet
    defaults (resize 256, centre crop 224, ImageNet mean/std, bilinear). Keyword overrides
    name :class:`Preprocessing` fields; a value of ``None`` means "not given", so CLI options
    can be passed straight through. To switch resizing off pass ``resize=0``.

    When ``input_size`` is overridden but ``resize`` is not, ``resize`` keeps the base
    crop ratio (e.g. 256/224) so a smaller input does not cut a tiny window out of a large
    resize. When ``channels`` is overridden but ``mean``/``std`` are not, the model's
    statistics are carried over with :func:`stats_for_channels`. ``mean``/``std`` may be one
    value (used for every channel) or one per channel.

    Args:
        model_default: the model's own preprocessing, or ``None``.
        names: how to call each override in error messages, e.g. ``{"mean": "--mean"}``
            (default ``resolve_preprocessing: mean``).
        **overrides: ``input_size``, ``resize``, ``crop``, ``mean``, ``std``,
            ``interpolation``, ``class_names``, ``channels``.

    Returns:
        The resolved, validated :class:`Preprocessing`.

    Raises:
        ConfigError: an unknown field name or an invalid value.

    Example:
        >>> resolve_preprocessing(None, input_size=112).resize
        128
        >>> resolve_preprocessing(Preprocessing(input_size=64, resize=64), crop=None).resize
        64
        >>> resolve_preprocessing(Preprocessing(channels=1), mean=[0.5]).mean
        (0.5,)
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    base = model_default if model_default is not None else Preprocessing()
    return _merge(base, given, where="resolve_preprocessing", names=names)


def _merge(
    base: Preprocessing, given: dict[str, Any], *, where: str, names: dict[str, str] | None = None
) -> Preprocessing:
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(_FIELDS)}"
        )
    if _is_int(given.get("resize")) and int(given["resize"]) == 0:
        given["resize"] = None
    for key in ("input_size", "resize"):
        if key in given and (names or {}).get(key):
            label = (names or {})[key]
            if key == "input_size":
                _check_input_size(given[key], label)
            elif given[key] is not None and _is_int(given[key]) and int(given[key]) > MAX_INPUT_SIDE:
                raise ConfigError(
                    f"{label}: expected at most {MAX_INPUT_SIDE} (MAX_INPUT_SIDE, checked before "
                    f"allocating), got {given[key]!r}"
                )
    if "input_size" in given and "resize" not in given and base.resize is not None:
        new_size = _check_input_size(given["input_size"])
        ratio = base.resize / min(base.size)
        short = min(new_size) if isinstance(new_size, tuple) else new_size
        given["resize"] = max(short, int(math.floor(short * ratio + 1e-9)))
    channels = given.get("channels", base.channels)
    if isinstance(channels, bool) or not _is_int(channels) or int(channels) not in CHANNEL_COUNTS:
        label = (names or {}).get("channels", f"{where}: channels")
        raise ConfigError(f"{label}: expected 1 (grey) or 3 (RGB), got {channels!r}")
    channels = int(channels)
    for key, positive in (("mean", False), ("std", True)):
        if given.get(key) is not None:
            label = (names or {}).get(key, f"{where}: {key}")
            given[key] = check_stats(label, given[key], channels, positive=positive)
        elif channels != base.channels:
            given[key] = stats_for_channels(getattr(base, key), channels)
    return dataclasses.replace(base, **given)


# ----------------------------------------------------------------------------------------------
# Image -> tensor, and saliency -> original image
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from in the original image (all sizes ``(height, width)``).

    Attributes:
        original_size: the image as loaded (after EXIF rotation).
        resized_size: the image after resizing, before cropping.
        crop_box: ``(top, left, height, width)`` of the model input in resized coordinates.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _plan(original: tuple[int, int], prep: Preprocessing) -> Geometry:
    H0, W0 = original
    h, w = prep.size
    if prep.crop == "none":
        return Geometry(original, (h, w), (0, 0, h, w))
    scale = max(h / H0, w / W0)  # smallest scale that covers the crop window
    if prep.resize is not None and prep.resize / min(H0, W0) >= scale:
        # The short side becomes ``resize`` and the long side ``int(resize * long / short)``,
        # truncated: torchvision's ``Resize(int)`` (used by weights.transforms() and by timm's
        # create_transform), so the crop window sees the same pixels as the library's own
        # transform (rounding instead shifted the crop by a pixel: up to 0.77 after normalising).
        short, long = min(H0, W0), max(H0, W0)
        new_long = int(prep.resize * long / short)
        rh, rw = (prep.resize, new_long) if H0 <= W0 else (new_long, prep.resize)
        rh, rw = max(h, rh), max(w, rw)
    else:
        rh = max(h, int(round(H0 * scale)))
        rw = max(w, int(round(W0 * scale)))
    top = int(round((rh - h) / 2.0))
    left = int(round((rw - w) / 2.0))
    return Geometry(original, (rh, rw), (top, left, h, w))


def preprocess(image: Image.Image, prep: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Resize, crop and normalise one image for the model.

    Args:
        image: a PIL image (any mode; converted to RGB like :func:`load_image` does, or to
            grey — the ITU-R 601-2 luma of that RGB image — when ``prep.channels == 1``).
        prep: the recipe, usually ``loaded_model.preprocessing`` or the result of
            :func:`resolve_preprocessing`.

    Returns:
        ``(x, geometry)``: ``x`` is a ``(C, H, W)`` float32 tensor with ``C = prep.channels``,
        ``x[c] = (pixel / 255 - mean[c]) / std[c]``, with ``(H, W) = prep.size``;
        ``geometry`` records the original size, the resize and the crop box for
        :func:`map_to_original`. For an image that :func:`load_image` decoded reduced
        (``min_size``), the original size is the full file's (``image.info[ORIGINAL_SIZE_KEY]``).

    Raises:
        InputError: ``image`` is not a PIL image or is empty; the resize before the crop
            would exceed :data:`MAX_RESIZED_PIXELS` (checked before allocating it); a float
            image with NaN or infinite values.

    Example:
        >>> from PIL import Image
        >>> x, g = preprocess(Image.new("RGB", (40, 20)), Preprocessing(input_size=10, resize=10))
        >>> tuple(x.shape), g.resized_size, g.crop_box
        ((3, 10, 10), (10, 20), (0, 5, 10, 10))
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"preprocess: expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise InputError(f"preprocess: image is empty ({image.width}x{image.height})")
    original = (image.height, image.width)
    record = image.info.get(ORIGINAL_SIZE_KEY)  # decoded reduced by load_image(min_size=...)
    if isinstance(record, tuple) and len(record) == 2 and tuple(record[1]) == original:
        original = (int(record[0][0]), int(record[0][1]))
    geometry = _plan(original, prep)
    rh, rw = geometry.resized_size
    if rh * rw > MAX_RESIZED_PIXELS:  # before the resize (or a mode conversion) allocates it
        raise InputError(
            f"preprocess: a {image.width}x{image.height} image (width x height) would be resized "
            f"to {rw}x{rh} = {rw * rh} pixels before the {prep.size[1]}x{prep.size[0]} crop, "
            f"over MAX_RESIZED_PIXELS={MAX_RESIZED_PIXELS}; the image is too elongated for this "
            f"input size, or resize={prep.resize} is too large"
        )
    rgb = convert_channels(image, prep.channels)  # "RGB" or "L"
    if (rh, rw) != (rgb.height, rgb.width):
        rgb = rgb.resize((rw, rh), resample=_RESAMPLE[prep.interpolation])
    top, left, h, w = geometry.crop_box
    if (top, left, h, w) != (0, 0, rh, rw):
        rgb = rgb.crop((left, top, left + w, top + h))
    array = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, 3) or (H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    c = prep.channels
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(c, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(c, 1, 1)
    return (x - mean) / std, geometry


def needed_size(original_size: tuple[int, int], prep: Preprocessing) -> tuple[int, int]:
    """The ``(height, width)`` :func:`preprocess` resizes an image of ``original_size`` to
    before cropping: what :func:`~meaningful_perturbation.io.load_image` must decode at least
    (its ``min_size``) for the model input to be computed exactly as from the full image.

    Example:
        >>> needed_size((3000, 4000), Preprocessing())
        (256, 341)
    """
    return _plan((int(original_size[0]), int(original_size[1])), prep).resized_size


def bounded_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` ``(height, width)`` scaled down (aspect ratio kept, rounded, at least 1 px) so
    its longer side is at most ``max_side``; unchanged when it already fits.

    Used for figures of very large images (see :func:`map_to_original` ``size=``).

    Example:
        >>> bounded_size((12000, 6000), 2048), bounded_size((300, 200), 2048)
        ((2048, 1024), (300, 200))
    """
    h, w = (int(v) for v in size)
    if max(h, w) <= max_side:
        return (h, w)
    scale = max_side / max(h, w)
    return (max(1, int(round(h * scale))), max(1, int(round(w * scale))))


#: Longest side of the overlay figures (``mperturb explain``'s ``<stem>_overlay.png``, the
#: runner's ``items/<id>_overlay.png``): larger images are shown scaled down (aspect ratio kept)
#: so the overlay's memory (~100 bytes per pixel while blending) stays bounded; 2048 px is more
#: than a screen shows. Saliency files are unaffected (model input size).
OVERLAY_MAX_SIDE = 2048


def decode_size(original_size: tuple[int, int], prep: Preprocessing) -> tuple[int, int]:
    """What the model input and a bounded overlay need of an image of ``original_size``
    ``(height, width)``: the ``min_size`` to decode it at (see :func:`~.images.load_image`)."""
    (rh, rw), (oh, ow) = needed_size(original_size, prep), bounded_size(original_size, OVERLAY_MAX_SIDE)
    return (max(rh, oh), max(rw, ow))


def overlay_base(image: Image.Image) -> Image.Image:
    """``image`` scaled down to at most :data:`OVERLAY_MAX_SIDE` per side (unchanged when it fits)."""
    h, w = bounded_size((image.height, image.width), OVERLAY_MAX_SIDE)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), resample=Image.Resampling.BILINEAR, reducing_gap=3.0)


def map_to_original(
    saliency: torch.Tensor, geometry: Geometry, *, fill: float = 0.0,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Put a saliency map computed on the model input back onto the original image.

    The map is placed at ``geometry.crop_box`` in a canvas of the resized image, the area the
    crop cut off is set to ``fill`` (0 by default: no evidence was looked for there; pass
    ``float('nan')`` to mark it as unknown), and the canvas is resampled (bilinear,
    antialiased when shrinking) to the original size, so aspect ratio and position match
    the original image pixel for pixel.

    Args:
        saliency: ``(H, W)`` or ``(K, H, W)`` map with ``(H, W)`` equal to the crop size.
        geometry: returned by :func:`preprocess` for the same image.
        fill: value outside the crop.
        size: output ``(height, width)`` instead of ``geometry.original_size`` — the original
            image seen at another resolution (e.g. :func:`bounded_size` of it, so the figure
            of a 12000 x 12000 image does not need a 576 MB float map). Default: the original
            size.

    Returns:
        Tensor ``(H0, W0)`` or ``(K, H0, W0)`` with ``(H0, W0) = size or geometry.original_size``,
        float32 (float64 if ``saliency`` is float64), on the device of ``saliency``.

    Raises:
        InputError: wrong number of dimensions or a size that does not match the crop.

    Example:
        >>> g = Geometry(original_size=(200, 300), resized_size=(64, 96), crop_box=(0, 16, 64, 64))
        >>> tuple(map_to_original(torch.rand(2, 64, 64), g).shape)
        (2, 200, 300)
    """
    if not isinstance(saliency, torch.Tensor):
        raise InputError(f"map_to_original: expected a torch.Tensor, got {type(saliency).__name__}")
    if saliency.dim() not in (2, 3):
        raise InputError(
            f"map_to_original: expected saliency of shape (H, W) or (K, H, W), "
            f"got {saliency.dim()} dimensions {tuple(saliency.shape)}"
        )
    top, left, h, w = geometry.crop_box
    if tuple(saliency.shape[-2:]) != (h, w):
        raise InputError(
            f"map_to_original: saliency is {tuple(saliency.shape[-2:])} (H, W) but the crop "
            f"in this geometry is {(h, w)}; pass the geometry of the same image and input size"
        )
    squeeze = saliency.dim() == 2
    maps = saliency.detach().unsqueeze(0) if squeeze else saliency.detach()
    maps = maps.to(torch.float64 if maps.dtype == torch.float64 else torch.float32)
    rh, rw = geometry.resized_size
    H0, W0 = geometry.original_size if size is None else (int(size[0]), int(size[1]))
    if H0 < 1 or W0 < 1:
        raise InputError(f"map_to_original: size must be positive (height, width), got {size!r}")
    canvas = maps.new_zeros((1, maps.shape[0], rh, rw))
    canvas[0, :, top : top + h, left : left + w] = torch.nan_to_num(maps, nan=0.0)
    if (rh, rw) != (H0, W0):
        canvas = F.interpolate(
            canvas, size=(H0, W0), mode="bilinear", align_corners=False, antialias=True
        )
    out = canvas[0]
    if fill != 0.0 or math.isnan(fill):
        inside = maps.new_zeros((1, 1, rh, rw))
        inside[..., top : top + h, left : left + w] = 1.0
        if (rh, rw) != (H0, W0):
            inside = F.interpolate(inside, size=(H0, W0), mode="bilinear", align_corners=False)
        out = torch.where(inside[0] >= 0.5, out, torch.full_like(out, fill))
    return out[0] if squeeze else out


def denormalize(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Undo the normalisation for display: ``clamp(x * std + mean, 0, 1)``.

    Args:
        x: ``(C, H, W)`` or ``(N, C, H, W)`` normalised image(s), ``C = prep.channels``.
        prep: the recipe that produced ``x``.

    Returns:
        Tensor of the same shape with values in [0, 1] (one channel stays one channel; repeat
        it three times to show it as an RGB image).

    Raises:
        InputError: ``x`` has no channel axis of size ``prep.channels`` where expected.

    Example:
        >>> prep = Preprocessing()
        >>> x, _ = preprocess(Image.new("RGB", (8, 8), (255, 0, 0)), prep)
        >>> [round(v, 4) for v in denormalize(x, prep)[:, 0, 0].tolist()]
        [1.0, 0.0, 0.0]
    """
    c = len(prep.mean)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != c:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"denormalize: expected a ({c}, H, W) or (N, {c}, H, W) tensor, got {shape}")
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(c, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(c, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)
