"""TextureEvidence: a second ground-truth family whose evidence is an *orientation*
(DESIGN.md §4; issue 15 "Quality and cost": the benchmark on a family of a different kind).

Each image holds ONE *evidence patch*: a high-contrast grating (soft square wave between
two random colours) whose **stripe orientation** is the class, inside a random blob-shaped
region, on a photo or procedural background, plus 0-2 label-free *distractor patches*: the
same kind of two-colour texture at the same spatial frequency but **isotropic** (a sum of
waves in many directions, so it has no dominant orientation). The class is therefore

* not a flat colour: both grating colours are drawn the same way whatever the label and a
  square wave spends half its period on each, so the region's mean colour carries no label;
* not a shape outline: the region is a random blob (radius modulated by random 2nd and 3rd
  harmonics, random rotation) drawn the same way for every class;
* not "a texture is present": distractors are textured too; only the stripes' direction
  says the class.

This differs in kind from :mod:`~meaningful_perturbation.data.shapes`, where the evidence is
a uniformly coloured outline: here the evidence is a *second-order* property (local
orientation) spread over a region, it is destroyed by blurring (the stripe period is 4-8 px
at 64 px, the 2017 paper's blur σ0 scaled to 64 px is ≈ 2.9 px) but not by a change of
colour, and any sub-patch of the region carries it.

Classes (stripe angle, counter-clockwise from horizontal on screen): ``"0deg"`` (horizontal
stripes), ``"45deg"`` (``/``), ``"90deg"`` (vertical), ``"135deg"`` (``\\``). A horizontal
mirror maps class k to :data:`FLIP_PERMUTATION` [k], a 90° rotation to
:data:`ROT90_PERMUTATION` [k], a 180° rotation leaves every class unchanged.

Ground truth, exactly as ShapeEvidence:

* ``masks[i]``: the pixels of the evidence patch; ``boxes[i]``: its bounding box;
* ``counterfactuals[i]``: the same image with the patch never drawn (same background, same
  distractors); ``(images[i] != counterfactuals[i]).any(axis=0) == masks[i]`` exactly.

Everything is drawn in unit coordinates from ``numpy.random.default_rng((seed, split code,
i))`` before rendering, so the same arguments give bitwise-identical arrays, image ``i``
does not depend on ``n``, and ``size`` changes only the resolution. The ``"train"`` and
``"test"`` splits use disjoint photo backgrounds (those of ShapeEvidence).

Example:
    >>> from meaningful_perturbation.data import make_texture_evidence
    >>> ds = make_texture_evidence(8, size=64, split="test", seed=0)
    >>> ds.images.shape, ds.masks.shape, ds.boxes.shape
    ((8, 3, 64, 64), (8, 64, 64), (8, 4))
    >>> bool(((ds.images != ds.counterfactuals).any(axis=1) == ds.masks).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .backgrounds import (
    _PHOTO_PROBABILITY,
    _photo_background,
    _procedural_background,
    available_photos,
)
from .shapes import ShapeEvidence, ShapeTensors, _check_args

__all__ = [
    "TEXTURE_CLASSES",
    "FLIP_PERMUTATION",
    "ROT90_PERMUTATION",
    "TextureEvidence",
    "make_texture_evidence",
]

#: Class names, in label order: the stripe angle of the evidence grating.
TEXTURE_CLASSES: tuple[str, ...] = ("0deg", "45deg", "90deg", "135deg")
_ANGLES = (0.0, 45.0, 90.0, 135.0)  # degrees, counter-clockwise from horizontal on screen
#: Label of an image of class ``k`` after a horizontal mirror (``x.flip(-1)``): θ → 180° − θ.
FLIP_PERMUTATION: tuple[int, ...] = (0, 3, 2, 1)
#: Label after a 90° rotation either way (``torch.rot90`` with odd ``k``): θ → θ + 90°.
ROT90_PERMUTATION: tuple[int, ...] = (2, 3, 0, 1)

# Seed stream code per split, distinct from ShapeEvidence's (1, 2): the two families never
# share random draws even with the same seed.
_SPLIT_CODE = {"train": 11, "test": 12}

# Geometry in unit coordinates (fractions of the image side), resolution independent.
_PATCH_RADIUS = (0.13, 0.21)  # mean radius of the evidence blob (diameter 26-42 % of the side)
_BLOB_WOBBLE = (0.0, 0.18)  # amplitude of each radial harmonic (2nd, 3rd), relative to the radius
_PERIOD = (1 / 16, 1 / 8)  # stripe period: 4-8 px at 64 px (>= 2 px, no aliasing, at 32 px)
_EDGE_MARGIN = 0.02
_SHARPNESS = (2.0, 6.0)  # tanh gain: from near-sinusoidal to near-square stripes
_MIN_CONTRAST = 0.45  # Euclidean RGB distance between the two texture colours
_COLOUR_TRIES = 50
_DISTRACTOR_RADIUS = (0.09, 0.16)
_MAX_DISTRACTORS = 2
_DISTRACTOR_GAP = 0.03
_PLACEMENT_TRIES = 20
_ISO_WAVES = 9  # directions in an isotropic distractor (equally spaced over 180°)
# Procedural backgrounds: ShapeEvidence's "smooth" and "fractal"; its "stripes" (a
# full-image grating) is replaced by a low-contrast *coarse* grating at an orientation half
# way between two classes (22.5° + k·45°), so background orientation is never class evidence.
_PROCEDURAL = ("smooth", "fractal", "offgrating")
_OFF_PERIOD = (0.15, 0.30)
_OFF_CONTRAST = (0.10, 0.30)


@dataclass(frozen=True, eq=False)
class TextureEvidence:
    """A drawn TextureEvidence set (numpy, not normalised); same interface as
    :class:`~meaningful_perturbation.data.ShapeEvidence`, plus ``boxes``.

    Attributes:
        images: ``(n, 3, size, size)`` float32 in [0, 1].
        labels: ``(n,)`` int64 index into ``classes`` (the stripe orientation).
        masks: ``(n, size, size)`` bool, the pixels of the evidence patch (ground truth).
        boxes: ``(n, 4)`` int64 ``(y0, x0, y1, x1)`` pixel bounding box of each mask,
            end-exclusive.
        distractors: ``(n, size, size)`` bool, pixels of the isotropic distractor patches
            (disjoint from ``masks``).
        counterfactuals: ``(n, 3, size, size)`` float32, the images with the evidence patch
            never drawn; they differ from ``images`` exactly on ``masks``.
        backgrounds: ``(n,)`` background names, e.g. ``"photo:brick"``, ``"noise:offgrating"``.
        classes: :data:`TEXTURE_CLASSES`.
        photos: photos this split could draw from on this machine.
        split: ``"train"`` or ``"test"``.
        size: image side in pixels.
        seed: the seed of the draw.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    distractors: np.ndarray
    counterfactuals: np.ndarray
    backgrounds: tuple[str, ...]
    classes: tuple[str, ...]
    photos: tuple[str, ...]
    split: str
    size: int
    seed: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_tensors(self, normalize: bool = True, device: Any = None) -> ShapeTensors:
        """The arrays as torch tensors, images normalised with the demo models' ImageNet mean / std
        (:data:`~meaningful_perturbation.data.MEAN`, ``STD``) by default.

        Returns:
            :class:`~meaningful_perturbation.data.ShapeTensors` (``images`` /
            ``counterfactuals`` ``(n, 3, S, S)`` float32, ``labels`` ``(n,)`` int64,
            ``masks`` / ``distractors`` ``(n, S, S)`` bool), the same type as ShapeEvidence's.
        """
        return ShapeEvidence.to_tensors(self, normalize, device)  # the same fields, the same conversion


