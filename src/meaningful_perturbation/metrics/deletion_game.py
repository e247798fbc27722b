"""Deletion game with boxes (Fong & Vedaldi 2017 §5.3): the smallest box whose blur suppresses the class.

For each threshold ``t`` the saliency, min–max normalised per image, is cut at ``t``; the
tight box around the surviving pixels is blurred (the rest of the image is left as is)
and the class probability re-measured. With

* ``p_clean`` the probability of the image,
* ``p_blur`` the probability of the whole image blurred,
* ``p_box`` the probability with only the box blurred,

the suppression of a box is, by default (``suppression="probability"``, the 2017 paper's
definition, §5.3 / Table 2), ``1 − p_box / p_clean``: a box reaches level ``s`` when its blur
lowers the class probability to ``(1 − s)·p_clean`` or below. The explicit, non-default
``suppression="relative-to-blur"`` measures instead the share of the drop that blurring the
whole image gives, ``1 − (p_box − p_blur) / (p_clean − p_blur)`` (the whole-image box then
always reaches every level). For every level (80, 90, 95, 99 %) the result is the area of the
smallest box whose suppression reaches the level. A saliency map that points at the evidence
gives small boxes: **lower is better**.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import InputError
from ._common import check_images_and_saliency, check_positive_int, class_probabilities, describe, resolve_target
from .faithfulness import DEFAULT_BLUR_SIGMA, make_substrate
from .localisation import _box_mask
from .weak_localisation import _tight_boxes

__all__ = ["DEFAULT_LEVELS", "DEFAULT_THRESHOLDS", "SUPPRESSION_MODES", "deletion_game_box", "threshold_boxes"]

# Suppression levels reported in the 2017 paper (§5.3, Table 2 uses 99 %).
DEFAULT_LEVELS = (0.8, 0.9, 0.95, 0.99)
# Thresholds on the min–max normalised saliency: 0, 0.01, ..., 1.
DEFAULT_THRESHOLDS = tuple(i / 100 for i in range(101))
# How a box's suppression is measured: the paper's (2017 §5.3: the probability drops to
# (1 - s) * p_clean), or relative to the drop a whole-image blur gives (not the paper's).
SUPPRESSION_MODES = ("probability", "relative-to-blur")


def threshold_boxes(saliency: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Tight boxes around ``ŝ ≥ t`` for every threshold, ``ŝ = (s − min)/(max − min)``.

    Args:
        saliency: ``(N, H, W)``.
        thresholds: ``(T,)`` in [0, 1].

    Returns:
        ``(N, T, 4)`` long half-open boxes ``(x0, y0, x1, y1)``; ``(0, 0, 0, 0)`` when
        nothing survives (a constant map survives only ``t = 0``).
    """
    n, h, w = saliency.shape
    flat = saliency.reshape(n, -1).double()
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    norm = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-300), torch.zeros_like(flat)).view(n, 1, h, w)
    keep = norm >= thresholds.to(norm).view(1, -1, 1, 1)  # (N, T, H, W)
    t = keep.shape[1]
    return _tight_boxes(keep.reshape(n * t, h, w)).view(n, t, 4)


