"""Mask parameterisations: map optimisation variables ``θ`` to masks in [0, 1].

A mask parameterisation owns the shape of ``θ`` and turns it into

* ``grid``: the mask at the resolution of the parameters, ``(N, K, 1, h, w)``, on which
  the regularisers (L1, TV) are computed, and
* ``full``: the mask at the image resolution, ``(N, K, 1, H, W)``, used to blend.

``θ`` is kept in [0, 1] by clamping after every optimiser step (both papers' code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .perturbation import gaussian_blur

__all__ = ["UpsampledMask"]


@dataclass(frozen=True)
class UpsampledMask:
    """Low-resolution grid upsampled bilinearly to the image, then optionally blurred.

    This is the 2017 parameterisation (authors' code: ``mask_scale=8``, ``blur_mask=5``)
    and, with ``align_corners=True`` and no blur, the seed re-implementation's
    (``UpsamplingBilinear2d`` on a 28×28 mask).

    Attributes:
        grid_size: ``(h, w)`` of the parameter grid.
        image_size: ``(H, W)`` of the image.
        blur_sigma: Gaussian blur of the upsampled mask, in image pixels (0 = none).
        align_corners: passed to :func:`torch.nn.functional.interpolate`.
    """

    grid_size: tuple[int, int]
    image_size: tuple[int, int]
    blur_sigma: float = 0.0
    align_corners: bool = False

    def init(self, n: int, k: int, value: torch.Tensor | float, *, dtype, device) -> torch.Tensor:
        """Parameters of shape ``(N, K, 1, h, w)`` filled with ``value`` (broadcastable)."""
        h, w = self.grid_size
        theta = torch.empty((n, k, 1, h, w), dtype=dtype, device=device)
        theta.copy_(torch.as_tensor(value, dtype=dtype, device=device).expand_as(theta))
        return theta

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = theta.shape[:2]
        h, w = self.grid_size
        H, W = self.image_size
        flat = theta.reshape(n * k, 1, h, w)
        full = F.interpolate(flat, size=(H, W), mode="bilinear", align_corners=self.align_corners)
        if self.blur_sigma > 0:
            # Replicated borders keep a constant mask constant and [0,1] masks inside [0,1].
            full = gaussian_blur(full, self.blur_sigma, padding="replicate")
        return theta, full.reshape(n, k, 1, H, W)

    def grid_coordinates(self, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-pixel coordinates ``(y, x)`` of the centre of each grid cell, each ``(h, w)``."""
        h, w = self.grid_size
        H, W = self.image_size
        if self.align_corners:
            ys = torch.linspace(0, H - 1, h, dtype=dtype, device=device) if h > 1 else torch.zeros(1, dtype=dtype, device=device)
            xs = torch.linspace(0, W - 1, w, dtype=dtype, device=device) if w > 1 else torch.zeros(1, dtype=dtype, device=device)
        else:
            ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) * (H / h) - 0.5
            xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) * (W / w) - 0.5
        return torch.meshgrid(ys, xs, indexing="ij")
