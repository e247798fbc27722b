"""Pieces shared by the presets: the call context, config checks, perturbation choice, and
turning a finished optimisation into an :class:`~meaningful_perturbation.Explanation`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..core.loop import Problem, forward_scores, optimise, perturbed_logits
from ..core.objective import Targets, class_probability
from ..core.perturbation import blend, blur_levels, constant_levels, fade_levels, median_blur, noise_levels
from ..errors import ConfigError
from ..explanation import Explanation

__all__ = [
    "Context",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_choice",
    "check_range",
    "pixels",
    "make_levels",
    "run_problem",
]

# ImageNet statistics used by torchvision models and by the seed script's preprocess_image().
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Context:
    """What a method receives from :func:`meaningful_perturbation.explain`.

    Attributes:
        model: the (frozen, eval-mode) model.
        x: ``(N, C, H, W)`` detached input in the working precision (float32, or float64
            for a float64 input; see :mod:`~meaningful_perturbation.core.precision`).
        targets: resolved target sets.
        clean_logits: ``(N, classes)`` model output on ``x``.
        seed: the integer seed; ``generator`` is a CPU generator seeded with it.
        callback: optional ``callback(step, total_steps)`` for progress.
        method: preset name.
        input_dtype: dtype of the model's input (the caller's ``x.dtype``); every forward
            pass casts its input to it (None: no cast).
    """

    model: Callable
    x: torch.Tensor
    targets: Targets
    clean_logits: torch.Tensor
    seed: int
    generator: torch.Generator
    method: str
    callback: Callable[[int, int], None] | None = None
    input_dtype: torch.dtype | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def scale(self, reference_size: int) -> float:
        """Ratio of the image's short side to the size at which pixel defaults are given."""
        return min(self.size) / float(reference_size)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *, integer: bool = False, low_open: bool = False) -> None:
    ok_type = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{name}: expected {kind}, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{name}: expected a value {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: expected a value <= {high}, got {value!r}")


def pixels(value: float, scale: float) -> float:
    """A length given in pixels at the reference size, converted to this image."""
    return float(value) * scale


def make_levels(
    x: torch.Tensor,
    kind: str,
    *,
    sigma: float = 0.0,
    num_levels: int = 2,
    noise: float = 1.0,
    median_size: int = 11,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Perturbation levels ``(N, L, C, H, W)`` for ``kind``.

    Kinds: ``blur`` (``num_levels`` copies, ``σ_max = sigma``), ``constant`` (mean colour),
    ``noise`` (i.i.d. ``N(0, noise²)`` in normalised units), ``fade`` (zero in normalised
    space), ``median`` (the seed's ``cv2.medianBlur`` of the 8-bit image: ``x`` is
    de-normalised with ``mean``/``std``, rounded to 8 bits, median-filtered and normalised
    again).
    """
    if kind == "blur":
        return blur_levels(x, sigma, max(int(num_levels), 2))
    if kind == "constant":
        return constant_levels(x)
    if kind == "noise":
        return noise_levels(x, noise, generator)
    if kind == "fade":
        return fade_levels(x)
    if kind == "median":
        c = x.shape[1]
        if len(mean) != c or len(std) != c:
            raise ConfigError(f"mean/std: expected {c} values (one per channel), got {len(mean)} and {len(std)}")
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        u8 = ((x * s + m) * 255).round().clamp(0, 255)
        med = median_blur(u8, int(median_size)) / 255
        return torch.stack([(med - m) / s, x], dim=1)
    raise ConfigError(f"perturbation: unknown kind {kind!r}")


def run_problem(
    ctx: Context,
    problem: Problem,
    config: Any,
    *,
    saliency: Callable[[torch.Tensor], torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Explanation:
    """Optimise ``problem`` and package the result with its scores.

    Args:
        saliency: maps the final masks ``(N, K, H, W)`` to ``(N, H, W)``.
    """
    from .registry import config_as_dict

    if ctx.callback is not None:
        total = problem.steps
        problem.callback = lambda t, _h: ctx.callback(t + 1, total)
    result = optimise(problem)
    masks = result.masks
    n, k = masks.shape[:2]
    scores: dict[str, torch.Tensor] = {"clean": class_probability(ctx.clean_logits, ctx.targets)}
    with torch.no_grad():
        for j, game in enumerate(problem.games):
            m = 1 - masks if game.invert else masks
            xt = blend(problem.levels, m.unsqueeze(2)).reshape(n * k, *ctx.x.shape[1:])
            p = forward_scores(problem, xt, ctx.targets.repeat(k)).view(n, k)
            scores["masked" if j == 0 else f"masked_{game.name}"] = p
        scores["perturbed"] = class_probability(perturbed_logits(problem), ctx.targets)
    ex = dict(extra or {})
    if problem.early_stop:
        ex["steps_run"] = result.steps_run.cpu().tolist()
    return Explanation(
        saliency=saliency(masks).detach().float().cpu(),
        masks=masks.detach().float().cpu(),
        target=ctx.targets.lists,
        history={name: v.cpu() for name, v in result.history.items()},
        scores={name: v.detach().float().cpu() for name, v in scores.items()},
        method=ctx.method,
        config=config_as_dict(config),
        extra=ex,
    )

