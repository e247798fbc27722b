"""Faithfulness metrics: does removing (or keeping) the salient pixels change the prediction?

Deletion / insertion curves (Petsiuk et al. 2018, RISE) and the minimal sufficient /
destroying area. These measure how well the *ranking* of pixels explains the model, not
localisation: an exact binary object mask can score worse here than a smooth map.

Pixels are ranked by decreasing saliency; ties are broken by raster index (a stable
sort), so every curve is deterministic. A "pixel" is one spatial location: all channels
are replaced together. Model calls run under ``torch.no_grad()`` in chunks of
``batch_size`` images; the model is called as it is (put it in ``eval()`` mode yourself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..core.perturbation import gaussian_blur
from ..errors import InputError
from ._common import (
    check_fraction,
    check_images_and_saliency,
    check_positive_int,
    class_probabilities,
    descending_order,
    describe,
    resolve_target,
    step_counts,
)

__all__ = ["CurveResult", "deletion_insertion", "minimal_area", "make_substrate"]

# Blur substrate: σ = 10 px (Fong & Vedaldi 2017 §4.1, the blur of the 2017 paper at 224 px).
DEFAULT_BLUR_SIGMA = 10.0
# RISE: deletion starts from the image and removes to zero; insertion starts from a blur.
DEFAULT_SUBSTRATE = {"deletion": "zero", "insertion": "blur"}


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve.

    Attributes:
        curve: ``(N, S+1)`` softmax probability of the target after each step
            (``curve[:, 0]``: nothing changed yet).
        fractions: ``(S+1,)`` fraction of pixels deleted (or inserted) at each step,
            from 0 to 1.
        auc: ``(N,)`` trapezoid area under ``curve`` over ``fractions``. Lower is better
            for deletion, higher for insertion.
        mode: ``"deletion"`` or ``"insertion"``.
    """

    curve: torch.Tensor
    fractions: torch.Tensor
    auc: torch.Tensor
    mode: str


def make_substrate(x: torch.Tensor, substrate: str, blur_sigma: float) -> torch.Tensor:
    """The image every pixel is replaced by: zeros (the dataset mean in normalised space) or a blur.

    Args:
        x: ``(N, C, H, W)``.
        substrate: ``"zero"`` or ``"blur"`` (Gaussian, ``blur_sigma`` px, reflect padding).
        blur_sigma: standard deviation of the blur in pixels.

    Returns:
        ``(N, C, H, W)``.
    """
    if substrate == "zero":
        return torch.zeros_like(x)
    if substrate == "blur":
        if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not blur_sigma > 0:
            raise InputError(f"blur_sigma: expected a number > 0 (pixels), got {describe(blur_sigma)}")
        return gaussian_blur(x, float(blur_sigma))
    raise InputError(f"substrate: expected 'zero' or 'blur', got {substrate!r}")


def _rank_maps(saliency: torch.Tensor) -> torch.Tensor:
    """Position of every pixel in the descending order: ``(N, H·W)`` long (0 = most salient)."""
    order = descending_order(saliency)
    n, p = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p, device=order.device).expand(n, p))
    return rank


