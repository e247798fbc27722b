"""The one optimisation loop shared by every mask-learning method.

Per step ``t`` (the algorithm box common to Fong & Vedaldi 2017 and Fong et al. 2019):

1. ``grid, m = mask(θ)``; for each game ``g`` the blended mask is ``m`` or ``1 - m``;
2. ``x̃ = blend(levels, m_g)`` for all ``N`` images × ``K`` masks × ``G`` games at once,
   then jitter (shift of the image relative to the mask, or a horizontal flip) and noise;
3. ``s = f_c(model(x̃))``; per mask ``loss = Σ_g sign_g·s_g + Σ_terms w_term(t)·term(grid, m)``;
4. one optimiser step on ``Σ loss`` (each mask's gradient is independent of the others),
   then ``θ`` is projected back to [0, 1].

The loop prints nothing; it reports through a callback.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .head import LOGITS, Head, model_output, unwrap_output
from .objective import Targets, class_probability, class_score
from .perturbation import blend
from .precision import ModelBridge

__all__ = ["Game", "Term", "Problem", "Result", "optimise", "forward_scores", "perturbed_logits"]


@dataclass(frozen=True)
class Game:
    """One way of turning a mask into an input and scoring it.

    Attributes:
        name: ``"delete"`` or ``"preserve"``.
        invert: blend with ``1 - m`` instead of ``m`` (extremal deletion: ``m`` marks the
            deleted region).
        sign: ``+1`` to minimise the class score (deletion), ``-1`` to maximise it.
    """

    name: str
    invert: bool
    sign: float


@dataclass(frozen=True)
class Term:
    """A named regulariser ``weight(t)·fn(grid, m)``; ``fn`` returns ``(N, K)``."""

    name: str
    weight: float | Callable[[int], float]
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def weight_at(self, t: int) -> float:
        return self.weight(t) if callable(self.weight) else self.weight


@dataclass
class Problem:
    """Everything the loop needs; assembled by a method preset."""

    model: Callable
    levels: torch.Tensor  # (N, L, C, H, W)
    mask: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    theta: torch.Tensor  # (N, K, ...)
    games: Sequence[Game]
    targets: Targets
    score: str
    terms: Sequence[Term]
    steps: int
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    jitter: int | str = 0  # int: max shift in px; "flip": flip on odd steps; 0/"none": off
    noise_std: float = 0.0
    generator: torch.Generator | None = None
    low: float = 0.0
    high: float = 1.0
    autocast: bool = False
    channels_last: bool = False
    # dtype of the model's input (the caller's x.dtype): levels, masks and optimiser state stay
    # in the working precision and only the blended input is cast, right before each forward
    # (core.precision). None: no cast.
    input_dtype: torch.dtype | None = None
    early_stop: int | None = None
    early_stop_tol: float = 1e-3
    # What early stopping watches, per mask: monitor(loss, scores (N,K,G), terms) -> (N, K).
    # Default: the loss. Methods whose loss has growing weights watch a fixed-weight version.
    monitor: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor] | None = None
    callback: Callable[[int, dict], None] | None = None
    # Per image ``(N,)``: deletion games (sign > 0) minimise ``max(s, floor)`` instead of ``s``,
    # so the score is driven down to the fully perturbed image's level and not below it.
    score_floor: torch.Tensor | None = None
    # How the model's output is read as class scores (softmax of logits, probabilities, sigmoid).
    head: Head = LOGITS
    # Model outputs on the fully perturbed images, computed once by ``perturbed_logits``.
    _perturbed: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class Result:
    theta: torch.Tensor
    masks: torch.Tensor  # (N, K, H, W)
    history: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (steps, N, K)
    steps_run: torch.Tensor | None = None  # (N, K) long


def _model_forward(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    bridge = ModelBridge(problem.input_dtype)  # cast to the model's dtype (core.precision)
    x = bridge.enter(x)
    if problem.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if problem.autocast
        else contextlib.nullcontext()
    )
    with ctx:
        out = problem.model(x)
    return bridge.leave(unwrap_output(out))  # other containers are refused by check_output


def check_output(out, batch: int, *, where: str) -> torch.Tensor:
    """Validate a model output: a finite ``(batch, outputs)`` tensor (see :func:`.head.model_output`)."""
    return model_output(out, batch, where=where)


def forward_scores(problem: Problem, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Class probabilities of ``x`` without gradients, ``(B,)``."""
    with torch.no_grad():
        out = check_output(_model_forward(problem, x), x.shape[0], where="during evaluation")
        return class_probability(out, targets, problem.head)


