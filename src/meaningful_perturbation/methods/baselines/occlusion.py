"""``occlusion``: sliding-window occlusion (Zeiler & Fergus, ECCV 2014, §4.2).

A ``window × window`` patch (all channels) slides over the image with ``stride``; for every
position ``w`` the patch is replaced by the perturbation ``x_pert`` and the drop in the
target score is recorded::

    d(w) = f_c(x) - f_c(x with patch w replaced by x_pert)
    saliency(u) = mean of d(w) over the windows w that cover pixel u

(Captum's ``Occlusion``; positive = occluding the pixel lowers the score = important).
The patch covers every channel, so all channels hold the same value and the channel
reduction is the mean: the saliency is in units of the score (a sum would multiply it by
``C``). Pixel sizes are given at ``reference_size`` and scale with the short side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...explanation import Explanation
from ..common import Context, check_choice, check_range, make_levels, pixels
from ..registry import register
from ._common import SCORE_KINDS, package, score_forward, sum_over_targets

__all__ = ["OcclusionConfig", "PERTURBATIONS"]

PERTURBATIONS = ("fade", "blur", "constant")


@dataclass(frozen=True)
class OcclusionConfig:
    """Knobs of sliding-window occlusion. Pixel values are given at ``reference_size``."""

    window: int = 32  # px at 224: 1/7 of the side, RISE's cell at s=7 (Zeiler & Fergus 2014 §4.2 give no size)
    stride: int = 8  # px at 224: Captum's ImageNet occlusion tutorial, strides=(3, 8, 8)
    perturbation: str = "fade"  # 0 in normalised space = the dataset-mean grey square of Zeiler & Fergus 2014 §4.2
    blur_sigma: float = 10.0  # σ of "blur" at 224: σ0 of Fong & Vedaldi 2017 §4.1
    score: str = "prob"  # Zeiler & Fergus 2014 Fig. 7(d): map of the correct class probability
    batch_size: int = 64  # occluded images per forward pass (speed/memory only)
    reference_size: int = 224  # pixel values above are for 224×224 inputs (ImageNet)

    def validate(self) -> None:
        check_range("window", self.window, 1, integer=True)
        check_range("stride", self.stride, 1, integer=True)
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        check_range("blur_sigma", self.blur_sigma, 0, low_open=True)
        check_choice("score", self.score, SCORE_KINDS)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("reference_size", self.reference_size, 1, integer=True)


def _run(ctx: Context, cfg: OcclusionConfig) -> Explanation:
    from captum.attr import Occlusion

    x = ctx.x
    n, c = x.shape[:2]
    H, W = ctx.size
    scale = ctx.scale(cfg.reference_size)
    side = max(1, round(pixels(cfg.window, scale)))
    step = max(1, round(pixels(cfg.stride, scale)))
    window = (c, min(side, H), min(side, W))
    strides = (c, min(step, H), min(step, W))
    baseline = make_levels(x, cfg.perturbation, sigma=pixels(cfg.blur_sigma, scale))[:, 0]  # (N, C, H, W)
    algo = Occlusion(score_forward(ctx.model, cfg.score, where="on an occluded image", head=ctx.head, dtype=ctx.input_dtype))
    per_eval = max(1, cfg.batch_size // n)

    def attribute(target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = algo.attribute(
                x,
                sliding_window_shapes=window,
                strides=strides,
                baselines=baseline,
                target=target,
                perturbations_per_eval=per_eval,
            )
        return a.detach()

    attr = sum_over_targets(ctx, attribute)  # (N, C, H, W), identical over C
    return package(ctx, attr.mean(dim=1), cfg, extra={"window": list(window[1:]), "stride": list(strides[1:])})


register("occlusion", OcclusionConfig, "Sliding-window occlusion (Zeiler & Fergus 2014): score drop per pixel (Captum Occlusion)", requires={"captum": "baselines"})(_run)