# ------------------------------------------------------------------------- drawing
class _Patch(NamedTuple):
    cy: float
    cx: float
    r: float
    wobble: tuple[float, float, float, float]  # (a2, phase2, a3, phase3)
    period: float
    sharp: float
    phase: float
    angle: float  # radians; stripe angle (oriented gratings) or base direction (isotropic)
    colours: tuple[np.ndarray, np.ndarray]
    iso_phases: tuple[float, ...]  # one phase per wave of an isotropic texture


def _draw_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least :data:`_MIN_CONTRAST` apart (same law for every class)."""
    for _ in range(_COLOUR_TRIES):
        c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        if float(np.linalg.norm(c1 - c2)) >= _MIN_CONTRAST:
            return c1, c2
    return np.zeros(3, np.float32), np.ones(3, np.float32)


def _draw_patch(rng: np.random.Generator, radius: tuple[float, float], angle: float) -> _Patch:
    """Geometry and texture parameters; the draws are in the same order whatever ``angle``."""
    r = rng.uniform(*radius)
    a2, a3 = rng.uniform(*_BLOB_WOBBLE), rng.uniform(*_BLOB_WOBBLE)
    p2, p3 = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
    reach = r * (1 + a2 + a3)  # the blob never leaves this circle
    lo, hi = reach + _EDGE_MARGIN, 1.0 - reach - _EDGE_MARGIN
    cy, cx = rng.uniform(lo, hi), rng.uniform(lo, hi)
    period = rng.uniform(*_PERIOD)
    sharp = rng.uniform(*_SHARPNESS)
    phase = rng.uniform(0, 2 * math.pi)
    colours = _draw_colours(rng)
    iso = tuple(float(x) for x in rng.uniform(0, 2 * math.pi, _ISO_WAVES))
    return _Patch(cy, cx, r, (a2, p2, a3, p3), period, sharp, phase, angle, colours, iso)


def _reach(p: _Patch) -> float:
    return p.r * (1 + p.wobble[0] + p.wobble[2])


def _blob_mask(p: _Patch, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    dy, dx = u - p.cy, v - p.cx
    phi = np.arctan2(dy, dx)
    a2, p2, a3, p3 = p.wobble
    rad = p.r * (1 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3))
    return dy * dy + dx * dx <= rad * rad


def _grating(p: _Patch, u: np.ndarray, v: np.ndarray, isotropic: bool) -> np.ndarray:
    """Two-colour texture ``(..., 3)``: an oriented soft square wave, or (``isotropic``)
    a sum of :data:`_ISO_WAVES` waves at the same period in equally spaced directions with
    independent random phases (a maze-like texture with no dominant orientation)."""
    dy, dx = u - p.cy, v - p.cx
    k = 2 * math.pi / p.period
    if isotropic:
        s = np.zeros(np.broadcast(u, v).shape)
        for j in range(_ISO_WAVES):
            th = p.angle + math.pi * j / _ISO_WAVES
            s = s + np.sin(k * (dy * math.cos(th) + dx * math.sin(th)) + p.iso_phases[j])
        s = s / math.sqrt(_ISO_WAVES / 2)  # unit variance, so `sharp` means the same
    else:
        # Stripe angle θ (counter-clockwise on screen, rows grow downwards): the wave runs
        # along the stripes' normal, (row, col) direction (cos θ, sin θ).
        s = np.sin(k * (dy * math.cos(p.angle) + dx * math.sin(p.angle)) + p.phase)
    t = (0.5 + 0.5 * np.tanh(p.sharp * s)).astype(np.float32)[..., None]
    c1, c2 = p.colours
    return c1 * (1 - t) + c2 * t


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _box(p: _Patch) -> tuple[float, float, float, float]:
    e = _reach(p)
    return (p.cy - e, p.cx - e, p.cy + e, p.cx + e)


def _offgrating_background(rng: np.random.Generator):
    """A coarse low-contrast grating at 22.5° + k·45° (never a class angle) over a base colour."""
    base = rng.random(3).astype(np.float32)
    angle = math.radians(22.5 + 45.0 * int(rng.integers(4)))
    period = rng.uniform(*_OFF_PERIOD)
    amp = np.float32(rng.uniform(*_OFF_CONTRAST))
    tint = (rng.random(3).astype(np.float32) - 0.5) * 2
    phase = rng.uniform(0, 2 * math.pi)
    k = 2 * math.pi / period

    def sample(u: np.ndarray, v: np.ndarray, out_size: int) -> np.ndarray:
        s = np.sin(k * (u * math.cos(angle) + v * math.sin(angle)) + phase).astype(np.float32)[..., None]
        return np.clip(base + amp * s * tint, 0.0, 1.0).astype(np.float32)

    return sample


def _draw_background(rng: np.random.Generator, split: str):
    photos = available_photos(split)
    use_photo = bool(rng.random() < _PHOTO_PROBABILITY)
    if photos and use_photo:
        name = photos[int(rng.integers(len(photos)))]
        return f"photo:{name}", _photo_background(rng, name)
    kind = _PROCEDURAL[int(rng.integers(len(_PROCEDURAL)))]
    if kind == "offgrating":
        return "noise:offgrating", _offgrating_background(rng)
    return f"noise:{kind}", _procedural_background(rng, kind)


def _render_one(rng: np.random.Generator, split: str, size: int, grid: np.ndarray):
    # 1. Draw everything first (label, background, patch, distractors): size independent.
    label = int(rng.integers(len(TEXTURE_CLASSES)))
    bg_name, background = _draw_background(rng, split)
    patch = _draw_patch(rng, _PATCH_RADIUS, math.radians(_ANGLES[label]))
    pbox = _box(patch)
    distractors: list[_Patch] = []
    for _ in range(int(rng.integers(0, _MAX_DISTRACTORS + 1))):
        for _try in range(_PLACEMENT_TRIES):
            d = _draw_patch(rng, _DISTRACTOR_RADIUS, rng.uniform(0, math.pi))
            if not _boxes_overlap(_box(d), pbox, _DISTRACTOR_GAP) and not any(
                _boxes_overlap(_box(d), _box(o), 0.0) for o in distractors
            ):
                distractors.append(d)
                break

    # 2. Render: background, distractors, then the evidence patch on a copy.
    uu = np.broadcast_to(grid[:, None], (size, size))
    vv = np.broadcast_to(grid[None, :], (size, size))
    canvas = np.ascontiguousarray(background(uu, vv, size), dtype=np.float32)
    dmask = np.zeros((size, size), dtype=bool)
    for d in distractors:
        m = _blob_mask(d, uu, vv)
        canvas[m] = _grating(d, uu[m], vv[m], isotropic=True)
        dmask |= m
    counterfactual = canvas.copy()
    mask = _blob_mask(patch, uu, vv)
    tex = _grating(patch, uu[mask], vv[mask], isotropic=False)
    # Exact ground truth: every evidence pixel differs from the background under it (a tie
    # has probability ~0 with continuous colours; nudge it if it occurs).
    same = np.all(tex == canvas[mask], axis=-1)
    while same.any():
        tex[same] = (tex[same] + np.float32(1.0 / 1024.0)) % np.float32(1.0)
        same = np.all(tex == canvas[mask], axis=-1)
    canvas[mask] = tex
    return label, bg_name, canvas, counterfactual, mask, dmask


def make_texture_evidence(n: int, size: int = 64, split: str = "test", seed: int = 0) -> TextureEvidence:
    """Draw ``n`` TextureEvidence images (module docstring: what the evidence is).

    Args:
        n: number of images (>= 1).
        size: image side in pixels (>= :data:`~meaningful_perturbation.data.MIN_SIZE`); the
            pictures do not depend on it except through resolution.
        split: ``"train"`` or ``"test"``: disjoint photo backgrounds (the same sets as
            ShapeEvidence) and independent random streams.
        seed: non-negative int; image ``i`` comes from ``numpy.random.default_rng((seed,
            11 or 12, i))`` (train or test).

    Returns:
        A :class:`TextureEvidence`, images in [0, 1] (not normalised).

    Raises:
        InputError: an argument out of range; the message names it.

    Example:
        >>> ds = make_texture_evidence(4, size=32, split="train", seed=1)
        >>> ds.classes
        ('0deg', '45deg', '90deg', '135deg')
        >>> bool(ds.masks.any(axis=(1, 2)).all())
        True
    """
    _check_args(n, size, split, seed)
    n, size, seed = int(n), int(size), int(seed)
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size
    images = np.empty((n, 3, size, size), dtype=np.float32)
    counterfactuals = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    dmasks = np.empty((n, size, size), dtype=bool)
    labels = np.empty((n,), dtype=np.int64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    names: list[str] = []
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLIT_CODE[split], i))
        label, bg_name, img, cf, m, dm = _render_one(rng, split, size, grid)
        images[i] = img.transpose(2, 0, 1)
        counterfactuals[i] = cf.transpose(2, 0, 1)
        masks[i], dmasks[i], labels[i] = m, dm, label
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(rows):
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        names.append(bg_name)
    return TextureEvidence(
        images=images,
        labels=labels,
        masks=masks,
        boxes=boxes,
        distractors=dmasks,
        counterfactuals=counterfactuals,
        backgrounds=tuple(names),
        classes=TEXTURE_CLASSES,
        photos=available_photos(split),
        split=split,
        size=size,
        seed=seed,
    )