def deletion_game_box(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | int,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    thresholds: Sequence[float] | torch.Tensor | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    batch_size: int = 64,
    head: str = "auto",
    suppression: str = "probability",
    return_probabilities: bool = False,
) -> dict[float, torch.Tensor] | tuple[dict[float, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Area of the smallest saliency-derived box whose blurring suppresses the class (2017 §5.3).

    Boxes come from :func:`threshold_boxes` (one per threshold; identical boxes are
    evaluated once). Inside a box the image is replaced by its Gaussian blur
    (``blur_sigma`` px, 10 px as in the paper at 224 px). See the module docstring for the
    normalised score ``s`` and the suppression ``1 − s``. **Lower is better.**

    Args:
        model: ``(B, C, H, W) -> (B, classes)`` logits.
        x: ``(N, C, H, W)`` normalised images.
        saliency: ``(N, H, W)``.
        target: ``(N,)`` long classes (or one int).
        levels: suppression levels in (0, 1].
        thresholds: thresholds on the normalised saliency; default 0, 0.01, ..., 1.
        blur_sigma: blur inside the box, pixels.
        batch_size: images per model call.
        head: how the model's output is read (``"auto"``, ``"logits"``, ``"probabilities"``,
            ``"sigmoid"``, ``"sigmoid-probabilities"``; see ``meaningful_perturbation.core.head``).
        suppression: ``"probability"`` (default; 2017 §5.3: level ``s`` is reached when
            ``p_box ≤ (1 − s)·p_clean``) or ``"relative-to-blur"`` (reached when
            ``(p_box − p_blur) / (p_clean − p_blur) ≤ 1 − s``; not the paper's definition).
        return_probabilities: also return ``p_clean`` and ``p_blur`` (``(N,)`` float64 each,
            the class probability of the image and of the whole image blurred).

    Returns:
        ``{level: (N,) float64 area in px²}`` (with ``return_probabilities``: the tuple
        ``(areas, p_clean, p_blur)``). ``inf`` where no box reaches the level (blurring even
        the whole image does not suppress enough, or the saliency boxes miss the evidence);
        ``nan`` where the image cannot be scored: ``p_clean = 0`` (``"probability"``: nothing
        to suppress) or ``p_clean ≤ p_blur`` (``"relative-to-blur"``: blurring the whole
        image does not lower the probability).

    Raises:
        InputError: a model that is not callable, images and saliency of mismatched shapes,
            levels outside (0, 1], thresholds outside [0, 1], an unknown ``suppression``.
    """
    if not callable(model):
        raise InputError(f"model: expected a callable (N, C, H, W) -> (N, classes), got {describe(model)}")
    x, saliency = check_images_and_saliency(x, saliency)
    n, c, h, w = x.shape
    target = resolve_target(target, n, x.device)
    batch_size = check_positive_int(batch_size, "batch_size")
    lv = [float(v) for v in levels] if isinstance(levels, Sequence) and not isinstance(levels, str) else None
    if not lv or not all(0 < v <= 1 for v in lv):
        raise InputError(f"levels: expected a non-empty sequence of numbers in (0, 1], got {describe(levels)}")
    if suppression not in SUPPRESSION_MODES:
        raise InputError(f"suppression: expected one of {', '.join(SUPPRESSION_MODES)}, got {describe(suppression)}")
    th = torch.as_tensor(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=torch.float64)
    if th.dim() != 1 or th.numel() == 0 or not ((th >= 0) & (th <= 1)).all():
        raise InputError(f"thresholds: expected a non-empty 1-D sequence in [0, 1], got {describe(thresholds)}")

    blurred = make_substrate(x, "blur", blur_sigma)
    boxes = threshold_boxes(saliency, th.to(x.device))  # (N, T, 4)
    t = boxes.shape[1]
    img = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, t, 1)
    keys = torch.cat([img, boxes], dim=2).view(n * t, 5)
    uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)

    def make_batch(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = uniq[q]
        i = k[:, 0]
        inside = _box_mask(k[:, 1:], h, w).unsqueeze(1)  # (B, 1, H, W)
        return torch.where(inside, blurred[i], x[i]), target[i]

    p_box = class_probabilities(model, make_batch, uniq.shape[0], batch_size, x.device, head)
    p_box = p_box.double()[inverse].view(n, t)
    both = torch.cat([x, blurred])
    p_ends = class_probabilities(
        model, lambda q: (both[q], target[q % n]), 2 * n, batch_size, x.device, head
    ).double()
    p_clean, p_blur = p_ends[:n], p_ends[n:]
    if suppression == "probability":
        denom = p_clean.unsqueeze(1)
        achieved = 1.0 - p_box / torch.where(denom > 0, denom, torch.ones_like(denom))
    else:
        denom = (p_clean - p_blur).unsqueeze(1)
        achieved = 1.0 - (p_box - p_blur.unsqueeze(1)) / torch.where(denom > 0, denom, torch.ones_like(denom))
    scorable = denom.squeeze(1) > 0
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).double()
    out = {}
    for level in lv:
        reached = achieved >= level - 1e-12  # float tolerance: p_box = (1 - s) p_clean reaches s
        best = torch.where(reached, area, torch.full_like(area, math.inf)).amin(dim=1)
        out[level] = torch.where(scorable, best, torch.full_like(best, math.nan))
    if return_probabilities:
        return out, p_clean, p_blur
    return out
