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


def _upsample_blur_matrix(n_in: int, n_out: int, sigma: float, align_corners: bool) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear upsampling followed by a Gaussian blur.

    Built by applying the very operations of the 2-D path (``F.interpolate`` in linear mode,
    :func:`gaussian_blur` with replicated borders) to the identity, in float64.
    """
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): basis vectors
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)  # (n_in, 1, n_out)
    if sigma > 0:
        up = gaussian_blur(up.unsqueeze(-2), sigma, padding="replicate").squeeze(-2)
    return up[:, 0, :].transpose(0, 1).contiguous()


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
        H, W = self.image_size
        # Bilinear upsampling and the Gaussian blur are both separable linear maps, so
        # blur(upsample(θ)) = A_y · θ · A_xᵀ with two small (H×h) and (W×w) matrices:
        # two matmuls instead of a full-resolution interpolation and a 41-tap convolution.
        a_y, a_x = self.operators(theta.dtype, theta.device)
        full = a_y @ theta @ a_x.transpose(0, 1)
        return theta, full.reshape(n, k, 1, H, W)

    def operators(self, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1-D operators ``A_y`` ``(H, h)`` and ``A_x`` ``(W, w)`` (cached per dtype/device)."""
        key = (dtype, str(device))
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = tuple(
                _upsample_blur_matrix(n_in, n_out, self.blur_sigma, self.align_corners).to(dtype=dtype, device=device)
                for n_in, n_out in zip(self.grid_size, self.image_size)
            )
        return cache[key]

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
