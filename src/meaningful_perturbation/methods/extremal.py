"""``extremal``: Extremal Perturbation (Fong, Patrick & Vedaldi, ICCV 2019).

For each target area ``a`` the smooth mask ``m`` (see ``core.smoothmax``) solves::

    preserve:  min_m  −f_c(Φ(x; m))      + λ_t·R_a(m)
    delete:    min_m   f_c(Φ(x; 1 − m))  + λ_t·R_a(m)
    dual:      min_m  −f_c(Φ(x; m)) + f_c(Φ(x; 1 − m)) + λ_t·R_a(m)

with the area ranking constraint ``R_a(m) = mean((sort(m) − r_a)²)``, ``r_a`` = ``(1−a)·P``
zeros then ``a·P`` ones, and the growing weight ``λ_t = 300·1.0035^t``. ``R_a`` is measured on
the image itself, not on a padded canvas (the reference's canvas let a nominal ``a`` cover up
to 1.35·a of a 224² image): over the ``P`` points of the mask lattice, which spans the image
exactly and of which the pixel mask is the bilinear interpolation, so the fraction of
lattice values above ½ is the fraction of pixels up to the half-cells along the border.
Measuring on the lattice gives every parameter the same pull from the constraint; measured
on pixels, a border (corner) lattice point stands for half (a quarter) as many pixels, is
pulled down two (four) times more slowly and, once the class score has saturated, keeps the
leftover area: masks drifted to the image corners (docs/benchmarks.md, "border artifacts").

Image shape. ``R_a`` is a mean over the ``P`` lattice points, so the weight is multiplied by
``P / P_sq`` (``P_sq``: the lattice of the image's square crop, ``min(h, w)²``): the term is
``λ_t·‖sort(m) − r_a‖² / P_sq``, the paper's sum up to a constant, and every parameter gets
the same pull on a 3:1 image as on a square one (with the plain mean a 3:1 image got a third
of it, and ``extremal-fast`` kept the whole image at a = 0.05). The lattice step, σ and blur
scale with the short side, so ``P_sq`` (33² by default) is the same at every size. The λ
path ``λ0·1.0035^t`` of the paper's 800 steps is followed over any number of steps
(``λ0·1.0035^(800·t/steps)``), so shorter runs (``extremal-fast``) end at the same ≈16·λ0.
Measured (docs/benchmarks.md, "achieved areas"): every mask within ±10% of its area on the
demo model's grid of 64-224 px and aspects 1:3 to 3:1, but not on every image (1 of 64 masks
beyond 25% on 16 benchmark images: the smooth mask's transition band is wide for a = 0.05
against strong model gradients; no post-hoc correction). A mask whose achieved area (pixels above ½) misses
its target by more than 25% raises an :class:`~meaningful_perturbation.AreaWarning` naming
the image, the target and the achieved area (``extra["achieved_area"]``, ``(N, K)``).

All areas of all images (and both games for ``dual``) are one batch. ``m`` marks the salient region in every game; ``masks`` stores the keep-mask of the
primary game (``m`` for preserve and dual, ``1 − m`` for delete) and ``saliency`` is the sum
of the salient regions over the areas.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..core.loop import Game, Problem, Term
from ..core.objective import SCORES
from ..core.perturbation import gaussian_blur
from ..core.smoothmax import SmoothMaxMask
from ..errors import AreaWarning, ConfigError
from .common import MAX_STEPS, Context, check_choice, check_range, optimizer, perturbation_levels, pixels, run_problem
from .registry import register
from .start import apply_start, check_start

__all__ = ["AREA_TOLERANCE", "ExtremalConfig", "area_term", "warn_area_misses"]

GAMES = ("preserve", "delete", "dual")
# A mask whose achieved area misses its target by more than this fraction of the target gets
# an AreaWarning. Converged masks land within ±10% (64-224 px, aspect 1:3 to 3:1, measured in
# docs/benchmarks.md); 25% leaves room for lattice quantisation at small areas and sizes
# (a = 0.025 on a 64 px image is ~27 lattice points, one ring of them ~±20%), so what is
# flagged is a constraint that did not converge, not the normal spread.
AREA_TOLERANCE = 0.25
PAPER_STEPS = 800  # 2019 paper §4: 800 iterations; the λ schedule is defined over them


def check_areas(areas: Any, fractions: str = "fractions", fraction: str = "a fraction") -> tuple:
    """``areas`` (one number or a non-empty sequence) as a tuple of fractions in (0, 1].

    Raises:
        ConfigError: naming ``areas``, what was expected (``fractions`` / ``fraction``: the
            wording, e.g. "channel fractions" for :mod:`.channels`) and what arrived.
    """
    raw = areas
    if isinstance(areas, (int, float)) and not isinstance(areas, bool):
        areas = (areas,)
    if not isinstance(areas, (tuple, list)) or len(areas) == 0:
        raise ConfigError(f"areas: expected a non-empty sequence of {fractions} in (0, 1], got {raw!r}")
    for a in areas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise ConfigError(f"areas: every area must be {fraction} in (0, 1], got {a!r} in {raw!r}")
    return tuple(areas)


@dataclass(frozen=True)
class ExtremalConfig:
    """Knobs of the 2019 method; pixel values are given at ``reference_size``."""

    areas: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2)  # the areas of the 2019 paper's figures/pointing runs
    steps: int = 800  # 2019 paper §4: 800 iterations
    lr: float = 0.01  # SGD learning rate 0.01 (2019 reference code)
    momentum: float = 0.9  # SGD momentum 0.9 (2019 reference code)
    dampening: float = 0.9  # SGD dampening 0.9 (2019 reference code)
    game: str = "preserve"  # 2019 §3: preservation is the default game; "delete" and "dual" available
    perturbation: str = "blur"  # 2019 §3.2: blur pyramid; "fade" available
    blur_sigma: float = 20.0  # σ_max = 20 px of the blur pyramid (2019 reference code)
    levels: int = 8  # 8 pyramid levels (2019 reference code)
    score: str = "logit"  # "simple" reward = the class logit (2019 §3); "contrastive" available
    area_weight: float = 300.0  # λ0 = 300 (2019 reference code)
    area_growth: float = 1.0035  # λ_t = λ0·1.0035^t over 800 steps (2019 reference code); other step counts follow the same path: λ0·1.0035^(800·t/steps)
    step_px: float = 7.0  # lattice step of the smooth mask, 7 px at 224 (2019 reference code)
    sigma: float = 21.0  # smooth-mask kernel σ = 21 px at 224 (2019 reference code)
    temperature: float = 20.0  # smooth-max temperature (2019 reference code)
    # Initial value of the mask parameters; None = from the game: 1.0 (nothing perturbed) for
    # preserve and dual, 0.0 for delete. Starting at a uniform 0.5 half-blurs the whole image:
    # on models whose evidence survives only mild blur the class score is then already at its
    # floor with a vanishing gradient, and the area term alone places the mask (measured on
    # the ShapeEvidence benchmark: pointing 0.00 at 0.5 vs 0.97 at 1.0; docs/benchmarks.md).
    init: float | None = None
    jitter: int | str = "flip"  # horizontal flip on odd steps (2019 reference code); int = random shift px; "none"
    noise_std: float = 0.0  # no additive noise in the 2019 method
    saliency_area: float | None = None  # None: saliency = sum over areas (2019 pointing benchmark); else that area's mask
    smooth: float = 0.0  # post-blur σ of the saliency as a fraction of the short side (pointing benchmark: 0.09)
    top_k: int = 1  # classes explained when target is None
    reference_size: int = 224  # pixel defaults are for 224×224 inputs (2019 §4, ImageNet)
    early_stop: int | None = None  # off by default; a window in steps (see docs/benchmarks.md)
    autocast: bool = False  # bfloat16 autocast of the model forward
    channels_last: bool = False  # channels_last memory format for the model input
    start: str = "constant"  # the 2019 start (every parameter `init`); "occlusion": each area starts from a top cut of an occlusion probe under the game's own perturbation (methods/start.py; docs/sweep.md, "The start")
    probe_window: int = 32  # px at 224: the occlusion start's window (occlusion's: 1/7 of the side, RISE's cell at s = 7)
    probe_stride: int = 8  # px at 224: the occlusion start's stride (occlusion's: Captum's ImageNet occlusion tutorial)

    def validate(self) -> None:
        areas = check_areas(self.areas)
        check_range("steps", self.steps, 1, MAX_STEPS, integer=True)
        check_range("lr", self.lr, 0, low_open=True)
        check_range("momentum", self.momentum, 0, 1)
        check_range("dampening", self.dampening, 0, 1)
        check_choice("game", self.game, GAMES)
        check_choice("perturbation", self.perturbation, ("blur", "fade", "constant"))
        check_range("blur_sigma", self.blur_sigma, 0, low_open=True)
        check_range("levels", self.levels, 2, integer=True)
        check_choice("score", self.score, SCORES)
        check_range("area_weight", self.area_weight, 0)
        check_range("area_growth", self.area_growth, 1)
        check_range("step_px", self.step_px, 0, low_open=True)
        check_range("sigma", self.sigma, 0, low_open=True)
        check_range("temperature", self.temperature, 0, low_open=True)
        if self.init is not None:
            check_range("init", self.init, 0, 1)
        if not (self.jitter in ("flip", "none") or (isinstance(self.jitter, int) and not isinstance(self.jitter, bool) and self.jitter >= 0)):
            raise ConfigError(f"jitter: expected 'flip', 'none' or a shift in pixels >= 0, got {self.jitter!r}")
        check_range("noise_std", self.noise_std, 0)
        if self.saliency_area is not None and self.saliency_area not in tuple(areas):
            raise ConfigError(f"saliency_area: expected None or one of the areas {tuple(areas)}, got {self.saliency_area!r}")
        check_range("smooth", self.smooth, 0, 1)
        check_range("top_k", self.top_k, 1, integer=True)
        if self.early_stop is not None:
            check_range("early_stop", self.early_stop, 1, integer=True)
        check_start(self)

    @property
    def area_tuple(self) -> tuple[float, ...]:
        return (float(self.areas),) if isinstance(self.areas, (int, float)) else tuple(float(a) for a in self.areas)


def area_term(full: torch.Tensor, areas: tuple[float, ...]) -> torch.Tensor:
    """``R_a(m) = mean((sort(m) − r_a)²)`` per mask, ``(N, K)``; mask ``k`` uses ``areas[k]``.

    ``sort(m)`` is ascending and ``r_a`` is ``P − A`` zeros then ``A = round(a·P)`` ones, so
    ``Σ (sort(m) − r_a)² = Σ m² + A − 2·(sum of the A largest m)``. That identity is what is
    computed: the A-th largest value ``τ`` comes from a selection (``kthvalue``, linear time)
    instead of a full sort, and values tied with ``τ`` share the remaining top slots equally,
    so the (sub)gradient does not depend on the order of tied pixels.
    """
    n, k = full.shape[:2]
    flat = full.reshape(n, k, -1)
    P = flat.shape[-1]
    counts = [int(round(a * P)) for a in areas]  # Python ints: reading them back from the device would sync every step
    A = torch.tensor(counts, device=flat.device)  # (K,)
    with torch.no_grad():
        # τ = A-th largest = (P − A + 1)-th smallest; A = 0 → weight 0 everywhere.
        taus = []
        for j in range(k):
            a_j = counts[j]
            if a_j == 0:
                taus.append(torch.full((n,), float("inf"), dtype=flat.dtype, device=flat.device))
            else:
                taus.append(flat[:, j].kthvalue(P - a_j + 1, dim=-1).values)
        tau = torch.stack(taus, dim=1).unsqueeze(-1)  # (N, K, 1)
        above = flat > tau
        tied = flat == tau
        n_above = above.sum(-1, keepdim=True)
        n_tied = tied.sum(-1, keepdim=True).clamp_min(1)
        share = (A.view(1, k, 1) - n_above).clamp_min(0) / n_tied
        weight = above.to(flat.dtype) + tied.to(flat.dtype) * share
    top_sum = (flat * weight).sum(-1)
    return ((flat**2).sum(-1) + A.to(flat.dtype) - 2 * top_sum) / P


def _initial_value(cfg: ExtremalConfig) -> float:
    if cfg.init is not None:
        return float(cfg.init)
    return 0.0 if cfg.game == "delete" else 1.0


def build_problem(ctx: Context, cfg: ExtremalConfig) -> Problem:
    """Assemble the 2019 objective for ``ctx`` (exposed for benchmarks and tests)."""
    x = ctx.x
    n = x.shape[0]
    H, W = ctx.size
    scale = ctx.scale(cfg.reference_size)
    areas = cfg.area_tuple
    levels = perturbation_levels(x, cfg, generator=ctx.generator)  # blur/fade/constant: no draw
    mask = SmoothMaxMask.for_image((H, W), max(pixels(cfg.step_px, scale), 1.0), pixels(cfg.sigma, scale), cfg.temperature)
    games = {
        "preserve": [Game("preserve", False, -1.0)],
        "delete": [Game("delete", True, 1.0)],
        "dual": [Game("preserve", False, -1.0), Game("delete", True, 1.0)],
    }[cfg.game]
    # R_a is a mean over the P lattice points, so its pull on one parameter is ∝ 1/P; the
    # lattice of a square image has the same P at every size (the step scales with the short
    # side), but a 3:1 image has 3× the points. Scaling the weight by P / P_square (P_square:
    # the lattice of the image's square crop) gives every parameter the pull it has on a
    # square image: λ·‖sort(m) − r_a‖² / P_square, the paper's sum up to a constant.
    gh, gw = mask.grid_size
    w0 = cfg.area_weight * (gh * gw) / min(gh, gw) ** 2
    # The paper's λ path (×1.0035 per step over 800 steps, ending at ≈16·λ0) is followed over
    # the whole run whatever its length: a 200-step run grows 1.0035⁴ per step. A per-step
    # growth over fewer steps would stop at 2·λ0 with masks far from their areas
    # (docs/benchmarks.md, "achieved areas").
    growth = cfg.area_growth ** (PAPER_STEPS / cfg.steps)
    if cfg.jitter == "flip" or cfg.jitter == "none":
        jitter = cfg.jitter if cfg.jitter == "flip" else 0
    else:
        jitter = int(round(pixels(cfg.jitter, scale)))
    signs = torch.tensor([g.sign for g in games], device=x.device)

    def monitor(loss, scores, values):
        # The loss grows with λ_t; early stopping watches the objective at the fixed weight λ0.
        return (scores * signs).sum(dim=-1) + w0 * values["area"]

    return Problem(
        model=ctx.model,
        head=ctx.head,
        levels=levels,
        mask=mask,
        theta=mask.init(n, len(areas), _initial_value(cfg), dtype=x.dtype, device=x.device),
        games=games,
        targets=ctx.targets,
        score=cfg.score,
        terms=[Term("area", lambda t: w0 * growth**t, lambda g, m: area_term(g, areas))],  # g: the lattice values
        steps=cfg.steps,
        make_optimizer=lambda params: optimizer(torch.optim.SGD, params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening),
        jitter=jitter,
        noise_std=cfg.noise_std,
        generator=ctx.generator,
        autocast=cfg.autocast,
        channels_last=cfg.channels_last,
        input_dtype=ctx.input_dtype,
        early_stop=cfg.early_stop,
        monitor=monitor,
    )


def _run(ctx: Context, cfg: ExtremalConfig):
    problem = build_problem(ctx, cfg)
    probe_passes = apply_start(ctx, cfg, problem)  # 0 for the 2019 constant start
    areas = cfg.area_tuple
    delete_only = cfg.game == "delete"
    H, W = ctx.size

    def saliency(salient: torch.Tensor) -> torch.Tensor:
        # The loop's masks are the optimised m: the salient region in every game.
        sal = salient[:, areas.index(cfg.saliency_area)] if cfg.saliency_area is not None else salient.sum(dim=1)
        if cfg.smooth > 0:
            sal = gaussian_blur(sal.unsqueeze(1), cfg.smooth * min(H, W)).squeeze(1)
        return sal

    ex = run_problem(ctx, problem, cfg, saliency=saliency, extra={"areas": list(areas)})
    if delete_only:
        # Stored masks are keep-masks (1 = keep): the delete game keeps 1 − m.
        ex.masks = 1 - ex.masks
    salient = (1 - ex.masks) if delete_only else ex.masks
    # Achieved area: the fraction of the image's pixels where the salient mask exceeds ½
    # (the area of the binary mask the ranking constraint pulls towards); its mean is kept too.
    achieved = (salient > 0.5).float().mean(dim=(2, 3))
    ex.extra["achieved_area"] = achieved.tolist()
    ex.extra["start"], ex.extra["probe_passes"] = cfg.start, probe_passes  # "constant": 0 passes
    ex.extra["mask_mean"] = salient.mean(dim=(2, 3)).tolist()
    warn_area_misses(ctx.method, achieved, areas)
    return ex


def warn_area_misses(method: str, achieved: torch.Tensor, areas: tuple[float, ...], tolerance: float = AREA_TOLERANCE) -> None:
    """Warn (:class:`~meaningful_perturbation.AreaWarning`) about every mask whose achieved
    area ``achieved[i, k]`` (``(N, K)``, fractions of the image) misses ``areas[k]`` by more
    than ``tolerance`` of the target (relative error). One warning per call, naming each
    image index, target and achieved area (the first ten; the rest are counted)."""
    target = torch.tensor(areas, dtype=achieved.dtype).view(1, -1)
    miss = (achieved - target).abs() > tolerance * target
    if not bool(miss.any()):
        return
    idx = miss.nonzero().tolist()
    listed = ", ".join(f"image {i} area {areas[k]:g} -> {float(achieved[i, k]):.3f}" for i, k in idx[:10])
    more = f" and {len(idx) - 10} more" if len(idx) > 10 else ""
    warnings.warn(
        f"{method}: {len(idx)} of {miss.numel()} masks miss their target area by more than "
        f"{tolerance:.0%} ({listed}{more}); the area constraint did not converge for them: "
        "use more steps or a larger area_weight, or check that the model's score responds to the image",
        AreaWarning,
        stacklevel=4,
    )


register(
    "extremal",
    ExtremalConfig,
    "Extremal Perturbation (Fong, Patrick & Vedaldi 2019): smooth masks of fixed areas, 800 SGD steps",
    perturbation_levels=perturbation_levels,
)(_run)
register(
    "extremal-fast",
    ExtremalConfig,
    "`extremal`'s objective with a quarter of the schedule (200 SGD steps, the same λ path) from the occlusion start; "
    "matches rise and occlusion on both benchmark families",
    perturbation_levels=perturbation_levels,
    steps=200,
    start="occlusion",
    notes={
        "steps": "a quarter of 800, the area weight following the same λ path (×1.0035⁴ per step): within the CI of the full schedule on ShapeEvidence (docs/benchmarks.md, quality vs steps)",
        "start": "each area starts from a top cut of an occlusion probe (methods/start.py): from the 2019 constant start the quarter schedule lost 10 points of pointing@tol and 0.28 of rank accuracy on TextureEvidence; with it, n = 200 on both families matches rise and occlusion (docs/benchmarks.md, \"extremal-fast from the occlusion start\"); start=constant is the quarter schedule of the paper",
    },
)(_run)
