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
from meaningful_perturbation.io.images import to_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Geometry",
    "Preprocessing",
    "denormalize",
    "map_to_original",
    "preprocess",
    "resolve_preprocessing",
]

#: ImageNet channel statistics used by torchvision/timm ImageNet models.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ImageNet evaluation recipe (torchvision reference scripts): resize the short side to 256,
# centre-crop 224, i.e. crop_pct = 224 / 256 = 0.875.
_IMAGENET_INPUT = 224
_IMAGENET_RESIZE = 256


# ----------------------------------------------------------------------------------------------
# Preprocessing recipe
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes a model input, plus the class names of the model's outputs.

    Steps (:func:`preprocess`): with ``crop="center"``, scale the image (aspect ratio kept) so
    its short side is ``resize`` pixels — or, with ``resize=None``, the smallest scale that
    covers ``input_size`` — then cut the centred ``input_size`` window; with ``crop="none"``,
    stretch the whole image to ``input_size`` (aspect ratio not kept, nothing cut off). Then
    scale to [0, 1] and normalise ``(x - mean) / std`` per channel.

    Attributes:
        input_size: model input side ``s`` (square) or ``(height, width)``. Default 224.
        resize: short side after resizing, before the centre crop; ``None`` = just cover
            ``input_size``. Default 256 (ImageNet evaluation, crop_pct 0.875). Ignored when
            ``crop="none"``. A value smaller than ``input_size`` is raised to cover it.
        crop: ``"center"`` or ``"none"``.
        mean: per-channel mean subtracted after scaling to [0, 1]. Default ImageNet.
        std: per-channel standard deviation divided by. Default ImageNet.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (Pillow resampling, antialiased).
        class_names: name of each output index, or ``None`` if unknown.

    Example:
        >>> Preprocessing(input_size=(32, 48), resize=None, crop="center").size
        (32, 48)
    """

    input_size: int | tuple[int, int] = _IMAGENET_INPUT
    resize: int | None = _IMAGENET_RESIZE
    crop: Literal["center", "none"] = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        set_(self, "input_size", _check_input_size(self.input_size))
        if self.resize is not None:
            if isinstance(self.resize, bool) or not _is_int(self.resize) or int(self.resize) < 1:
                raise ConfigError(
                    f"Preprocessing.resize: expected a positive int or None, got {self.resize!r}"
                )
            set_(self, "resize", int(self.resize))
        if self.crop not in ("center", "none"):
            raise ConfigError(f"Preprocessing.crop: expected 'center' or 'none', got {self.crop!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(
                "Preprocessing.interpolation: expected 'bilinear' or 'bicubic', "
                f"got {self.interpolation!r}"
            )
        set_(self, "mean", _check_triple("mean", self.mean, positive=False))
        set_(self, "std", _check_triple("std", self.std, positive=True))
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


def _check_input_size(value: Any) -> int | tuple[int, int]:
    if _is_int(value) and not isinstance(value, bool):
        if int(value) >= 1:
            return int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if all(_is_int(v) and not isinstance(v, bool) and int(v) >= 1 for v in value):
            h, w = (int(v) for v in value)
            return h if h == w else (h, w)
    raise ConfigError(
        f"Preprocessing.input_size: expected a positive int or (height, width), got {value!r}"
    )


def _check_triple(name: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        triple = ()
    ok = len(triple) == 3 and all(math.isfinite(v) and (v > 0 or not positive) for v in triple)
    if not ok:
        need = "three positive numbers" if positive else "three finite numbers"
        raise ConfigError(f"Preprocessing.{name}: expected {need} (one per RGB channel), got {value!r}")
    return triple  # type: ignore[return-value]


_FIELDS = tuple(f.name for f in dataclasses.fields(Preprocessing))


def resolve_preprocessing(model_default: Preprocessing | None = None, **overrides: Any) -> Preprocessing:
    """Resolve the preprocessing: explicit override > model's own config > ImageNet defaults.

    ``model_default`` is what the model loader found (torchvision weights transforms, timm
    pretrained config, Hugging Face image-processor config, ...); ``None`` means ImageNet
    defaults (resize 256, centre crop 224, ImageNet mean/std, bilinear). Keyword overrides
    name :class:`Preprocessing` fields; a value of ``None`` means "not given", so CLI options
    can be passed straight through. To switch resizing off pass ``resize=0``.

    When ``input_size`` is overridden but ``resize`` is not, ``resize`` keeps the base
    crop ratio (e.g. 256/224) so a smaller input does not cut a tiny window out of a large
    resize.

    Args:
        model_default: the model's own preprocessing, or ``None``.
        **overrides: ``input_size``, ``resize``, ``crop``, ``mean``, ``std``,
            ``interpolation``, ``class_names``.

    Returns:
        The resolved, validated :class:`Preprocessing`.

    Raises:
        ConfigError: an unknown field name or an invalid value.

    Example:
        >>> resolve_preprocessing(None, input_size=112).resize
        128
        >>> resolve_preprocessing(Preprocessing(input_size=64, resize=64), crop=None).resize
        64
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    base = model_default if model_default is not None else Preprocessing()
    return _merge(base, given, where="resolve_preprocessing")


