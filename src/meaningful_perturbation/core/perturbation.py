"""Perturbation operators: stacks of increasingly perturbed copies of an image.

A perturbation turns a batch ``x`` of shape ``(N, C, H, W)`` into *levels* of shape
``(N, L, C, H, W)``: level ``L-1`` is ``x`` itself and level ``0`` is the most perturbed
copy. :func:`blend` then reads, for every pixel ``u`` and mask value ``m(u)`` in [0, 1],
the position ``p = m(u)·(L-1)`` in that stack and interpolates linearly between the two
neighbouring levels. Hence

* ``blend(levels, 1) == x`` exactly and ``blend(levels, 0) == levels[:, 0]``;
* ``L = 2`` is the classic ``m·x + (1-m)·x_pert`` of Fong & Vedaldi (2017, §4.1);
* ``L = 8`` with ``σ_l = σ_max·(1 - l/(L-1))`` approximates the blur whose width is
  modulated by the mask, ``σ(u) = σ0·(1 - m(u))`` (2017 §4.1; the 2019 paper's blur
  pyramid uses the same construction with ``σ_max = 20`` px).

All functions are pure, differentiable tensor code that follows ``x.device``/``x.dtype``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_kernel1d",
    "gaussian_blur",
    "blur_levels",
    "constant_levels",
    "noise_levels",
    "fade_levels",
    "median_blur",
    "blend",
    "shift",
]


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel of standard deviation ``sigma`` (pixels).

    The radius is ``ceil(truncate·σ)`` (scipy's convention), so the kernel has
    ``2·radius + 1`` taps and sums to 1.
    """
    radius = max(int(math.ceil(truncate * float(sigma))), 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = k / k.sum()
    return k.to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigma: float, *, truncate: float = 4.0, padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``x``.

    Args:
        x: ``(..., H, W)`` tensor with at least 3 dimensions (e.g. ``(N, C, H, W)``).
        sigma: standard deviation in pixels; ``sigma <= 0`` returns ``x`` unchanged.
        truncate: kernel radius in units of ``sigma``.
        padding: ``"reflect"`` (default; falls back to ``"replicate"`` when the image is
            smaller than the kernel radius) or ``"replicate"``. Both keep a constant
            image constant and a [0, 1] image inside [0, 1].

    Returns:
        Tensor of the same shape, dtype and device as ``x``.
    """
    if sigma <= 0:
        return x
    shape = x.shape
    h, w = shape[-2], shape[-1]
    y = x.reshape(-1, 1, h, w)
    k = gaussian_kernel1d(sigma, truncate=truncate, dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    mode = padding if (padding != "reflect" or (r < h and r < w)) else "replicate"
    y = F.pad(y, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(shape)


def blur_levels(x: torch.Tensor, sigma_max: float, num_levels: int) -> torch.Tensor:
    """Blur pyramid: ``num_levels`` copies with ``σ_l = σ_max·(1 - l/(L-1))``.

    Level ``L-1`` is ``x`` itself (σ = 0), level 0 is blurred with ``σ_max``.

    Args:
        x: ``(N, C, H, W)``.
        sigma_max: blur of the most perturbed level, in pixels.
        num_levels: ``L >= 2``.

    Returns:
        ``(N, L, C, H, W)``.
    """
    L = int(num_levels)
    levels = [gaussian_blur(x, sigma_max * (1.0 - l / (L - 1))) for l in range(L - 1)]
    levels.append(x)
    return torch.stack(levels, dim=1)


def constant_levels(x: torch.Tensor) -> torch.Tensor:
    """Two levels: each image's mean colour, then the image (2017 §4.1 "constant")."""
    mean = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    return torch.stack([mean, x], dim=1)


def noise_levels(x: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """Two levels: i.i.d. Gaussian noise ``η ~ N(0, std²)``, then the image (2017 §4.1 "noise").

    One noise field of shape ``(1, C, H, W)`` is drawn and shared by the batch, so the
    result for an image does not depend on which other images share its batch.
    """
    n, c, h, w = x.shape
    eta = torch.randn((1, c, h, w), generator=generator, dtype=torch.float32, device="cpu")
    eta = (eta * std).to(device=x.device, dtype=x.dtype).expand_as(x)
    return torch.stack([eta, x], dim=1)


def fade_levels(x: torch.Tensor) -> torch.Tensor:
    """Two levels: zero (the dataset mean in normalised space), then the image (2019 "fade")."""
    return torch.stack([torch.zeros_like(x), x], dim=1)


def median_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter with a ``size × size`` window and replicated borders (OpenCV's ``medianBlur``).

    Args:
        x: ``(N, C, H, W)``.
        size: odd window size.
    """
    n, c, h, w = x.shape
    r = size // 2
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
    patches = F.unfold(y, size)  # (NC, size², H·W)
    med = patches.median(dim=1).values
    return med.reshape(n, c, h, w)


def blend(levels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable per-pixel interpolation between neighbouring perturbation levels.

    Args:
        levels: ``(N, L, C, H, W)``; level ``L-1`` is the clean image.
        mask: ``(N, K, 1, H, W)`` in [0, 1] (1 = keep).

    Returns:
        ``(N, K, C, H, W)``: ``x̃(u) = (1-w)·levels[i](u) + w·levels[i+1](u)`` with
        ``p = m(u)·(L-1)``, ``i = min(floor(p), L-2)``, ``w = p - i``.
    """
    n, L, c, h, w = levels.shape
    k = mask.shape[1]
    if L == 2:
        lo = levels[:, :1]  # (N,1,C,H,W)
        hi = levels[:, 1:]
        # torch.lerp computes hi - (hi - lo)·(1 - w) for w >= 0.5: exactly x at m = 1.
        return torch.lerp(lo, hi, mask.to(lo.dtype))
    p = mask * (L - 1)
    idx = p.detach().floor().clamp_(0, L - 2)
    frac = p - idx
    idx = idx.long().expand(n, k, c, h, w)
    src = levels.unsqueeze(1).expand(n, k, L, c, h, w)
    lo = torch.gather(src, 2, idx.unsqueeze(2)).squeeze(2)
    hi = torch.gather(src, 2, (idx + 1).unsqueeze(2)).squeeze(2)
    return torch.lerp(lo, hi, frac.to(lo.dtype))


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dimensions by ``(dy, dx)`` pixels with replicated borders.

    ``out[..., i, j] = x[..., clamp(i - dy), clamp(j - dx)]``.
    """
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2], x.shape[-1]
    shape = x.shape
    y = x.reshape(-1, 1, h, w) if x.dim() != 4 else x
    pt, pb = max(dy, 0), max(-dy, 0)
    pl, pr = max(dx, 0), max(-dx, 0)
    y = F.pad(y, (pl, pr, pt, pb), mode="replicate")
    y = y[..., pb : pb + h, pr : pr + w]
    return y.reshape(shape)
