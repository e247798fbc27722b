"""Image-independent sanity baselines: ``random`` and ``center``.

Neither looks at the model: they give the floor a real method must beat. ``random`` is
i.i.d. uniform noise (the "random" row of saliency benchmarks; pointing accuracy at
chance). ``center`` is the centre prior of the pointing game: Zhang et al. (ECCV 2016,
"Top-down Neural Attention by Excitation Backprop"; IJCV 2018) report a baseline that
always points at the image centre, and Fong et al. (2019) list it as "Center" in their
pointing table. Here it is a Gaussian blob centred at ``((H-1)/2, (W-1)/2)`` so that it
also ranks every pixel (for rank metrics); its maximum is the centre pixel, i.e. exactly
the pointing baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...explanation import Explanation
from ..common import Context, check_range
from ..registry import register
from ._common import package

__all__ = ["RandomConfig", "CenterConfig", "center_prior"]


@dataclass(frozen=True)
class RandomConfig:
    """The random baseline has no knobs: ``saliency ~ U[0, 1)`` i.i.d. per pixel, from the seed."""

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class CenterConfig:
    """Knobs of the centre prior."""

    sigma: float = 0.25  # σ as a fraction of the short side; the peak (centre) is Zhang et al. 2016's "center" point

    def validate(self) -> None:
        check_range("sigma", self.sigma, 0, low_open=True)


def center_prior(size: tuple[int, int], sigma: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(H, W)`` Gaussian ``exp(-d²/(2σ²))`` of the distance ``d`` to the image centre,
    with ``σ = sigma · min(H, W)``; 1 at the centre.

    Example:
        >>> m = center_prior((5, 7), 0.25)
        >>> divmod(int(m.argmax()), 7), float(m.max())
        ((2, 3), 1.0)
    """
    H, W = size
    ys = torch.arange(H, dtype=torch.float64) - (H - 1) / 2
    xs = torch.arange(W, dtype=torch.float64) - (W - 1) / 2
    d2 = ys.view(-1, 1) ** 2 + xs.view(1, -1) ** 2
    s = float(sigma) * min(H, W)
    return torch.exp(-d2 / (2 * s * s)).to(dtype=dtype, device=device)


def _run_random(ctx: Context, cfg: RandomConfig) -> Explanation:
    n = ctx.x.shape[0]
    H, W = ctx.size
    sal = torch.rand((n, H, W), generator=ctx.generator, dtype=torch.float32)
    return package(ctx, sal, cfg)


def _run_center(ctx: Context, cfg: CenterConfig) -> Explanation:
    n = ctx.x.shape[0]
    prior = center_prior(ctx.size, cfg.sigma)
    return package(ctx, prior.expand(n, *prior.shape).clone(), cfg)


register("random", RandomConfig, "Sanity baseline: uniform random saliency from the seed (ignores the model)")(_run_random)
register("center", CenterConfig, "Centre prior (pointing-game 'center' baseline, Zhang et al. 2016): Gaussian, σ = 1/4 short side")(_run_center)