def _merge(base: Preprocessing, given: dict[str, Any], *, where: str) -> Preprocessing:
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(_FIELDS)}"
        )
    if _is_int(given.get("resize")) and int(given["resize"]) == 0:
        given["resize"] = None
    if "input_size" in given and "resize" not in given and base.resize is not None:
        new_size = _check_input_size(given["input_size"])
        ratio = base.resize / min(base.size)
        short = min(new_size) if isinstance(new_size, tuple) else new_size
        given["resize"] = max(short, int(math.floor(short * ratio + 1e-9)))
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
    if prep.resize is not None:
        scale = max(scale, prep.resize / min(H0, W0))
    rh = max(h, int(round(H0 * scale)))
    rw = max(w, int(round(W0 * scale)))
    top = int(round((rh - h) / 2.0))
    left = int(round((rw - w) / 2.0))
    return Geometry(original, (rh, rw), (top, left, h, w))


def preprocess(image: Image.Image, prep: Preprocessing) -> tuple[torch.Tensor, Geometry]:
    """Resize, crop and normalise one image for the model.

    Args:
        image: a PIL image (any mode; converted to RGB like :func:`load_image` does).
        prep: the recipe, usually ``loaded_model.preprocessing`` or the result of
            :func:`resolve_preprocessing`.

    Returns:
        ``(x, geometry)``: ``x`` is a ``(3, H, W)`` float32 tensor,
        ``x[c] = (pixel / 255 - mean[c]) / std[c]``, with ``(H, W) = prep.size``;
        ``geometry`` records the original size, the resize and the crop box for
        :func:`map_to_original`.

    Raises:
        InputError: ``image`` is not a PIL image or is empty.

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
    rgb = image if image.mode == "RGB" else to_rgb(image)
    geometry = _plan((rgb.height, rgb.width), prep)
    rh, rw = geometry.resized_size
    if (rh, rw) != (rgb.height, rgb.width):
        rgb = rgb.resize((rw, rh), resample=_RESAMPLE[prep.interpolation])
    top, left, h, w = geometry.crop_box
    if (top, left, h, w) != (0, 0, rh, rw):
        rgb = rgb.crop((left, top, left + w, top + h))
    array = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, 3)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std, geometry


def map_to_original(
    saliency: torch.Tensor, geometry: Geometry, *, fill: float = 0.0
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

    Returns:
        Tensor ``(H0, W0)`` or ``(K, H0, W0)`` with ``(H0, W0) = geometry.original_size``,
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
    H0, W0 = geometry.original_size
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
        x: ``(3, H, W)`` or ``(N, 3, H, W)`` normalised image(s).
        prep: the recipe that produced ``x``.

    Returns:
        Tensor of the same shape with values in [0, 1].

    Raises:
        InputError: ``x`` has no channel axis of size 3 where expected.

    Example:
        >>> prep = Preprocessing()
        >>> x, _ = preprocess(Image.new("RGB", (8, 8), (255, 0, 0)), prep)
        >>> [round(v, 4) for v in denormalize(x, prep)[:, 0, 0].tolist()]
        [1.0, 0.0, 0.0]
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"denormalize: expected a (3, H, W) or (N, 3, H, W) tensor, got {shape}")
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)
