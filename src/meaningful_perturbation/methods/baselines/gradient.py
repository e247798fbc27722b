"""``gradient``: the input-gradient saliency map of Simonyan, Vedaldi & Zisserman (2014).

For image ``x`` and class score ``S_c`` (the unnormalised logit, paper §3.1)::

    w = ∂S_c/∂x  (C, H, W)        saliency(u) = max_k |w_k(u)|     (paper §3.1, RGB: max over channels)

The gradient is computed by Captum's ``Saliency`` with respect to the input only (the
model's parameters are frozen by :func:`~meaningful_perturbation.explain`). For several
target classes the signed gradients are summed before ``abs`` (the gradient of the summed
score). ``reduce`` picks the channel reduction: ``"max"`` (the paper), ``"sum"`` or ``"l2"``
(the Euclidean norm over channels); with ``abs=False`` the signed gradient is reduced
(``"max"``/``"sum"`` keep the sign, ``"l2"`` cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError, ModelError
from ...explanation import Explanation
from ..common import Context, check_choice
from ..registry import register
from ._common import SCORE_KINDS, package, score_forward, sum_over_targets

__all__ = ["GradientConfig", "REDUCTIONS"]

REDUCTIONS = ("max", "sum", "l2")


@dataclass(frozen=True)
class GradientConfig:
    """Knobs of the gradient baseline."""

    abs: bool = True  # |∂S_c/∂x|: Simonyan et al. 2014 §3.1 take the magnitude of the derivative
    reduce: str = "max"  # channel reduction: "max over the colour channels", Simonyan et al. 2014 §3.1
    score: str = "logit"  # S_c is the unnormalised class score (Simonyan et al. 2014 §2-3)

    def validate(self) -> None:
        if not isinstance(self.abs, bool):
            raise ConfigError(f"abs: expected True or False, got {self.abs!r}")
        check_choice("reduce", self.reduce, REDUCTIONS)
        check_choice("score", self.score, SCORE_KINDS)


def reduce_channels(g: torch.Tensor, how: str) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, H, W)`` by ``max``, ``sum`` or the ``l2`` norm over ``C``."""
    if how == "max":
        return g.amax(dim=1)
    if how == "sum":
        return g.sum(dim=1)
    return g.pow(2).sum(dim=1).sqrt()


def _run(ctx: Context, cfg: GradientConfig) -> Explanation:
    from captum.attr import Saliency

    algo = Saliency(score_forward(ctx.model, cfg.score, where="while computing the input gradient", head=ctx.head, dtype=ctx.input_dtype, scale_gradients=True))

    def attribute(target: torch.Tensor) -> torch.Tensor:
        # A fresh leaf that already requires grad: Captum then leaves ctx.x untouched.
        inp = ctx.x.clone().requires_grad_(True)
        try:
            return algo.attribute(inp, target=target, abs=False).detach()
        except RuntimeError as e:
            if "does not require grad" not in str(e) and "not have a grad_fn" not in str(e):
                raise
            raise ModelError(
                "model: its output has no gradient path to the input (a .detach(), .numpy() or "
                "non-differentiable step inside?); use method='occlusion' or 'rise', which only run forward passes"
            ) from e

    grad = sum_over_targets(ctx, attribute)  # (N, C, H, W), gradient of the summed score
    if cfg.abs:
        grad = grad.abs()
    return package(ctx, reduce_channels(grad, cfg.reduce), cfg)


register("gradient", GradientConfig, "Input gradient (Simonyan et al. 2014): |∂S_c/∂x|, max over channels (Captum Saliency)", requires={"captum": "baselines"})(_run)
