"""Pieces shared by the presets: the call context, config checks, perturbation choice, and
turning a finished optimisation into an :class:`~meaningful_perturbation.Explanation`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.head import LOGITS, Head
from ..core.loop import Problem, forward_scores, optimise, perturbed_logits
from ..core.objective import Targets, class_probability
from ..core.perturbation import blend, blur_levels, constant_levels, fade_levels, median_blur, noise_levels
from ..errors import ConfigError
from ..explanation import Explanation
from .registry import config_as_dict

__all__ = [
    "Context",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_choice",
    "check_range",
    "input_stats_overrides",
    "pixels",
    "make_levels",
    "perturbation_levels",
    "perturbed_input",
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
        head: how the model's output is read as class scores (see :mod:`..core.head`).
        input_dtype: dtype of the model's input (the caller's ``x.dtype``); every forward
            pass casts its input to it (None: no cast).
        note: optional ``note(text)``: a phase before the steps (e.g. ``extremal-sweep``'s
            occlusion probe) is running; ``note("")`` when it ends, so a progress bar can say
            so and time the steps alone.
    """

    model: Callable
    x: torch.Tensor
    targets: Targets
    clean_logits: torch.Tensor
    seed: int
    generator: torch.Generator
    method: str
    callback: Callable[[int, int], None] | None = None
    head: Head = LOGITS
    input_dtype: torch.dtype | None = None
    note: Callable[[str], None] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def scale(self, reference_size: int) -> float:
        """Ratio of the image's short side to the size at which pixel defaults are given."""
        return min(self.size) / float(reference_size)


#: Upper bound on optimisation steps: 1000x the papers' schedules (300 / 800). The loop keeps a
#: (steps, N, K) history per term, so an absurd count would allocate before failing.
MAX_STEPS = 1_000_000


def optimizer(kind: type, params: list[torch.Tensor], **hyper: Any) -> torch.optim.Optimizer:
    """``kind(params, **hyper)``; on CUDA the fused implementation (one kernel per step instead
    of about ten: the mask is small, so its update is launch-bound on a GPU). The update rule is
    the same; the CPU keeps PyTorch's default implementation, bit for bit."""
    if params and params[0].is_cuda:
        try:
            return kind(params, fused=True, **hyper)
        except (RuntimeError, TypeError, ValueError):  # dtype or build without a fused kernel
            pass
    return kind(params, **hyper)


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


