"""Localisation metrics: does the saliency fall on the ground-truth object?

All functions take ``saliency`` of shape ``(N, H, W)`` ("higher = more important") and
boolean ground-truth masks of the same shape, run batched on ``saliency.device`` and are
deterministic. They measure *localisation*, not faithfulness (see
:mod:`~meaningful_perturbation.metrics.faithfulness`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ._common import check_mask, check_saliency, describe
from ._ranks import average_ranks

__all__ = [
    "PointingResult",
    "pointing_game",
    "scaled_tolerance",
    "rank_accuracy",
    "auroc",
    "distractor_mass",
    "energy_in_box",
    "energy_in_mask",
]

# Pointing-game tolerance: 15 px at 224 px (Zhang et al. 2016 "Excitation backprop",
# the protocol of the 2019 extremal-perturbation pointing benchmark).
REF_TOLERANCE_PX = 15.0
REF_SIZE_PX = 224


@dataclass(frozen=True)
class PointingResult:
    """Outcome of :func:`pointing_game`. Higher accuracies are better.

    Attributes:
        hits: ``(N,)`` bool, True where the saliency maximum hit the object.
        valid: ``(N,)`` bool, False where the ground truth is empty (such images are
            left out of every average, as in the pointing benchmark, and ``hits`` is False).
        points: ``(N, 2)`` long, the ``(row, col)`` of each saliency maximum.
        accuracy: mean of ``hits`` over valid images (NaN if none is valid).
        class_accuracy: ``{label: accuracy}`` over the valid images of each label, or
            ``None`` when no ``labels`` were given.
        mean_class_accuracy: mean of ``class_accuracy`` over labels (the benchmark's
            headline number), or ``None`` when no ``labels`` were given.
    """

    hits: torch.Tensor
    valid: torch.Tensor
    points: torch.Tensor
    accuracy: float
    class_accuracy: dict[int, float] | None = field(default=None)
    mean_class_accuracy: float | None = None


def scaled_tolerance(
    size: int | tuple[int, int], ref_px: float = REF_TOLERANCE_PX, ref_size: int = REF_SIZE_PX
) -> float:
    """Pointing tolerance scaled to an image size: ``ref_px · side / ref_size``.

    Args:
        size: image side in pixels, or ``(H, W)`` (the shorter side is used).
        ref_px: tolerance at the reference size (15 px).
        ref_size: reference side (224 px).

    Returns:
        Tolerance in pixels of ``size``.

    Example:
        >>> scaled_tolerance(112)
        7.5
        >>> scaled_tolerance((64, 96))
        4.285714285714286
    """
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise InputError(f"size: expected an int or (H, W), got {describe(size)}")
        side = min(int(size[0]), int(size[1]))
    elif isinstance(size, int) and not isinstance(size, bool):
        side = size
    else:
        raise InputError(f"size: expected an int or (H, W), got {describe(size)}")
    if side <= 0 or ref_size <= 0 or ref_px < 0:
        raise InputError(
            f"size: expected positive sizes and ref_px >= 0, got size={size}, ref_size={ref_size}, ref_px={ref_px}"
        )
    return float(ref_px) * side / float(ref_size)


def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h, device=device).view(h, 1).expand(h, w)
    cols = torch.arange(w, device=device).view(1, w).expand(h, w)
    return rows, cols


def pointing_game(
    saliency: torch.Tensor,
    gt: torch.Tensor,
    *,
    tolerance: float = REF_TOLERANCE_PX,
    labels: torch.Tensor | None = None,
) -> PointingResult:
    """Pointing game (Zhang et al. 2016): is the saliency maximum on (or near) the object?

    The point ``p`` is the argmax of ``saliency``; ties go to the first maximum in raster
    order (row-major). With ``d = min_{g ∈ G} ‖p - g‖₂`` the Euclidean distance in pixels
    to the ground-truth pixels ``G``, the image is a hit iff ``d < tolerance`` (strict) or
    ``d == 0``; hence ``tolerance=0`` is the exact game (``p ∈ G``). Higher is better.

    The tolerance is in pixels of the given resolution; use :func:`scaled_tolerance` to
    carry the benchmark's 15 px at 224 px to other sizes.

    Args:
        saliency: ``(N, H, W)`` float.
        gt: ``(N, H, W)`` bool object masks; images with an empty mask are not counted.
        tolerance: distance in pixels (>= 0).
        labels: optional ``(N,)`` integer class of each image, for the per-class
            average (mean over classes of each class's accuracy).

    Returns:
        :class:`PointingResult`.

    Example:
        >>> s = torch.zeros(1, 4, 4); s[0, 0, 3] = 1.0
        >>> gt = torch.zeros(1, 4, 4, dtype=torch.bool); gt[0, 2, 3] = True
        >>> pointing_game(s, gt, tolerance=0).accuracy, pointing_game(s, gt, tolerance=2.5).accuracy
        (0.0, 1.0)
    """
    saliency = check_saliency(saliency)
    gt = check_mask(gt, saliency.shape, "gt", saliency.device)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise InputError(f"tolerance: expected a number >= 0 (pixels), got {describe(tolerance)}")
    n, h, w = saliency.shape
    flat = saliency.reshape(n, -1)
    # torch.argmax returns the first maximal index: raster-order tie-break.
    idx = flat.argmax(dim=1)
    pr, pc = torch.div(idx, w, rounding_mode="floor"), idx % w
    rows, cols = _pixel_grid(h, w, saliency.device)
    d2 = (rows.unsqueeze(0) - pr.view(n, 1, 1)) ** 2 + (cols.unsqueeze(0) - pc.view(n, 1, 1)) ** 2
    big = torch.iinfo(d2.dtype).max
    dmin2 = torch.where(gt, d2, torch.full_like(d2, big)).reshape(n, -1).amin(dim=1)
    valid = gt.reshape(n, -1).any(dim=1)
    tol2 = float(tolerance) ** 2
    hits = valid & ((dmin2.double() < tol2) | (dmin2 == 0))
    accuracy = float(hits[valid].double().mean()) if bool(valid.any()) else math.nan

    class_acc = None
    mean_class = None
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
            raise InputError(f"labels: expected an (N,) = ({n},) integer tensor, got {describe(labels)}")
        lab = labels.to(saliency.device)
        class_acc = {}
        for c in torch.unique(lab[valid]).tolist():
            sel = valid & (lab == c)
            class_acc[int(c)] = float(hits[sel].double().mean())
        mean_class = float(sum(class_acc.values()) / len(class_acc)) if class_acc else math.nan
    points = torch.stack([pr, pc], dim=1)
    return PointingResult(hits, valid, points, accuracy, class_acc, mean_class)


def rank_accuracy(saliency: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy (Arras et al. 2022): share of the top-``|G|`` pixels inside ``G``.

    Pixels are ranked by decreasing saliency, ties by raster index (a stable sort), and
    the first ``K = |G|`` are taken. Higher is better; 1 means the ``K`` most salient
    pixels are exactly the object.

    Args:
        saliency: ``(N, H, W)`` float.
        gt: ``(N, H, W)`` bool.

    Returns:
        ``(N,)`` float64 in [0, 1]; NaN where ``G`` is empty.

    Example:
        >>> s = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
        >>> gt = torch.tensor([[[True, False], [True, False]]])
        >>> rank_accuracy(s, gt)
        tensor([0.5000], dtype=torch.float64)
    """
    saliency = check_saliency(saliency)
    gt = check_mask(gt, saliency.shape, "gt", saliency.device)
    n = saliency.shape[0]
    flat = saliency.reshape(n, -1)
    g = gt.reshape(n, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    k = g.sum(dim=1)
    pos = torch.arange(flat.shape[1], device=flat.device).unsqueeze(0)
    inside = (g.gather(1, order) & (pos < k.unsqueeze(1))).sum(dim=1).double()
    out = inside / k.double()
    return torch.where(k > 0, out, torch.full_like(out, math.nan))


def auroc(saliency: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of saliency values as a score separating ``G`` from the rest.

    Computed exactly by the Mann–Whitney statistic with average ranks, so ties between a
    positive and a negative pixel count 1/2:
    ``AUROC = (Σ_{u∈G} rank(u) − |G|(|G|+1)/2) / (|G|·|Ḡ|)``. Higher is better (1 = every
    object pixel above every background pixel, 0.5 = chance or a constant map).

    Args:
        saliency: ``(N, H, W)`` float.
        gt: ``(N, H, W)`` bool.

    Returns:
        ``(N,)`` float64 in [0, 1]; NaN where ``G`` is empty or the whole image.

    Example:
        >>> s = torch.tensor([[[3.0, 1.0], [1.0, 0.0]]])
        >>> gt = torch.tensor([[[True, True], [False, False]]])
        >>> auroc(s, gt)  # pairs: (3>1) (3>0) (1=1 → ½) (1>0)
        tensor([0.8750], dtype=torch.float64)
    """
    saliency = check_saliency(saliency)
    gt = check_mask(gt, saliency.shape, "gt", saliency.device)
    n = saliency.shape[0]
    ranks = average_ranks(saliency.reshape(n, -1))
    g = gt.reshape(n, -1)
    n_pos = g.sum(dim=1).double()
    n_neg = g.shape[1] - n_pos
    r_pos = (ranks * g).sum(dim=1)
    u = r_pos - n_pos * (n_pos + 1) / 2.0
    out = u / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), out, torch.full_like(out, math.nan))


def distractor_mass(saliency: torch.Tensor, distractors: torch.Tensor) -> torch.Tensor:
    """Share of the (min-subtracted) saliency mass lying on label-free distractors.

    ``s' = s − min(s)`` per image; ``mass = Σ_{u∈D} s'(u) / Σ_u s'(u)``, and 0 for a
    constant map. Lower is better.

    Args:
        saliency: ``(N, H, W)`` float.
        distractors: ``(N, H, W)`` bool distractor masks (may be empty: mass 0).

    Returns:
        ``(N,)`` float64 in [0, 1].

    Example:
        >>> s = torch.tensor([[[1.0, 3.0], [2.0, 1.0]]])
        >>> d = torch.tensor([[[False, False], [True, True]]])
        >>> distractor_mass(s, d)  # s' = [[0, 2], [1, 0]]
        tensor([0.3333], dtype=torch.float64)
    """
    saliency = check_saliency(saliency)
    distractors = check_mask(distractors, saliency.shape, "distractors", saliency.device)
    n = saliency.shape[0]
    flat = saliency.reshape(n, -1).double()
    s = flat - flat.amin(dim=1, keepdim=True)
    total = s.sum(dim=1)
    on = (s * distractors.reshape(n, -1)).sum(dim=1)
    return torch.where(total > 0, on / total.clamp_min(1e-300), torch.zeros_like(total))


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(N, H, W)`` bool masks of half-open boxes ``(x0, y0, x1, y1)``."""
    rows, cols = _pixel_grid(h, w, boxes.device)
    b = boxes.to(torch.float64)
    x0, y0, x1, y1 = (b[:, i].view(-1, 1, 1) for i in range(4))
    return (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)


def check_boxes(boxes: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """``boxes`` must be ``(n, 4)`` ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``."""
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes) if isinstance(boxes, (list, tuple)) else boxes
    if not isinstance(boxes, torch.Tensor) or boxes.shape != (n, 4):
        raise InputError(f"{name}: expected an ({n}, 4) tensor of (x0, y0, x1, y1) boxes, got {describe(boxes)}")
    inverted = (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()
    if not torch.isfinite(boxes.double()).all() or inverted:
        raise InputError(f"{name}: expected finite boxes with x0 <= x1 and y0 <= y1, got {boxes.tolist()}")
    return boxes.to(device)


def energy_in_mask(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the positive saliency energy inside ``mask``.

    ``E = Σ_{u∈M} max(s(u), 0) / Σ_u max(s(u), 0)``, 0 when the map has no positive
    value. Higher is better.

    Args:
        saliency: ``(N, H, W)`` float.
        mask: ``(N, H, W)`` bool.

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    saliency = check_saliency(saliency)
    mask = check_mask(mask, saliency.shape, "mask", saliency.device)
    n = saliency.shape[0]
    s = saliency.reshape(n, -1).double().clamp_min(0)
    total = s.sum(dim=1)
    inside = (s * mask.reshape(n, -1)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))


def energy_in_box(saliency: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): positive energy share in a box.

    Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: the box covers columns
    ``x0 ≤ col < x1`` and rows ``y0 ≤ row < y1`` (a box given by inclusive pixel indices
    ``xmin..xmax`` is ``(xmin, ymin, xmax + 1, ymax + 1)``). Higher is better.

    Args:
        saliency: ``(N, H, W)`` float.
        boxes: ``(N, 4)`` one box per image.

    Returns:
        ``(N,)`` float64 in [0, 1]; see :func:`energy_in_mask`.

    Example:
        >>> s = torch.tensor([[[1.0, 1.0, 0.0], [2.0, -5.0, 0.0]]])
        >>> energy_in_box(s, torch.tensor([[0, 0, 1, 2]]))  # column 0: (1 + 2) / 4
        tensor([0.7500], dtype=torch.float64)
    """
    saliency = check_saliency(saliency)
    n, h, w = saliency.shape
    boxes = check_boxes(boxes, n, "boxes", saliency.device)
    return energy_in_mask(saliency, _box_mask(boxes, h, w))
