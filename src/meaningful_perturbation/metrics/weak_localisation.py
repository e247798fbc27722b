"""Weak localisation (Fong & Vedaldi 2017 §5.2, the ImageNet localisation protocol).

A saliency map is thresholded, one box is drawn around what survives, and the image
counts as localised when that box overlaps a ground-truth box with IoU ≥ 0.5. The
threshold parameter ``α`` is chosen on held-out images (:func:`choose_alpha`).

Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: a box covers the columns
``x0 ≤ col < x1`` and rows ``y0 ≤ row < y1``, its area is ``(x1 − x0)(y1 − y0)``. A box
given by inclusive pixel indices (ImageNet/VOC XML ``xmin..xmax``, 0-based) is
``(xmin, ymin, xmax + 1, ymax + 1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ._common import check_fraction, check_saliency, describe

__all__ = [
    "THRESHOLD_METHODS",
    "DEFAULT_ALPHAS",
    "threshold_saliency",
    "saliency_to_box",
    "box_iou",
    "weak_localisation",
    "choose_alpha",
]

THRESHOLD_METHODS = ("value", "energy", "mean")

# α grids searched on held-out images (Fong & Vedaldi 2017 §5.2: value and energy
# α ∈ [0 : 0.05 : 0.95], mean α ∈ [0 : 0.5 : 10]).
DEFAULT_ALPHAS = {
    "value": tuple(round(0.05 * i, 2) for i in range(20)),
    "energy": tuple(round(0.05 * i, 2) for i in range(20)),
    "mean": tuple(0.5 * i for i in range(21)),
}


def _check_method(method: str) -> None:
    if method not in THRESHOLD_METHODS:
        raise InputError(f"method: expected one of {THRESHOLD_METHODS}, got {method!r}")


def _check_alpha(alpha: float, method: str) -> float:
    if method == "mean":
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha >= 0):
            raise InputError(f"alpha: expected a number >= 0 for method 'mean', got {describe(alpha)}")
        return float(alpha)
    return check_fraction(alpha, "alpha")


def threshold_saliency(saliency: torch.Tensor, method: str = "value", alpha: float = 0.5) -> torch.Tensor:
    """Pixels that survive thresholding: ``(N, H, W)`` bool.

    * ``"value"``: ``s ≥ α·max(s)``.
    * ``"energy"``: the most salient pixels holding a fraction ``α`` of the energy
      ``Σ max(s, 0)``: with ``v`` the value of the pixel at which the descending cumulative
      energy first reaches ``α·Σ``, keep ``s ≥ v`` (ties with ``v`` are all kept, so the
      set does not depend on pixel order). ``α = 0`` keeps the maximum only; a map with no
      positive value keeps everything.
    * ``"mean"``: ``s ≥ α·mean(s)``.

    Args:
        saliency: ``(N, H, W)`` float.
        method: ``"value"``, ``"energy"`` or ``"mean"``.
        alpha: α in [0, 1] (value, energy) or >= 0 (mean).
    """
    saliency = check_saliency(saliency)
    _check_method(method)
    alpha = _check_alpha(alpha, method)
    n = saliency.shape[0]
    flat = saliency.reshape(n, -1).double()
    if method == "value":
        keep = flat >= alpha * flat.amax(dim=1, keepdim=True)
    elif method == "mean":
        keep = flat >= alpha * flat.mean(dim=1, keepdim=True)
    else:
        e = flat.clamp_min(0)
        v = torch.sort(e, dim=1, descending=True).values
        cum = v.cumsum(dim=1)
        total = cum[:, -1:]
        # First sorted position whose cumulative energy reaches α·total (α = 0 → position 0).
        reached = cum >= alpha * total
        k = reached.double().argmax(dim=1, keepdim=True)
        cut = v.gather(1, k)
        keep = torch.where(total > 0, e >= cut, torch.ones_like(e, dtype=torch.bool))
    return keep.view_as(saliency)


def _tight_boxes(keep: torch.Tensor) -> torch.Tensor:
    """Tight half-open box around the True pixels of each ``(N, H, W)`` mask; zeros if none."""
    n, h, w = keep.shape
    rows = keep.any(dim=2)  # (N, H)
    cols = keep.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=keep.device)
    ar_w = torch.arange(w, device=keep.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(dim=1)
    return torch.where(empty.unsqueeze(1), torch.zeros_like(boxes), boxes)


def _largest_component(keep: torch.Tensor) -> torch.Tensor:
    """Keep only the largest 8-connected component of each mask (ties: lowest label)."""
    try:
        from scipy import ndimage
    except ImportError as e:  # pragma: no cover - scipy is in the test extras
        raise InputError("component: 'largest' needs scipy (pip install scipy); use component='all'") from e
    out = np.zeros(tuple(keep.shape), dtype=bool)
    arr = keep.cpu().numpy()
    for i in range(arr.shape[0]):
        lab, num = ndimage.label(arr[i], structure=np.ones((3, 3), dtype=int))
        if num == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        out[i] = lab == (int(np.argmax(sizes)) + 1)
    return torch.from_numpy(out).to(keep.device)


def saliency_to_box(
    saliency: torch.Tensor,
    method: str = "value",
    alpha: float = 0.5,
    *,
    component: str = "all",
) -> torch.Tensor:
    """One bounding box per saliency map (Fong & Vedaldi 2017 §5.2).

    Threshold with :func:`threshold_saliency`, then take the tightest box around
    either all surviving pixels (``component="all"``, the default: "one box around what
    survives") or only the largest 8-connected component (``component="largest"``, the
    CAM-style variant; needs scipy).

    Args:
        saliency: ``(N, H, W)`` float.
        method: ``"value"`` (α·max), ``"energy"`` (α of the mass) or ``"mean"`` (α·mean).
        alpha: the threshold parameter.
        component: ``"all"`` or ``"largest"``.

    Returns:
        ``(N, 4)`` long boxes ``(x0, y0, x1, y1)`` (half-open); ``(0, 0, 0, 0)`` where
        nothing survives.

    Example:
        >>> s = torch.zeros(1, 4, 5); s[0, 1:3, 2:4] = 1.0
        >>> saliency_to_box(s, "value", 0.5)
        tensor([[2, 1, 4, 3]])
    """
    keep = threshold_saliency(saliency, method, alpha)
    if component == "largest":
        keep = _largest_component(keep)
    elif component != "all":
        raise InputError(f"component: expected 'all' or 'largest', got {component!r}")
    return _tight_boxes(keep)


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of half-open boxes, broadcast over leading dimensions.

    Args:
        boxes_a: ``(..., 4)`` ``(x0, y0, x1, y1)``.
        boxes_b: ``(..., 4)``, broadcastable with ``boxes_a`` (use ``a[:, None]`` and
            ``b[None]`` for the pairwise matrix).

    Returns:
        ``(...)`` float64 IoU in [0, 1]; 0 when the union is empty.

    Example:
        >>> box_iou(torch.tensor([0, 0, 2, 2]), torch.tensor([1, 0, 3, 2]))
        tensor(0.3333, dtype=torch.float64)
    """
    for name, b in (("boxes_a", boxes_a), ("boxes_b", boxes_b)):
        if not isinstance(b, torch.Tensor) or b.dim() == 0 or b.shape[-1] != 4:
            raise InputError(f"{name}: expected a (..., 4) tensor of (x0, y0, x1, y1) boxes, got {describe(b)}")
    a = boxes_a.double()
    b = boxes_b.to(a.device).double()
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union))


