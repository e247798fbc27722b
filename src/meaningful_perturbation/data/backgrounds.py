"""Backgrounds of the ShapeEvidence benchmark (DESIGN.md §4).

Two families, both defined in *unit coordinates* (the image is the square ``[0, 1]²``,
pixel ``(i, j)`` of an ``S × S`` image is sampled at its centre ``((i+½)/S, (j+½)/S)``), so
that the same draw rendered at 64 px and at 224 px gives the same picture up to resolution:

* **photos** bundled inside the scikit-image and scikit-learn wheels (no download). The
  photos are split into two disjoint sets, :data:`TRAIN_PHOTOS` and :data:`TEST_PHOTOS`,
  so that the test split measures accuracy on backgrounds the model has never seen. A
  photo is cropped at a random scale and position, possibly mirrored, and resampled
  bilinearly from a box-filtered pyramid (so large crops are not aliased).
* **procedural** backgrounds (smooth colour fields, soft stripes, fractal value noise),
  drawn in both splits.

Photos with shapes that resemble the classes are deliberately left out (``coins``: discs;
``retina``: a large disc; ``hubble_deep_field``: small discs; ``checkerboard``, ``logo``,
``horse``, ``binary_blobs``, ``colorwheel``: synthetic). ``cat`` is the same photo as
``chelsea`` and is not used, so the two sets are disjoint in content, not only in name.

Only numpy is imported at module level; scikit-image / scikit-learn are imported lazily
when a photo is first needed, and each photo is loaded once per process.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np

__all__ = [
    "TRAIN_PHOTOS",
    "TEST_PHOTOS",
    "PROCEDURAL_KINDS",
    "available_photos",
    "draw_background",
    "Background",
]

#: Photos used by the ``"train"`` split (scikit-image ``skimage.data`` names).
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "moon",
    "page",
    "rocket",
)

#: Photos held out for the ``"test"`` split; none of them is ever used for ``"train"``.
#: ``china`` and ``flower`` come from ``sklearn.datasets.load_sample_images``.
TEST_PHOTOS: tuple[str, ...] = (
    "china",
    "clock",
    "flower",
    "immunohistochemistry",
    "motorcycle",
    "text",
)

#: Procedural background families (used by both splits).
PROCEDURAL_KINDS: tuple[str, ...] = ("smooth", "stripes", "fractal")

# Probability that a background is a photo rather than procedural (when photos exist).
_PHOTO_PROBABILITY = 0.7
# Crop side as a fraction of the photo's shorter side (random scale, DESIGN.md §4).
_CROP_SCALE = (0.3, 1.0)
# The pyramid stops once the shorter side would fall below this many pixels.
_PYRAMID_MIN_SIDE = 16

#: A background is a function ``(u, v, out_size) -> (..., 3) float32`` that samples the
#: picture at unit coordinates ``u`` (rows) and ``v`` (columns); ``out_size`` is the side of
#: the image being rendered, which selects the pyramid level of a photo (anti-aliasing).
Background = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


# --------------------------------------------------------------------------- photos
def _load_raw(name: str) -> np.ndarray:
    """Load one bundled photo as an ``(H, W, C)`` array (raises if not available offline)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name == "motorcycle":
        return np.asarray(skimage.data.stereo_motorcycle()[0])  # left view
    return np.asarray(getattr(skimage.data, name)())


def _to_rgb_float(img: np.ndarray) -> np.ndarray:
    """uint8 / float / bool photo → float32 ``(H, W, 3)`` in [0, 1]; grey is stacked to RGB."""
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    else:
        out = img.astype(np.float32)
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=-1)
    elif out.shape[-1] == 4:  # drop alpha
        out = out[..., :3]
    elif out.shape[-1] == 1:
        out = np.concatenate([out] * 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _pyramid(img: np.ndarray) -> tuple[np.ndarray, ...]:
    """Box-filtered pyramid: level ``l`` halves level ``l-1`` by 2×2 averaging."""
    levels = [img]
    while min(levels[-1].shape[:2]) // 2 >= _PYRAMID_MIN_SIDE:
        a = levels[-1]
        h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
        a = a[:h, :w]
        levels.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25).astype(np.float32))
    return tuple(levels)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> tuple[np.ndarray, ...] | None:
    """Cached pyramid of one photo, or ``None`` if it cannot be loaded offline."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = _load_raw(name)
        return _pyramid(_to_rgb_float(raw))
    except Exception:  # noqa: BLE001 - any failure (missing package, pooch download) means "not available"
        return None


@functools.lru_cache(maxsize=None)
def available_photos(split: str) -> tuple[str, ...]:
    """Names of the photos of ``split`` ("train" or "test") that load on this machine.

    Photos that need a download (or whose package is not installed) are skipped, so the
    images drawn depend on the installed scikit-image / scikit-learn; with both installed
    every photo of :data:`TRAIN_PHOTOS` / :data:`TEST_PHOTOS` is bundled in the wheels.
    """
    names = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    return tuple(n for n in names if _photo(n) is not None)


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``img`` (H, W, 3) at continuous pixel coordinates (pixel ``k`` covers [k, k+1])."""
    h, w = img.shape[:2]
    py = np.clip(y - 0.5, 0.0, h - 1.0)
    px = np.clip(x - 0.5, 0.0, w - 1.0)
    y0 = np.minimum(np.floor(py).astype(np.intp), h - 2 if h > 1 else 0)
    x0 = np.minimum(np.floor(px).astype(np.intp), w - 2 if w > 1 else 0)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (py - y0)[..., None].astype(np.float32)
    wx = (px - x0)[..., None].astype(np.float32)
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bot = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bot * wy