def _curves(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor,
    sub: torch.Tensor,
    counts: torch.Tensor,
    insertion: bool,
    batch_size: int,
    head: Any = "auto",
) -> torch.Tensor:
    """Probabilities ``(N, S+1)``: after step ``s`` the top ``counts[s]`` pixels come from
    ``sub`` (deletion) or are the only ones from ``x`` (insertion)."""
    n, c, h, w = x.shape
    steps1 = counts.numel()
    rank = _rank_maps(saliency).view(n, 1, h, w)
    src_top, src_rest = (x, sub) if insertion else (sub, x)

    def make_batch(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.div(q, steps1, rounding_mode="floor")
        s = q % steps1
        top = rank[i] < counts[s].view(-1, 1, 1, 1)  # (B, 1, H, W)
        return torch.where(top, src_top[i], src_rest[i]), target[i]

    probs = class_probabilities(model, make_batch, n * steps1, batch_size, x.device, head)
    return probs.view(n, steps1)


def _prepare(model, x, saliency, target, batch_size):
    if not callable(model):
        raise InputError(f"model: expected a callable (N, C, H, W) -> (N, classes), got {describe(model)}")
    x, saliency = check_images_and_saliency(x, saliency)
    target = resolve_target(target, x.shape[0], x.device)
    batch_size = check_positive_int(batch_size, "batch_size")
    return x, saliency, target, batch_size


def deletion_insertion(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | int,
    *,
    mode: str = "deletion",
    substrate: str | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    batch_size: int = 64,
    head: str = "auto",
) -> CurveResult:
    """Deletion or insertion curve and its AUC (Petsiuk et al. 2018, RISE).

    With pixels ranked by decreasing saliency (ties by raster index) and ``n_s`` pixels
    changed after step ``s``:

    * **deletion**: the top ``n_s`` pixels (all channels) are replaced by the substrate;
      the probability should fall fast. **Lower AUC is better.**
    * **insertion**: the image starts as the substrate and the top ``n_s`` pixels are put
      back; the probability should rise fast. **Higher AUC is better.**

    ``curve[i, s] = p(model(x̃_s))[target_i]`` (the class probability read through ``head``:
    softmax of logits by default) and ``auc = trapz(curve, fractions)``
    with ``fractions = n_s / (H·W)`` on [0, 1].

    Step grid: ``steps=S`` gives ``n_s = floor(s·H·W/S)``, ``s = 0..S`` (default S = 100);
    ``step_size=f`` instead removes ``max(1, round(f·H·W))`` pixels per step, the last step
    possibly shorter (RISE used one image row per step: ``step_size=1/H``).

    Args:
        model: ``(B, C, H, W) -> (B, classes)`` logits.
        x: ``(N, C, H, W)`` normalised images.
        saliency: ``(N, H, W)``, higher = more important (moved to ``x.device``).
        target: ``(N,)`` long classes (or one int for all images).
        mode: ``"deletion"`` or ``"insertion"``.
        substrate: ``"zero"`` (0 in normalised space, i.e. the dataset mean) or
            ``"blur"`` (Gaussian blur of ``x`` with ``blur_sigma``). Default: RISE's
            choice, zero for deletion and blur for insertion.
        steps: number of equal steps ``S`` (exclusive with ``step_size``).
        step_size: fraction of the pixels changed per step (exclusive with ``steps``).
        blur_sigma: blur of the substrate in pixels (10 px: 2017 paper at 224 px).
        batch_size: images per model call.
        head: how the model's output is read (``"auto"``, ``"logits"``, ``"probabilities"``,
            ``"sigmoid"``, ``"sigmoid-probabilities"``; see ``meaningful_perturbation.core.head``).

    Returns:
        :class:`CurveResult` with ``curve`` ``(N, S+1)``, ``fractions`` ``(S+1,)``, ``auc`` ``(N,)``.

    Example:
        >>> model = lambda z: torch.stack([z.sum((1, 2, 3)), torch.zeros(len(z))], 1)
        >>> x = torch.ones(1, 1, 2, 2); s = torch.rand(1, 2, 2)
        >>> r = deletion_insertion(model, x, s, 0, steps=4)
        >>> [round(v, 3) for v in r.curve[0].tolist()]
        [0.982, 0.953, 0.881, 0.731, 0.5]
    """
    x, saliency, target, batch_size = _prepare(model, x, saliency, target, batch_size)
    if mode not in DEFAULT_SUBSTRATE:
        raise InputError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    substrate = DEFAULT_SUBSTRATE[mode] if substrate is None else substrate
    sub = make_substrate(x, substrate, blur_sigma)
    num = x.shape[-2] * x.shape[-1]
    counts = step_counts(num, steps, step_size, x.device)
    curve = _curves(model, x, saliency, target, sub, counts, mode == "insertion", batch_size, head)
    fractions = counts.to(torch.float64) / num
    auc = torch.trapezoid(curve.double(), fractions, dim=1)
    return CurveResult(curve=curve, fractions=fractions, auc=auc, mode=mode)


def minimal_area(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor | int,
    *,
    kind: str = "sufficient",
    threshold: float = 0.9,
    substrate: str = "blur",
    steps: int | None = None,
    step_size: float | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    batch_size: int = 64,
    head: str = "auto",
) -> torch.Tensor:
    """Smallest top-ranked fraction of pixels that is sufficient for, or destroys, the prediction.

    With ``p₀`` the clean probability of the target and ``p(f)`` the probability after
    acting on the top-ranked fraction ``f`` of pixels (saliency order, ties by raster index):

    * ``kind="sufficient"``: only the top ``f`` is kept, the rest is the substrate
      (the insertion curve); the result is the smallest ``f`` with ``p(f) ≥ threshold·p₀``.
    * ``kind="destroying"``: the top ``f`` is replaced by the substrate (the deletion
      curve); the smallest ``f`` with ``p(f) ≤ (1 − threshold)·p₀``.

    Fractions come from the grid of :func:`deletion_insertion`: ``f_s = floor(s·H·W/S)/(H·W)``,
    ``s = 0..S`` (default ``S = 100``, i.e. steps of 1 % of the pixels), or ``step_size``.
    ``f = 0`` counts (the substrate alone may keep the class); ``f = 1`` is always
    sufficient. **Lower is better.**

    Args:
        model: ``(B, C, H, W) -> (B, classes)`` logits.
        x: ``(N, C, H, W)`` normalised images.
        saliency: ``(N, H, W)``.
        target: ``(N,)`` long classes (or one int).
        kind: ``"sufficient"`` or ``"destroying"``.
        threshold: share of the clean probability to keep / remove, in (0, 1] (0.9).
        substrate: ``"blur"`` (default) or ``"zero"``.
        steps: number of grid steps (exclusive with ``step_size``).
        step_size: grid spacing as a fraction of the pixels.
        blur_sigma: blur of the substrate in pixels.
        batch_size: images per model call.
        head: how the model's output is read (as in :func:`deletion_insertion`).

    Returns:
        ``(N,)`` float64 fractions in [0, 1]; ``inf`` where no grid fraction qualifies
        (a destroying area can be missing when even the fully perturbed image keeps the class).
    """
    x, saliency, target, batch_size = _prepare(model, x, saliency, target, batch_size)
    if kind not in ("sufficient", "destroying"):
        raise InputError(f"kind: expected 'sufficient' or 'destroying', got {kind!r}")
    threshold = check_fraction(threshold, "threshold", open_low=True)
    sub = make_substrate(x, substrate, blur_sigma)
    num = x.shape[-2] * x.shape[-1]
    counts = step_counts(num, steps, step_size, x.device)
    insertion = kind == "sufficient"
    curve = _curves(model, x, saliency, target, sub, counts, insertion, batch_size, head).double()
    # Clean probability: the last insertion point / the first deletion point is x itself.
    p0 = curve[:, -1:] if insertion else curve[:, :1]
    ok = curve >= threshold * p0 if insertion else curve <= (1.0 - threshold) * p0
    fractions = counts.to(torch.float64) / num
    first = torch.where(ok, fractions.expand_as(curve), torch.full_like(curve, math.inf))
    return first.amin(dim=1)