def _check_gt_boxes(gt_boxes: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    if isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 2 and gt_boxes.shape == (n, 4):
        return [b.view(1, 4) for b in gt_boxes]
    if isinstance(gt_boxes, (str, bytes)) or not isinstance(gt_boxes, Sequence) or len(gt_boxes) != n:
        raise InputError(
            f"gt_boxes: expected a list of {n} (K_i, 4) box tensors (one per image), got {describe(gt_boxes)}"
        )
    out = []
    for i, b in enumerate(gt_boxes):
        b = torch.as_tensor(b) if not isinstance(b, torch.Tensor) else b
        if b.dim() == 1 and b.shape[0] == 4:
            b = b.view(1, 4)
        if b.dim() != 2 or b.shape[1] != 4:
            raise InputError(f"gt_boxes[{i}]: expected a (K, 4) tensor of (x0, y0, x1, y1) boxes, got {describe(b)}")
        out.append(b)
    return out


def _iou_with_gt(pred: torch.Tensor, gt: list[torch.Tensor]) -> torch.Tensor:
    """Best IoU of each predicted box ``(N, 4)`` with its image's ground-truth boxes: ``(N,)``."""
    out = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    for i, g in enumerate(gt):
        if g.shape[0] > 0:
            out[i] = box_iou(pred[i].view(1, 4), g.to(pred.device)).max()
    return out


def weak_localisation(
    saliency: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    *,
    method: str = "value",
    alpha: float = 0.5,
    iou_threshold: float = 0.5,
    component: str = "all",
) -> torch.Tensor:
    """Weak localisation: is the box from :func:`saliency_to_box` correct (IoU ≥ 0.5)?

    The localisation error reported in the 2017 paper is ``1 − correct.mean()``. Higher
    accuracy is better.

    Args:
        saliency: ``(N, H, W)`` float.
        gt_boxes: one ``(K_i, 4)`` tensor of ground-truth boxes per image (an image with
            no box is never correct), or an ``(N, 4)`` tensor (one box each).
        method: ``"value"``, ``"energy"`` or ``"mean"``.
        alpha: threshold parameter (choose it with :func:`choose_alpha`).
        iou_threshold: minimum IoU with any ground-truth box (0.5).
        component: ``"all"`` or ``"largest"`` (see :func:`saliency_to_box`).

    Returns:
        ``(N,)`` bool, True where the image is correctly localised.
    """
    saliency = check_saliency(saliency)
    gt = _check_gt_boxes(gt_boxes, saliency.shape[0])
    iou_threshold = check_fraction(iou_threshold, "iou_threshold")
    pred = saliency_to_box(saliency, method, alpha, component=component)
    return _iou_with_gt(pred, gt) >= iou_threshold


def choose_alpha(
    saliency_heldout: torch.Tensor,
    boxes_heldout: Sequence[torch.Tensor],
    *,
    method: str = "value",
    alphas: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
    component: str = "all",
) -> float:
    """The α with the best weak-localisation accuracy on held-out images.

    Ties go to the first α of ``alphas``. Apply the chosen α to the *other* images.

    Args:
        saliency_heldout: ``(N, H, W)`` saliency of the held-out images.
        boxes_heldout: their ground-truth boxes (as in :func:`weak_localisation`).
        method: ``"value"``, ``"energy"`` or ``"mean"``.
        alphas: candidates; default :data:`DEFAULT_ALPHAS` ``[method]`` (the 2017 grids).
        iou_threshold: IoU needed for a correct box.
        component: ``"all"`` or ``"largest"``.

    Returns:
        The best α (a float).
    """
    saliency_heldout = check_saliency(saliency_heldout, "saliency_heldout")
    _check_method(method)
    gt = _check_gt_boxes(boxes_heldout, saliency_heldout.shape[0])
    grid = DEFAULT_ALPHAS[method] if alphas is None else tuple(alphas)
    if len(grid) == 0:
        raise InputError("alphas: expected at least one candidate α, got an empty sequence")
    best, best_acc = None, -1.0
    for a in grid:
        pred = saliency_to_box(saliency_heldout, method, a, component=component)
        acc = float((_iou_with_gt(pred, gt) >= iou_threshold).double().mean())
        if acc > best_acc:
            best, best_acc = float(a), acc
    return best
