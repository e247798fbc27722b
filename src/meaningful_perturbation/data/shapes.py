"""ShapeEvidence: a ground-truth benchmark for saliency methods (DESIGN.md §4).

Each image shows ONE *class shape* (disc, square, triangle, plus, ring or x) of a uniform
random colour, at a random position and size, on a photo or procedural background, plus
0-2 label-free *distractors* (line segments, small checker patches). The label is the type
of the class shape and nothing else: position, size, colour, background and distractors are
drawn independently of the label, and distractors are placed away from the shape's bounding
box (not from its pixels), so even their layout does not depend on the class.

Ground truth:

* ``masks[i]`` is the exact set of pixels painted with the shape's colour;
* ``counterfactuals[i]`` is the same image with the shape never drawn (same background,
  same distractors). By construction the two images differ **exactly** on the mask:
  ``(images[i] != counterfactuals[i]).any(axis=0) == masks[i]``.

All geometry is expressed in unit coordinates (fractions of the image side) and every random
number is drawn before rendering from a generator seeded by ``(seed, split, index)``, so

* the same ``(n, size, split, seed)`` gives bitwise-identical arrays;
* image ``i`` does not depend on ``n`` (a smaller draw is a prefix of a larger one);
* ``size=64`` and ``size=224`` give the same pictures up to resolution.

Example:
    >>> from meaningful_perturbation.data import make_shape_evidence
    >>> ds = make_shape_evidence(8, size=64, split="test", seed=0)
    >>> ds.images.shape, ds.labels.shape, ds.masks.shape
    ((8, 3, 64, 64), (8,), (8, 64, 64))
    >>> bool(((ds.images != ds.counterfactuals).any(axis=1) == ds.masks).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from ..errors import InputError
from .backgrounds import available_photos, draw_background

if TYPE_CHECKING:  # torch is only needed by to_tensors / normalize on tensors
    import torch

__all__ = [
    "CLASSES",
    "SPLITS",
    "MIN_SIZE",
    "MEAN",
    "STD",
    "ShapeEvidence",
    "ShapeTensors",
    "make_shape_evidence",
    "normalize",
]

#: Class names, in label order.
CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "plus", "ring", "x")
#: Valid values of ``split``; their photo backgrounds are disjoint (see ``backgrounds``).
SPLITS: tuple[str, ...] = ("train", "test")
#: Smallest image side accepted (the demo model's GAP head needs >= 32 px).
MIN_SIZE = 32
#: Normalisation statistics of the demo model: the ImageNet mean / std, so that the demo
#: model takes inputs prepared like an ImageNet classifier's (DESIGN.md §4, demo model).
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_SPLIT_CODE = {"train": 1, "test": 2}  # mixed into the seed so the splits never share draws

# Geometry, in fractions of the image side (resolution independent).
_SHAPE_SIDE = (0.14, 0.30)  # diameter of the circle the class shape is inscribed in
_EDGE_MARGIN = 0.02  # the shape stays this far inside the image
_DISTRACTOR_GAP = 0.03  # distractor boxes stay this far from the shape's bounding box
_MAX_DISTRACTORS = 2
_PLACEMENT_TRIES = 20  # rejection-sampling attempts per distractor (then it is skipped)
_LINE_LENGTH = (0.15, 0.35)
_LINE_HALF_WIDTH = (0.012, 0.025)
_CHECKER_SIDE = (0.10, 0.18)
_CHECKER_CELLS = (2, 4)  # cells per side, inclusive
_COLOUR_CANDIDATES = 8  # best-contrast colour among this many random draws
_CONTRAST_POINTS = 8  # background probed on an 8×8 grid over the shape's box


@dataclass(frozen=True, eq=False)
class ShapeEvidence:
    """A drawn ShapeEvidence set (numpy, not normalised).

    Attributes:
        images: ``(n, 3, size, size)`` float32 in [0, 1].
        labels: ``(n,)`` int64 index into ``classes``.
        masks: ``(n, size, size)`` bool, exact pixels of the class shape (ground truth).
        distractors: ``(n, size, size)`` bool, pixels of the label-free distractors
            (disjoint from ``masks``).
        counterfactuals: ``(n, 3, size, size)`` float32, the images with the class shape
            never drawn; they differ from ``images`` exactly on ``masks``.
        backgrounds: ``(n,)`` names of the backgrounds, e.g. ``"photo:brick"``.
        classes: class names.
        photos: photos this split could draw from on this machine.
        split: ``"train"`` or ``"test"``.
        size: image side in pixels.
        seed: the seed of the draw.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
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

    def to_tensors(self, normalize: bool = True, device: Any = None) -> "ShapeTensors":
        """The arrays as torch tensors, images normalised for the demo model by default.

        Args:
            normalize: apply ``(x - MEAN) / STD`` to ``images`` and ``counterfactuals``.
            device: where to put the tensors (default CPU).

        Returns:
            :class:`ShapeTensors` with ``images`` / ``counterfactuals`` ``(n, 3, S, S)``
            float32, ``labels`` ``(n,)`` int64, ``masks`` / ``distractors`` ``(n, S, S)`` bool.
        """
        import torch

        def img(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
            return _normalize_tensor(t) if normalize else t

        return ShapeTensors(
            images=img(self.images),
            labels=torch.from_numpy(self.labels).to(device),
            masks=torch.from_numpy(self.masks).to(device),
            distractors=torch.from_numpy(self.distractors).to(device),
            counterfactuals=img(self.counterfactuals),
        )


class ShapeTensors(NamedTuple):
    """Torch view of a :class:`ShapeEvidence` (see :meth:`ShapeEvidence.to_tensors`)."""

    images: "torch.Tensor"
    labels: "torch.Tensor"
    masks: "torch.Tensor"
    distractors: "torch.Tensor"
    counterfactuals: "torch.Tensor"


def _normalize_tensor(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    mean = torch.tensor(MEAN, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    return (t - mean) / std


def normalize(images: Any) -> Any:
    """Normalise ``(N, 3, H, W)`` images in [0, 1] with the demo model's :data:`MEAN` / :data:`STD`.

    Accepts a numpy array (returns float32 numpy) or a torch tensor (returns a tensor of the
    same dtype and device).
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images: expected an (N, 3, H, W) array, got shape {images.shape}")
        mean = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
        return ((images.astype(np.float32) - mean) / std).astype(np.float32)
    import torch

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images: expected an (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
        return _normalize_tensor(images if images.is_floating_point() else images.float())
    raise InputError(f"images: expected a numpy array or torch tensor, got {type(images).__name__}")


# -------------------------------------------------------------------------- geometry
class _Shape(NamedTuple):
    label: int
    cy: float  # centre, unit coordinates
    cx: float
    r: float  # radius of the circumscribed circle
    angle: float  # radians
    param: float  # ring: inner radius / r; plus, x: arm half-width / r


def _shape_mask(s: _Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact pixel mask of a class shape sampled at unit coordinates ``(u, v)``.

    Every shape lies inside the circle of radius ``s.r`` around its centre.
    """
    dy, dx = u - s.cy, v - s.cx
    ca, sa = math.cos(s.angle), math.sin(s.angle)
    a = ca * dx + sa * dy  # coordinates in the shape's rotated frame
    b = -sa * dx + ca * dy
    name = CLASSES[s.label]
    if name == "disc":
        return dx * dx + dy * dy <= s.r * s.r
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= s.r * s.r) & (d2 >= (s.param * s.r) ** 2)
    if name == "square":
        h = s.r / math.sqrt(2.0)  # inscribed in the circle at any rotation
        return (np.abs(a) <= h) & (np.abs(b) <= h)
    if name == "triangle":
        # Equilateral triangle with circumradius r: inside iff n_k·p <= r/2 (inradius) for
        # the three edge normals 120° apart.
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            phi = math.pi / 2 + 2 * math.pi * k / 3
            inside &= (math.cos(phi) * a + math.sin(phi) * b) <= s.r / 2
        return inside
    if name in ("plus", "x"):
        w = s.param * s.r  # arm half-width
        half = math.sqrt(s.r * s.r - w * w)  # arm half-length: corners stay in the circle
        arm1 = (np.abs(a) <= half) & (np.abs(b) <= w)
        arm2 = (np.abs(b) <= half) & (np.abs(a) <= w)
        return arm1 | arm2
    raise AssertionError(name)


def _draw_shape(rng: np.random.Generator, label: int) -> _Shape:
    """Random position / size / rotation, drawn in the same order whatever the label."""
    r = rng.uniform(*_SHAPE_SIDE) / 2.0
    lo, hi = r + _EDGE_MARGIN, 1.0 - r - _EDGE_MARGIN
    cy, cx = rng.uniform(lo, hi), rng.uniform(lo, hi)
    spin = rng.uniform(0.0, 1.0)
    tilt = rng.uniform(-1.0, 1.0)
    ring_inner = rng.uniform(0.40, 0.60)
    arm = rng.uniform(0.22, 0.34)
    name = CLASSES[label]
    if name in ("square",):
        angle, param = spin * math.pi / 2, 0.0  # a square is 90°-periodic
    elif name == "triangle":
        angle, param = spin * 2 * math.pi / 3, 0.0  # 120°-periodic
    elif name == "plus":
        # Tilt at most 15° so that a plus never looks like an x (and vice versa).
        angle, param = math.radians(15.0) * tilt, arm
    elif name == "x":
        angle, param = math.pi / 4 + math.radians(15.0) * tilt, arm
    elif name == "ring":
        angle, param = 0.0, ring_inner
    else:
        angle, param = 0.0, 0.0
    return _Shape(label, cy, cx, r, angle, param)


class _Distractor(NamedTuple):
    kind: str  # "line" or "checker"
    box: tuple[float, float, float, float]  # y0, x0, y1, x1 (unit coordinates)
    geom: tuple[float, ...]
    colours: tuple[np.ndarray, ...]  # (main, second); the second is used by checkers only


def _distractor_mask(d: _Distractor, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, second_colour)``: pixels of the distractor and, for checkers, which cells
    take the second colour."""
    if d.kind == "line":
        y0, x0, y1, x1, hw = d.geom
        ey, ex = y1 - y0, x1 - x0
        t = np.clip(((u - y0) * ey + (v - x0) * ex) / (ey * ey + ex * ex), 0.0, 1.0)
        dist2 = (u - (y0 + t * ey)) ** 2 + (v - (x0 + t * ex)) ** 2
        m = dist2 <= hw * hw
        return m, np.zeros_like(m)
    top, left, side, cells = d.geom
    m = (u >= top) & (u < top + side) & (v >= left) & (v < left + side)
    iy = np.floor((u - top) / side * cells).astype(np.int64)
    ix = np.floor((v - left) / side * cells).astype(np.int64)
    return m, m & ((iy + ix) % 2 == 1)


def _boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _draw_distractors(rng: np.random.Generator, shape_box: tuple[float, ...]) -> list[_Distractor]:
    """0-2 distractors, each kept outside the shape's (label-independent) bounding box."""
    out: list[_Distractor] = []
    for _ in range(int(rng.integers(0, _MAX_DISTRACTORS + 1))):
        kind = "line" if rng.random() < 0.5 else "checker"
        for _try in range(_PLACEMENT_TRIES):
            if kind == "line":
                length = rng.uniform(*_LINE_LENGTH)
                hw = rng.uniform(*_LINE_HALF_WIDTH)
                theta = rng.uniform(0.0, math.pi)
                dy, dx = 0.5 * length * math.sin(theta), 0.5 * length * math.cos(theta)
                my = rng.uniform(abs(dy) + hw, 1.0 - abs(dy) - hw)
                mx = rng.uniform(abs(dx) + hw, 1.0 - abs(dx) - hw)
                geom: tuple[float, ...] = (my - dy, mx - dx, my + dy, mx + dx, hw)
                box = (my - abs(dy) - hw, mx - abs(dx) - hw, my + abs(dy) + hw, mx + abs(dx) + hw)
            else:
                side = rng.uniform(*_CHECKER_SIDE)
                cells = int(rng.integers(_CHECKER_CELLS[0], _CHECKER_CELLS[1] + 1))
                top, left = rng.uniform(0.0, 1.0 - side), rng.uniform(0.0, 1.0 - side)
                geom = (top, left, side, float(cells))
                box = (top, left, top + side, left + side)
            if not _boxes_overlap(box, shape_box, _DISTRACTOR_GAP):
                out.append(_Distractor(kind, box, geom, ()))
                break
    return out


def _pick_colour(rng: np.random.Generator, background, box: Sequence[float]) -> np.ndarray:
    """Best-contrast colour among random candidates, judged on the background under ``box``.

    The background is probed on a fixed grid of points (not on the rendered pixels) so the
    choice does not depend on the image size; the score is the 10th percentile of the
    colour distance, so the shape stands out from (nearly) all of its surroundings.
    """
    g = (np.arange(_CONTRAST_POINTS) + 0.5) / _CONTRAST_POINTS
    pu, pv = np.meshgrid(box[0] + (box[2] - box[0]) * g, box[1] + (box[3] - box[1]) * g, indexing="ij")
    probe = background(pu, pv, 64).reshape(-1, 3)
    cands = rng.random((_COLOUR_CANDIDATES, 3)).astype(np.float32)
    dist = np.linalg.norm(cands[:, None, :] - probe[None, :, :], axis=-1)
    score = np.percentile(dist, 10, axis=1)
    return cands[int(np.argmax(score))]


# ------------------------------------------------------------------------- generator
def _check_args(n: Any, size: Any, split: Any, seed: Any) -> None:
    def is_int(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))

    if not is_int(n) or n <= 0:
        raise InputError(f"n: expected a positive int (number of images), got {n!r}")
    if not is_int(size) or size < MIN_SIZE:
        raise InputError(f"size: expected an int >= {MIN_SIZE} (image side in pixels), got {size!r}")
    if split not in SPLITS:
        raise InputError(f"split: expected one of {SPLITS}, got {split!r}")
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed: expected a non-negative int, got {seed!r}")


def _render_one(rng: np.random.Generator, split: str, size: int, grid: np.ndarray):
    # 1. Draw everything (label, background, shape, colour, distractors), size-independent.
    label = int(rng.integers(len(CLASSES)))
    bg_name, background = draw_background(rng, split)
    shape = _draw_shape(rng, label)
    shape_box = (shape.cy - shape.r, shape.cx - shape.r, shape.cy + shape.r, shape.cx + shape.r)
    colour = _pick_colour(rng, background, shape_box)
    distractors = [  # distractors get contrast too, so that they are real distractors
        d._replace(colours=(_pick_colour(rng, background, d.box), rng.random(3).astype(np.float32)))
        for d in _draw_distractors(rng, shape_box)
    ]

    # 2. Render at this size: background, then distractors, then the class shape on a copy.
    u, v = grid[:, None], grid[None, :]
    uu, vv = np.broadcast_to(u, (size, size)), np.broadcast_to(v, (size, size))
    canvas = np.ascontiguousarray(background(uu, vv, size), dtype=np.float32)  # (S, S, 3)
    dmask = np.zeros((size, size), dtype=bool)
    for d in distractors:
        m, second = _distractor_mask(d, uu, vv)
        canvas[m & ~second] = d.colours[0]
        canvas[second] = d.colours[1]
        dmask |= m
    counterfactual = canvas.copy()
    mask = _shape_mask(shape, uu, vv)
    # Exact ground truth: the shape's colour must differ from the background at every one
    # of its pixels (a tie has probability ~0 with continuous colours; nudge it if it occurs).
    while np.any(np.all(canvas[mask] == colour, axis=-1)):
        colour = np.float32(colour + np.float32(1.0 / 1024.0)) % np.float32(1.0)
    canvas[mask] = colour
    return label, bg_name, canvas, counterfactual, mask, dmask


def make_shape_evidence(n: int, size: int = 64, split: str = "test", seed: int = 0) -> ShapeEvidence:
    """Draw ``n`` ShapeEvidence images (DESIGN.md §4).

    Args:
        n: number of images (>= 1).
        size: image side in pixels (>= :data:`MIN_SIZE`); the pictures do not depend on it
            except through resolution.
        split: ``"train"`` or ``"test"``; the two use disjoint photo backgrounds
            (:data:`~meaningful_perturbation.data.backgrounds.TRAIN_PHOTOS` /
            :data:`~meaningful_perturbation.data.backgrounds.TEST_PHOTOS`) and independent
            random streams.
        seed: non-negative int; image ``i`` is drawn from ``numpy.random.default_rng((seed,
            split code, i))``.

    Returns:
        A :class:`ShapeEvidence` with images in [0, 1] (not normalised).

    Raises:
        InputError: if an argument is out of range; the message names it.

    Example:
        >>> ds = make_shape_evidence(4, size=32, split="train", seed=1)
        >>> ds.classes
        ('disc', 'square', 'triangle', 'plus', 'ring', 'x')
        >>> bool(ds.masks.any(axis=(1, 2)).all())
        True
    """
    _check_args(n, size, split, seed)
    n, size, seed = int(n), int(size), int(seed)
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size  # pixel centres, unit coordinates
    images = np.empty((n, 3, size, size), dtype=np.float32)
    counterfactuals = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    dmasks = np.empty((n, size, size), dtype=bool)
    labels = np.empty((n,), dtype=np.int64)
    names: list[str] = []
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLIT_CODE[split], i))
        label, bg_name, img, cf, m, dm = _render_one(rng, split, size, grid)
        images[i] = img.transpose(2, 0, 1)
        counterfactuals[i] = cf.transpose(2, 0, 1)
        masks[i], dmasks[i], labels[i] = m, dm, label
        names.append(bg_name)
    return ShapeEvidence(
        images=images,
        labels=labels,
        masks=masks,
        distractors=dmasks,
        counterfactuals=counterfactuals,
        backgrounds=tuple(names),
        classes=CLASSES,
        photos=available_photos(split),
        split=split,
        size=size,
        seed=seed,
    )
