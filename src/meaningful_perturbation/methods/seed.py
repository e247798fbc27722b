"""``seed``: the algorithm of the widely used single-script re-implementation
(jacobgil/pytorch-explain-black-box, ``explain.py``), reproduced exactly.

Per step, with a 28×28 mask ``M`` initialised to ones::

    m  = bilinear_upsample(M, (H, W), align_corners=True)
    x̃  = x·m + median(x)·(1 - m) + η,      η ~ N(0, 0.2²) in normalised space, fresh each step
    L  = 0.01·mean|1 - M| + 0.2·(mean|Δ_y M|³ + mean|Δ_x M|³) + softmax(model(x̃))[c]
    Adam(lr 0.1) step, then clamp M to [0, 1]; 500 steps; c = top-1 class by default.

``median(x)`` is OpenCV's 11×11 median blur of the 8-bit image, normalised like ``x``.
The script's two known bugs are not reproduced: it *displays* a Gaussian+median blend but
optimises the median blend (its issue #9; here the median blend is used throughout), and
its heatmap divides by ``max`` after subtracting ``min``; here ``saliency = 1 - m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.loop import Game, Problem, Term
from ..core.mask import UpsampledMask
from ..core.objective import SCORES, l1_term, tv_term
from ..errors import ConfigError
from .common import MAX_STEPS, IMAGENET_MEAN, IMAGENET_STD, Context, check_choice, check_range, optimizer, perturbation_levels, run_problem
from .registry import register

__all__ = ["SeedConfig"]


@dataclass(frozen=True)
class SeedConfig:
    """Knobs of the seed script (every default is a constant of its ``explain.py``)."""

    steps: int = 500  # max_iterations = 500
    lr: float = 0.1  # learning_rate = 0.1 (Adam)
    game: str = "delete"  # the script minimises the class probability
    perturbation: str = "median"  # blurred_img2 = cv2.medianBlur(original_img, 11)
    median_size: int = 11  # cv2.medianBlur(..., 11)
    score: str = "prob"  # torch.nn.Softmax()(model(perturbated_input))[0, category]
    l1: float = 0.01  # l1_coeff = 0.01, on torch.mean(torch.abs(1 - mask))
    tv: float = 0.2  # tv_coeff = 0.2
    tv_beta: float = 3.0  # tv_beta = 3 (anisotropic, means of |Δ|^β)
    mask_size: int = 28  # mask_init = np.ones((28, 28))
    jitter: int = 0  # the script has no jitter
    noise_std: float = 0.2  # cv2.randn(noise, 0, 0.2) added every iteration
    mean: tuple[float, ...] = IMAGENET_MEAN  # preprocess_image() means (to rebuild the 8-bit image)
    std: tuple[float, ...] = IMAGENET_STD  # preprocess_image() stds
    top_k: int = 1  # category = np.argmax(target)
    early_stop: int | None = None  # not in the script; off
    autocast: bool = False
    channels_last: bool = False

    def validate(self) -> None:
        check_range("steps", self.steps, 1, MAX_STEPS, integer=True)
        check_range("lr", self.lr, 0, low_open=True)
        check_choice("game", self.game, ("delete", "preserve"))
        check_choice("perturbation", self.perturbation, ("median", "constant", "fade"))
        check_range("median_size", self.median_size, 1, integer=True)
        if self.median_size % 2 == 0:
            raise ConfigError(f"median_size: expected an odd window size, got {self.median_size}")
        check_choice("score", self.score, SCORES)
        check_range("l1", self.l1, 0)
        check_range("tv", self.tv, 0)
        check_range("tv_beta", self.tv_beta, 1)
        check_range("mask_size", self.mask_size, 2, integer=True)
        check_range("jitter", self.jitter, 0, integer=True)
        check_range("noise_std", self.noise_std, 0)
        check_range("top_k", self.top_k, 1, integer=True)
        if self.early_stop is not None:
            check_range("early_stop", self.early_stop, 1, integer=True)


def build_problem(ctx: Context, cfg: SeedConfig) -> Problem:
    """Assemble the seed script's objective for ``ctx`` (exposed for benchmarks and tests)."""
    x = ctx.x
    n = x.shape[0]
    H, W = ctx.size
    levels = perturbation_levels(x, cfg, generator=ctx.generator)  # median/constant/fade: no draw
    mask = UpsampledMask((cfg.mask_size, cfg.mask_size), (H, W), blur_sigma=0.0, align_corners=True)
    delete = cfg.game == "delete"
    beta = cfg.tv_beta
    return Problem(
        model=ctx.model,
        head=ctx.head,
        levels=levels,
        mask=mask,
        theta=mask.init(n, 1, 1.0, dtype=x.dtype, device=x.device),  # np.ones((28, 28))
        games=[Game("delete", False, 1.0)] if delete else [Game("preserve", False, -1.0)],
        targets=ctx.targets,
        score=cfg.score,
        terms=[
            Term("l1", cfg.l1, lambda g, m: l1_term(g, 1.0 if delete else 0.0)),
            Term("tv", cfg.tv, lambda g, m: tv_term(g, beta, isotropic=False)),
        ],
        steps=cfg.steps,
        make_optimizer=lambda params: optimizer(torch.optim.Adam, params, lr=cfg.lr),
        jitter=cfg.jitter,
        noise_std=cfg.noise_std,
        generator=ctx.generator,
        autocast=cfg.autocast,
        channels_last=cfg.channels_last,
        input_dtype=ctx.input_dtype,
        early_stop=cfg.early_stop,
    )


def _run(ctx: Context, cfg: SeedConfig):
    problem = build_problem(ctx, cfg)
    delete = cfg.game == "delete"
    return run_problem(ctx, problem, cfg, saliency=(lambda m: 1 - m[:, 0]) if delete else (lambda m: m[:, 0]))


register(
    "seed",
    SeedConfig,
    "jacobgil/pytorch-explain-black-box, exactly: median blur, noise, 28×28 mask, 500 Adam steps",
    perturbation_levels=perturbation_levels,
)(_run)