def perturbed_logits(problem: Problem) -> torch.Tensor:
    """Model outputs ``(N, classes)`` on every image's fully perturbed version ``levels[:, 0]``.

    One forward pass per problem: the result is kept on the problem and shared by the score
    floor, the circular initialisation and the reported ``scores["perturbed"]``.
    """
    if problem._perturbed is None:
        with torch.no_grad():
            x = problem.levels[:, 0]
            problem._perturbed = check_output(_model_forward(problem, x), x.shape[0], where="on the fully perturbed images")
    return problem._perturbed


def _compose(problem: Problem, levels: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Perturbed inputs ``(N·K·G, C, H, W)`` from ``levels`` (possibly shifted/flipped) and masks."""
    n, k = full.shape[:2]
    g = len(problem.games)
    parts = [1 - full if game.invert else full for game in problem.games]
    bm = torch.stack(parts, dim=2).reshape(n, k * g, *full.shape[2:]) if g > 1 else parts[0]
    xt = blend(levels, bm)
    return xt.reshape(-1, *xt.shape[2:])


class _Views:
    """Per-step views of the levels: shifted (jitter) or mirrored (flip), without copies.

    Paper eq. (4) shifts the image relative to the mask, ``Φ(x0(· − τ), m)``: the levels are
    padded once with replicated borders and each step reads a shifted window. A horizontal
    flip of the perturbed input equals blending the mirrored levels with the mirrored mask;
    the mirrored levels are built once.
    """

    def __init__(self, levels: torch.Tensor, shift: int, flip: bool) -> None:
        self.levels = levels
        self.J = shift
        n, L, c, h, w = levels.shape
        self.size = (h, w)
        self.padded = (
            F.pad(levels.reshape(n, L * c, h, w), (shift, shift, shift, shift), mode="replicate").reshape(n, L, c, h + 2 * shift, w + 2 * shift)
            if shift > 0
            else None
        )
        self.flipped = levels.flip(-1) if flip else None

    def shifted(self, dy: int, dx: int) -> torch.Tensor:
        h, w = self.size
        J = self.J
        return self.padded[..., J - dy : J - dy + h, J - dx : J - dx + w]


def optimise(problem: Problem) -> Result:
    """Run the optimisation described in the module docstring."""
    theta = problem.theta.detach().clone().requires_grad_(True)
    opt = problem.make_optimizer([theta])
    n, k = theta.shape[:2]
    games = list(problem.games)
    g = len(games)
    device = theta.device
    targets = problem.targets.repeat(k * g)
    steps = int(problem.steps)
    hist_names = ["loss"] + [f"score_{gm.name}" for gm in games] + [term.name for term in problem.terms]
    history = {name: torch.zeros((steps, n, k), dtype=torch.float32, device=device) for name in hist_names}
    shift_jitter = isinstance(problem.jitter, int) and problem.jitter > 0
    flip_jitter = problem.jitter == "flip"
    h, w = problem.levels.shape[-2:]
    c = problem.levels.shape[2]

    views = _Views(problem.levels, problem.jitter if shift_jitter else 0, flip_jitter)
    stopper = _EarlyStop(problem.early_stop, problem.early_stop_tol, (n, k), device) if problem.early_stop else None
    steps_run = steps
    nonfinite = None  # 0-dim on the device: largest |gradient| so far, NaN or inf once a step's gradient was
    checked = 1  # steps whose gradients are known to be finite
    for t in range(steps):
        levels = problem.levels
        grid, full = problem.mask(theta)
        blend_mask = full
        if shift_jitter:
            dy, dx = (int(v) for v in torch.randint(0, problem.jitter, (2,), generator=problem.generator))
            levels = views.shifted(dy, dx)
        if flip_jitter and t % 2 == 1:
            levels, blend_mask = views.flipped, full.flip(-1)
        xt = _compose(problem, levels, blend_mask)
        if problem.noise_std > 0:
            noise = torch.randn((1, c, h, w), generator=problem.generator)
            xt = xt + (noise * problem.noise_std).to(device=xt.device, dtype=xt.dtype)
        out = _model_forward(problem, xt)
        if t == 0:
            check_output(out, xt.shape[0], where="on the perturbed batch")
            if not out.requires_grad:
                raise ModelError(
                    "model has no gradient path to its input: its output does not require grad "
                    "(does it detach, call .numpy(), or run under torch.no_grad()?); "
                    "mask optimisation needs d(output)/d(input)"
                )
        s = class_score(out, targets, problem.score, problem.head).view(n, k, g)
        loss = torch.zeros((n, k), dtype=s.dtype, device=device)
        for j, game in enumerate(games):
            s_j = s[..., j]
            if game.sign > 0 and problem.score_floor is not None:
                s_j = torch.maximum(s_j, problem.score_floor.view(n, 1).to(s_j.dtype))
            loss = loss + game.sign * s_j
            history[f"score_{game.name}"][t] = s[..., j].detach()
        values = {}
        for term in problem.terms:
            v = term.fn(grid, full)
            loss = loss + term.weight_at(t) * v
            history[term.name][t] = v.detach()
            values[term.name] = v.detach()
        history["loss"][t] = loss.detach()

        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        if t == 0 and (theta.grad is None or not torch.isfinite(theta.grad).all()):
            raise ModelError("the gradient of the model output with respect to its input is missing or not finite")
        # A later non-finite gradient (e.g. a float16 model's backward pass overflowing) must not
        # turn θ into NaN: its entries are zeroed for this step and the run is refused below, at
        # the next check (every 10 steps, no device sync per step). Finite gradients are unchanged.
        # max |g| is finite iff every entry is (amax and maximum propagate NaN): three kernels
        # instead of isfinite().all()'s seven, which counts on a launch-bound GPU (issue 14).
        peak = theta.grad.detach().abs().amax()
        nonfinite = peak if nonfinite is None else torch.maximum(nonfinite, peak)
        theta.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if (t + 1) % 10 == 0 or t + 1 == steps:
            if not bool(torch.isfinite(nonfinite)):
                low = problem.input_dtype not in (None, torch.float32, torch.float64)
                raise ModelError(
                    f"the gradient of the model output with respect to its input became NaN or inf between steps "
                    f"{checked + 1} and {t + 1} of {steps}"
                    + (f" (the model runs in {problem.input_dtype}: did its backward pass overflow?)" if low else "")
                )
            checked = t + 1
        if stopper is not None:
            before = theta.detach().clone()
        opt.step()
        with torch.no_grad():
            theta.clamp_(problem.low, problem.high)
            if stopper is not None:
                watched = loss.detach() if problem.monitor is None else problem.monitor(loss.detach(), s.detach(), values)
                stopper.update(watched, t)
                frozen = ~stopper.active
                theta[frozen] = before[frozen]
        if problem.callback is not None:
            problem.callback(t, history)
        if stopper is not None and (t + 1) % 10 == 0 and not bool(stopper.active.any()):
            steps_run = t + 1
            break

    history = {name: v[:steps_run].detach() for name, v in history.items()}
    with torch.no_grad():
        _, full = problem.mask(theta)
    run = stopper.stopped_at.clamp_max(steps_run) if stopper is not None else torch.full((n, k), steps_run, device=device)
    # Upsampling and blurring θ ∈ [0, 1] are convex combinations, so the mask is in [0, 1] up
    # to float rounding (1 + 2e-7 was seen); clamp so the documented range holds exactly.
    masks = full[:, :, 0].detach().clamp(0.0, 1.0)
    return Result(theta=theta.detach(), masks=masks, history=history, steps_run=run)


class _EarlyStop:
    """Per-mask early stopping on an exponential moving average of the loss.

    A mask stops (its parameters are frozen) once its smoothed loss has not improved by
    more than ``tol`` (relative) for ``window`` consecutive steps. Each mask decides alone,
    so results do not depend on batch composition.
    """

    def __init__(self, window: int, tol: float, shape, device) -> None:
        self.window = int(window)
        self.tol = float(tol)
        self.ema = torch.full(shape, math.nan, device=device)
        self.best = torch.full(shape, math.inf, device=device)
        self.since = torch.zeros(shape, dtype=torch.long, device=device)
        self.active = torch.ones(shape, dtype=torch.bool, device=device)
        self.stopped_at = torch.full(shape, 2**62, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, t: int) -> None:
        loss = loss.float()
        self.ema = torch.where(torch.isnan(self.ema), loss, 0.9 * self.ema + 0.1 * loss)
        improved = torch.isinf(self.best) | (self.ema < self.best - self.tol * self.best.abs())
        self.best = torch.where(improved, self.ema, self.best)
        self.since = torch.where(improved, torch.zeros_like(self.since), self.since + 1)
        stop = self.active & (self.since >= self.window)
        self.stopped_at = torch.where(stop, torch.full_like(self.stopped_at, t + 1), self.stopped_at)
        self.active = self.active & ~stop