def input_stats_overrides(
    config: dict[str, Any], overrides: dict[str, Any], mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """``overrides`` plus the input's normalisation for a method whose config needs it.

    Methods that rebuild the 8-bit image (``seed``'s median perturbation) carry ``mean`` and
    ``std`` fields defaulting to ImageNet's RGB statistics. When ``config`` (the resolved
    config as a dict) has them and the user did not set them, they are taken from the
    preprocessing that produced the input (``mean``, ``std``: one value per channel), so a
    grey model or one with other statistics is undone correctly.

    Example:
        >>> input_stats_overrides({"mean": (0.485, 0.456, 0.406), "std": (1, 1, 1)}, {}, (0.5,), (0.25,))
        {'mean': (0.5,), 'std': (0.25,)}
    """
    out = dict(overrides)
    for key, value in (("mean", mean), ("std", std)):
        if key in config and key not in out:
            out[key] = tuple(float(v) for v in value)
    return out


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


def perturbation_levels(x: torch.Tensor, config: Any, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The perturbation levels ``(N, L, C, H, W)`` a mask-learning preset optimises against.

    The one place where ``paper``/``paper-loc``, ``seed`` and ``extremal`` turn their config
    into levels, and what figures call to redraw what the optimiser saw
    (:func:`perturbed_input`). Fields read (absent ones keep :func:`make_levels`' defaults):
    ``perturbation`` (the kind), ``blur_sigma`` in pixels at ``reference_size`` (scaled to
    this image's short side, like every pixel length of the presets), ``levels``,
    ``perturbation_noise`` (std of the ``noise`` kind), ``median_size``, ``mean``/``std``.

    Args:
        x: ``(N, C, H, W)`` normalised images (the batch given to ``explain``).
        config: the preset's config dataclass or its dict (``Explanation.config``, also after
            a save/load round trip).
        generator: source of the ``noise`` kind's field. The presets pass the run's generator
            before anything else draws from it, so ``torch.Generator().manual_seed(seed)``
            gives the same field (one ``(1, C, H, W)`` draw shared by the batch).

    Raises:
        ConfigError: the config has no ``perturbation`` or an unknown kind.
    """
    from .registry import config_as_dict

    cfg = config if isinstance(config, Mapping) else config_as_dict(config)
    if "perturbation" not in cfg:
        raise ConfigError(f"config: expected a 'perturbation' setting (a mask-learning preset's config), got keys {sorted(cfg)}")
    kwargs: dict[str, Any] = {}
    if "blur_sigma" in cfg:
        kwargs["sigma"] = pixels(cfg["blur_sigma"], min(int(x.shape[-2]), int(x.shape[-1])) / float(cfg.get("reference_size", 224)))
    if "levels" in cfg:
        kwargs["num_levels"] = cfg["levels"]
    if "perturbation_noise" in cfg:
        kwargs["noise"] = cfg["perturbation_noise"]
    if "median_size" in cfg:
        kwargs["median_size"] = cfg["median_size"]
    if "mean" in cfg and "std" in cfg:
        kwargs["mean"], kwargs["std"] = cfg["mean"], cfg["std"]
    return make_levels(x, cfg["perturbation"], generator=generator, **kwargs)


def perturbed_input(x: torch.Tensor, masks: torch.Tensor, config: Any, *, seed: int = 0, method: str | None = None) -> torch.Tensor:
    """The perturbed images the optimiser scored: ``blend(levels, masks)``.

    ``levels`` are rebuilt by :func:`perturbation_levels`, the function the presets build
    their problem with (same kind, scaled σ, number of levels, median window, statistics, and
    the ``noise`` field of ``seed``), and blended by :func:`~..core.perturbation.blend`.
    ``masks`` are an Explanation's keep-masks (1 = keep), which for every game are the mask of
    the primary game's input: ``m`` in the deletion and preservation games of ``paper`` and
    ``seed``; for ``extremal`` the stored ``1 − m`` of the delete game and ``m`` of preserve
    and dual (dual's second game, the deletion of ``m``, is ``masks`` replaced by
    ``1 − masks``). The result is the input of the final ``scores["masked"]``, exactly.

    Not drawn: what varies per optimisation step — the jitter shift or flip, and additive
    per-step noise (``noise_std``: the ``seed`` preset's fresh ``N(0, 0.2²)`` field added to its
    median blend at every step, see :mod:`.seed`). The image is the blend without them.

    Args:
        x: ``(N, C, H, W)`` normalised images, the batch given to ``explain``.
        masks: ``(N, K, H, W)`` (or ``(N, H, W)``) keep-masks in [0, 1].
        config: the preset's config (``Explanation.config``).
        seed: the run's seed (``Explanation.extra["seed"]``); only the ``noise`` kind uses it.
        method: the preset name (``Explanation.method``); when given, a method that learns no
            keep-mask (the baselines) raises instead of drawing a meaningless image.

    Returns:
        ``(N, K, C, H, W)`` (``(N, C, H, W)`` for 3-d ``masks``) in normalised units.

    Raises:
        ConfigError: ``method`` learns no keep-mask, or the config has no perturbation.
        InputError: ``masks`` does not match ``x``.

    Example:
        >>> x = torch.randn(1, 3, 8, 8)
        >>> cfg = {"perturbation": "fade"}
        >>> torch.equal(perturbed_input(x, torch.zeros(1, 1, 8, 8), cfg)[:, 0], torch.zeros_like(x))
        True
    """
    from ..errors import InputError
    from .registry import get_method

    build = perturbation_levels
    if method is not None:
        spec = get_method(method)
        if spec.perturbation_levels is None:
            raise ConfigError(f"method: {method!r} learns no keep-mask, so there is no perturbed input to draw; "
                              "expected a mask-learning preset (paper, paper-loc, seed, extremal, extremal-fast, extremal-sweep)")
        build = spec.perturbation_levels
    flat = masks.dim() == 3
    m = masks.unsqueeze(1) if flat else masks
    if m.dim() != 4 or m.shape[0] != x.shape[0] or tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
        raise InputError(f"masks: expected (N, K, H, W) or (N, H, W) matching x of shape {tuple(x.shape)}, got {tuple(masks.shape)}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    levels = build(x, config, generator=generator)
    out = blend(levels, m.to(device=x.device, dtype=x.dtype).unsqueeze(2))
    return out[:, 0] if flat else out


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
    if ctx.callback is not None:
        total = problem.steps
        problem.callback = lambda t, _h: ctx.callback(t + 1, total)
    result = optimise(problem)
    masks = result.masks
    n, k = masks.shape[:2]
    scores: dict[str, torch.Tensor] = {"clean": class_probability(ctx.clean_logits, ctx.targets, ctx.head)}
    with torch.no_grad():
        for j, game in enumerate(problem.games):
            m = 1 - masks if game.invert else masks
            xt = blend(problem.levels, m.unsqueeze(2)).reshape(n * k, *ctx.x.shape[1:])
            p = forward_scores(problem, xt, ctx.targets.repeat(k)).view(n, k)
            scores["masked" if j == 0 else f"masked_{game.name}"] = p
        scores["perturbed"] = class_probability(perturbed_logits(problem), ctx.targets, ctx.head)
    ex = dict(extra or {})
    ex["seed"] = ctx.seed  # redraws the seeded perturbation (``noise``) for figures: perturbed_input
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
        head=ctx.head.kind,
    )