def _photo_background(rng: np.random.Generator, name: str) -> Background:
    pyr = _photo(name)
    assert pyr is not None  # only names from available_photos() reach here
    h, w = pyr[0].shape[:2]
    side = rng.uniform(*_CROP_SCALE) * min(h, w)  # crop side in photo pixels
    top = rng.uniform(0.0, h - side)
    left = rng.uniform(0.0, w - side)
    flip = bool(rng.random() < 0.5)

    def sample(u: np.ndarray, v: np.ndarray, out_size: int) -> np.ndarray:
        # Pick the pyramid level whose pixel is at most one output pixel wide (anti-aliasing).
        level = int(np.clip(math.floor(math.log2(max(side / out_size, 1.0))), 0, len(pyr) - 1))
        scale = 2.0**level
        vv = 1.0 - v if flip else v
        return _bilinear(pyr[level], (top + u * side) / scale, (left + vv * side) / scale)

    return sample


# ----------------------------------------------------------------------- procedural
def _value_noise(rng: np.random.Generator, cells: int, channels: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Random values on a ``(cells+1)²`` lattice over the unit square, interpolated bilinearly."""
    grid = rng.random((cells + 1, cells + 1, channels)).astype(np.float32)

    def field(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Lattice point k sits at unit coordinate k / cells; _bilinear uses centre = k + ½.
        return _bilinear(grid, u * cells + 0.5, v * cells + 0.5)

    return field


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _procedural_background(rng: np.random.Generator, kind: str) -> Background:
    if kind == "smooth":
        # A smooth colour field: a base colour modulated by low-frequency value noise.
        base = _random_colour(rng)
        amp = np.float32(rng.uniform(0.2, 0.6))
        noise = _value_noise(rng, int(rng.integers(2, 6)), 3)

        def sample(u: np.ndarray, v: np.ndarray, out_size: int) -> np.ndarray:
            return np.clip(base + amp * (noise(u, v) - 0.5) * 2.0, 0.0, 1.0)

        return sample
    if kind == "stripes":
        # Soft (sinusoidal) stripes between two colours, random frequency / angle / phase.
        c1, c2 = _random_colour(rng), _random_colour(rng)
        cycles = rng.uniform(2.0, 8.0)
        theta = rng.uniform(0.0, math.pi)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        cy, cx = math.sin(theta), math.cos(theta)

        def sample(u: np.ndarray, v: np.ndarray, out_size: int) -> np.ndarray:
            t = 0.5 + 0.5 * np.sin(2.0 * math.pi * cycles * (u * cy + v * cx) + phase)
            t = t.astype(np.float32)[..., None]
            return c1 * (1 - t) + c2 * t

        return sample
    if kind == "fractal":
        # Multi-octave value noise (4 octaves, amplitude halving) mapped between two colours,
        # plus a little per-channel colour noise: a fine, cluttered texture.
        c1, c2 = _random_colour(rng), _random_colour(rng)
        first = int(rng.integers(3, 6))
        octaves = [(_value_noise(rng, first * 2**k, 1), 0.5**k) for k in range(4)]
        tint = _value_noise(rng, first, 3)
        norm = sum(a for _, a in octaves)

        def sample(u: np.ndarray, v: np.ndarray, out_size: int) -> np.ndarray:
            t = sum(a * f(u, v) for f, a in octaves) / norm
            t = np.clip((t - 0.5) * 2.0 + 0.5, 0.0, 1.0)  # stretch contrast
            out = c1 * (1 - t) + c2 * t + 0.15 * (tint(u, v) - 0.5)
            return np.clip(out, 0.0, 1.0).astype(np.float32)

        return sample
    raise ValueError(f"unknown procedural background kind {kind!r}")


def draw_background(rng: np.random.Generator, split: str) -> tuple[str, Background]:
    """Draw one background for ``split``.

    Every random number is drawn here, before any rendering, so the background is a pure
    function of the generator state (and of which photos are available).

    Returns:
        ``(name, sample)``: a description such as ``"photo:brick"`` or ``"noise:stripes"``,
        and the sampling function (see :data:`Background`).
    """
    photos = available_photos(split)
    use_photo = bool(rng.random() < _PHOTO_PROBABILITY)
    if photos and use_photo:
        name = photos[int(rng.integers(len(photos)))]
        return f"photo:{name}", _photo_background(rng, name)
    kind = PROCEDURAL_KINDS[int(rng.integers(len(PROCEDURAL_KINDS)))]
    return f"noise:{kind}", _procedural_background(rng, kind)
