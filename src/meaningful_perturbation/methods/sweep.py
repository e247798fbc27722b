"""``extremal-sweep``: extremal perturbations over a dense ladder of areas, the area–score
curve, and a saliency that ranks every pixel (Fong, Patrick & Vedaldi, ICCV 2019, §3-4 and
Fig. 1: as the area grows, the preserved region reveals the image in order of decreasing
importance; the class score against the area characterises the decision).

What is run. The 2019 objective of :mod:`.extremal` (same mask, λ path, optimiser and
perturbation; ``build_problem`` and the shared loop, unchanged) for every area of a ladder
``a_1 < … < a_K``, all areas of all images (and both games for ``dual``) in one batch. The
optimisation of each area is independent of the others (the loss is a sum over masks), so
the optimised masks are those of ``K`` separate ``extremal`` runs.

The start (this project's, measured; docs/sweep.md, "The start"). The 2019 start, every mask
parameter 1 (nothing perturbed, ``start="constant"``), leaves the optimiser a first-order
signal taken at the clean image, where a model whose evidence is redundant (any part of a
texture carries it) is saturated: the area term then pulls every pixel down alike and the
ranking is fixed early, in a worse local optimum of the same objective (on TextureEvidence the
ground truth, kept alone, scores higher than the mask found at every larger area). By default
(``start="occlusion"``) each rung starts instead from a top cut of an **occlusion probe**
(Zeiler & Fergus 2014, §4.2) run under the game's own perturbation: every ``probe_window``
square (32 px at 224, ``probe_stride`` 8 px apart) is replaced by the fully perturbed image
and the drop of the target's probability is recorded; rung ``k`` starts with 1 on the
``round(a_k·P)`` lattice points of highest mean drop, 0 elsewhere (an image where no window
changes the score keeps the constant start). A finite deletion is not subject to the
gradient's saturation; the objective, mask, λ path and optimiser are unchanged, so the result
is still a local optimum of the 2019 game, and where the two starts differ the occlusion start
reaches the higher preserved score at most rungs (measured on both families). Choosing a start
by evaluating candidate masks with the model follows the 2017 authors' code (its circular
initialisation, :mod:`.paper`). Cost: one forward pass per window (841 at 64 px, 625 at 224).

Nesting, by construction (not in the optimisation). The optimised masks ``m_k`` need not be
nested. Every pixel gets a *ranking score* ``s(p) = Σ_k m_k(p)``: for nested binary masks
this is ``K + 1 − k*(p)``, where ``k*(p)`` is the first area whose mask holds ``p`` (how
early ``p`` enters the kept region), and for real masks it is the same count read softly.
Pixels are ranked by ``s`` (ties, e.g. inside a plateau where every mask is 1, are broken by
``s`` blurred with the smooth mask's σ, so a plateau is entered from its centre, then by
pixel index), which is a strict order of all ``H·W`` pixels. The **reported** masks are the
top cuts of that order: mask ``k`` keeps the ``round(a_k·H·W)`` highest-ranked pixels (1 =
keep, 0 = perturb, binary). They are nested (``M_1 ≤ M_2 ≤ …``) and have exactly their
area by construction, and the ranking reproduces each of them as a top-k cut.

The saliency is the ranking itself, on a log scale of the area at which a pixel enters the
kept region: with ``r(p)`` its rank (0 = first) and ``P = H·W``, the region holding ``p`` and
every pixel before it has area ``e(p) = (r + 1)/P``, and
``saliency(p) = 1 − log(1 + e/a_1) / log(1 + 1/a_1)`` (``a_1``: the smallest area of the
ladder): 1 at ``e → 0``, 0 for the last pixel, strictly decreasing in the rank, so all
values are distinct. Above ``a_1`` the scale is logarithmic like the geometric ladder
(entering at 5% or 10% differs as much as at 20% or 40%); below it, inside the smallest
region, it is nearly linear, so the pixels the smallest mask keeps span a band of the colour
range instead of the first few taking half of it. Only the order matters for the cuts: the top ``k`` pixels of the saliency,
for every ``k``, are the paper's "regions in order of decreasing importance".

Convergence. The optimised mask of a rung that misses its area by more than
:data:`.extremal.AREA_TOLERANCE` of it (overshoot or undershoot, as :mod:`.extremal`) raises
one :class:`~meaningful_perturbation.AreaWarning` per call and is flagged in
``extra["area_missed"]`` ``(N, K)`` (bools): the ranking it feeds is then unreliable, even
though the reported masks, cut from it, still have their areas exactly. The smallest rungs of
a small image are expected to undershoot (a smooth mask cannot form a region that small).

The area–score curve is scored on the masks actually reported (the nested cuts, not the
optimised ``m_k``): ``scores["masked"]`` ``(N, K)`` is the target's probability of the
preserved input ``blend(levels, M_k)`` (and ``scores["masked_delete"]`` of the deleted input
``blend(levels, 1 − M_k)`` when ``game="dual"``). The optimised masks' scores are kept as
``scores["optimised"]`` (``"optimised_delete"``) for comparison. ``scores["sufficient_area"]``
``(N,)`` is the smallest ``a_k`` whose preserved score is at least ``keep_fraction`` times the
clean score, and 1.0 (the whole image, which keeps the clean score itself) when no area of the
ladder reaches it. :func:`area_curve` collects them.

Monotonicity. The reported masks are nested and their areas increase (by construction); the
class score of a preserved input is **not** monotone in general (revealing more of an image
can lower a model's score), so the raw curve is not forced to be. It is monotone whenever
the model's score is monotone in the region kept (e.g. a model that adds up non-negative
evidence, with a perturbation below the image): nesting gives ``blend(M_k) ≤ blend(M_{k+1})``
pixel-wise. The envelope ``best[k] = max_{j ≤ k} curve[j]`` (:func:`area_curve`, "best
preserved score within area ``a_k``") is non-decreasing by definition.

Cost: ``K·steps`` forward+backward passes per image plus ``2·K + 2`` forward passes (the
optimised masks, the reported masks, the clean and the fully perturbed image) plus one
forward pass per window of the occlusion start (841 at 64 px, 625 at 224 px: about the
image's pixel count over 80, square images); ``dual`` doubles both per-area terms
(``2·K·steps + 4·K + 2``). The defaults (12 areas, 100 steps, preservation, occlusion start)
cost 2067 passes per 64 px image, about half the 4001 of ``rise``; ``dual`` costs 3291.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..core.loop import forward_scores
from ..core.perturbation import blend, gaussian_blur
from ..errors import ConfigError
from .common import Context, check_range, pixels, perturbation_levels, run_problem
from .extremal import AREA_TOLERANCE, ExtremalConfig, build_problem, warn_area_misses
from .start import apply_start
from .registry import register

__all__ = ["DEFAULT_AREAS", "MIN_AREAS", "SweepConfig", "area_curve", "check_pixel_counts", "nested_masks", "rank_saliency"]

#: The default ladder: 12 areas spaced by a factor √2 from 1.25% to 56.6% of the image,
#: ``0.025·√2^(k−2)``, k = 0…11. Every other rung is one of the 2019 paper's areas (2.5%, 5%,
#: 10%, 20%, its figures and pointing runs); the √2 steps halve their spacing and the ladder
#: is extended below (to about 1%) and above (past 50%) as issue 15 asks.
DEFAULT_AREAS = (0.0125, 0.0177, 0.025, 0.0354, 0.05, 0.0707, 0.1, 0.1414, 0.2, 0.2828, 0.4, 0.5657)
#: Fewest areas a sweep accepts: three rungs make a curve with a bend; for one or two areas
#: the method is ``extremal``.
MIN_AREAS = 3
SWEEP_GAMES = ("preserve", "dual")


@dataclass(frozen=True)
class SweepConfig(ExtremalConfig):
    """The knobs of :class:`~.extremal.ExtremalConfig` (same defaults and sources) with a
    dense area ladder, a schedule that fits the cost of ``rise``, and the curve's readout."""

    areas: tuple[float, ...] = DEFAULT_AREAS  # 0.025·√2^(k−2), k = 0..11: the 2019 paper's 2.5/5/10/20% and the √2 rungs between and around them (1.25%-56.6%)
    steps: int = 100  # 12 × 100 = 1200 forward+backward passes (+26 forward, + the probe's windows: 2067 at 64 px), about half of rise's 4001; the λ path of the paper's 800 steps followed over 100; from the occlusion start as good as 250 steps (n = 16) and matching rise and occlusion at n = 200 on both families (docs/sweep.md)
    saliency_area: float | None = None  # must be None: the sweep's saliency ranks the pixels over all areas
    smooth: float = 0.0  # off; else σ (fraction of the short side) of a blur of the ranking score before ranking (as extremal's pointing option)
    keep_fraction: float = 0.9  # sufficient area: the smallest area keeping 90% of the clean score ("nearly all" of the evidence); a readout only, it changes no mask
    start: str = "occlusion"  # each rung starts from the top cut of an occlusion probe (Zeiler & Fergus 2014) under the game's own perturbation; "constant": the 2019 start (init, default 1 = nothing perturbed); docs/sweep.md, "The start"

    def validate(self) -> None:
        areas = self.areas
        if not isinstance(areas, (tuple, list)):
            raise ConfigError(f"areas: expected a sorted sequence of at least {MIN_AREAS} fractions in (0, 1), got {areas!r}")
        if len(areas) < MIN_AREAS:
            raise ConfigError(
                f"areas: expected at least {MIN_AREAS} areas for a sweep (for one or two use method 'extremal'), "
                f"got {len(areas)}: {tuple(areas)!r}"
            )
        for a in areas:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 < a < 1:
                raise ConfigError(f"areas: every area must be a fraction in the open interval (0, 1), got {a!r} in {tuple(areas)!r}")
        for lo, hi in zip(areas, areas[1:]):
            if hi == lo:
                raise ConfigError(f"areas: expected distinct areas, got {lo!r} twice in {tuple(areas)!r}")
            if hi < lo:
                raise ConfigError(f"areas: expected areas sorted in increasing order, got {lo!r} before {hi!r} in {tuple(areas)!r}")
        if self.game not in SWEEP_GAMES:
            raise ConfigError(
                f"game: expected one of {', '.join(map(repr, SWEEP_GAMES))} for extremal-sweep (its curve scores the "
                f"preserved input), got {self.game!r}"
            )
        if self.saliency_area is not None:
            raise ConfigError(f"saliency_area: expected None for extremal-sweep (its saliency ranks pixels over all areas), "
                              f"got {self.saliency_area!r}")
        check_range("keep_fraction", self.keep_fraction, 0, 1, low_open=True)
        super().validate()


def rank_saliency(score: torch.Tensor, tie: torch.Tensor | None = None, knee: float | None = None) -> torch.Tensor:
    """A strict ranking of every pixel as a saliency map.

    Pixels are ordered by ``score`` (descending), ties by ``tie`` (descending), then by pixel
    index (row-major, first first). The pixel ranked ``r`` (0 = first) enters the kept region
    at area ``e = (r + 1)/P`` (``P = H·W``; the region holding it and every pixel before it)
    and gets ``1 − log(1 + e/knee) / log(1 + 1/knee)``: nearly linear in ``e`` below ``knee``,
    logarithmic above.

    Args:
        score: ``(N, H, W)`` ranking score (higher = earlier).
        tie: ``(N, H, W)`` tie-break score, or ``None``.
        knee: area (fraction in (0, 1]) where the scale turns logarithmic; ``None``: ``1/P``.

    Returns:
        ``(N, H, W)`` float32 in ``[0, 1)``, strictly decreasing in the rank (``P`` distinct
        values per image while consecutive ones differ by more than float32 rounding: images
        up to ~10⁶ pixels), ``0`` for the last pixel.
    """
    n, h, w = score.shape
    P = h * w
    s = score.reshape(n, P).float()
    order = torch.arange(P, device=s.device).expand(n, P)
    if tie is not None:
        order = torch.sort(tie.reshape(n, P).float(), dim=1, descending=True, stable=True).indices
    sec = torch.sort(s.gather(1, order), dim=1, descending=True, stable=True).indices
    order = order.gather(1, sec)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=s.device).expand(n, P).contiguous())
    k = 1.0 / P if knee is None else float(knee)
    e = (rank.double() + 1) / P
    return (1.0 - torch.log1p(e / k) / math.log1p(1.0 / k)).float().reshape(n, h, w)


def area_counts(areas: tuple[float, ...], pixels_total: int) -> list[int]:
    """Pixels kept at each area: ``round(a·P)``, at least 1 and at most ``P``."""
    return [min(max(int(round(a * pixels_total)), 1), pixels_total) for a in areas]


def nested_masks(saliency: torch.Tensor, areas: tuple[float, ...]) -> torch.Tensor:
    """Top cuts of a ranking saliency (:func:`rank_saliency`): binary keep-masks.

    Mask ``k`` keeps the ``c_k = round(a_k·H·W)`` (at least 1) pixels of highest saliency
    (equal values: the first pixel index first, as in :func:`rank_saliency`).

    Args:
        saliency: ``(N, H, W)``, e.g. from :func:`rank_saliency` (distinct values).
        areas: increasing fractions in (0, 1).

    Returns:
        ``(N, K, H, W)`` float32 in {0, 1}, nested along ``K``, ``mask[:, k].sum() = c_k``.
    """
    n, h, w = saliency.shape
    P = h * w
    order = torch.sort(saliency.reshape(n, P), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=order.device).expand(n, P).contiguous())
    rank = rank.reshape(n, h, w)  # 0 = first
    counts = torch.tensor(area_counts(areas, P), dtype=rank.dtype, device=rank.device)
    return (rank.unsqueeze(1) < counts.view(1, -1, 1, 1)).float()


def check_pixel_counts(areas: tuple[float, ...], size: tuple[int, int]) -> None:
    """Refuse a ladder two of whose areas keep the same number of pixels of an ``H×W`` image
    (:func:`area_counts`): their masks would be identical, one rung twice.

    Raises:
        ConfigError: naming the two areas, the pixel count and the smallest spacing that works.
    """
    H, W = size
    counts = area_counts(areas, H * W)
    for (a, ca), (b, cb) in zip(zip(areas, counts), zip(areas[1:], counts[1:])):
        if ca == cb:
            raise ConfigError(
                f"areas: {a:g} and {b:g} both round to {ca} pixel(s) of the {H}x{W} image, so their masks would be "
                f"the same; use areas at least {1 / (H * W):.3g} apart (one pixel) and at least {0.5 / (H * W):.3g}, "
                "or a larger image"
            )


def _run(ctx: Context, cfg: SweepConfig):
    areas = cfg.area_tuple
    H, W = ctx.size
    check_pixel_counts(areas, (H, W))
    problem = build_problem(ctx, cfg)
    probe_passes = apply_start(ctx, cfg, problem)
    scale = ctx.scale(cfg.reference_size)
    tie_sigma = pixels(cfg.sigma, scale)  # the smooth mask's own σ (21 px at 224)

    def saliency(soft: torch.Tensor) -> torch.Tensor:
        s = soft.sum(dim=1)  # how many areas' masks hold the pixel, read softly
        if cfg.smooth > 0:
            s = gaussian_blur(s.unsqueeze(1), cfg.smooth * min(H, W)).squeeze(1)
        tie = gaussian_blur(s.unsqueeze(1), tie_sigma).squeeze(1)
        return rank_saliency(s, tie, knee=areas[0])

    ex = run_problem(ctx, problem, cfg, saliency=saliency, extra={"areas": list(areas), "start": cfg.start,
                                                                     "probe_passes": probe_passes})
    soft = ex.masks
    n, k = soft.shape[:2]
    achieved = (soft > 0.5).float().mean(dim=(2, 3))
    masks = nested_masks(ex.saliency, areas)
    # The curve, on the masks reported: the preserved (and, for dual, the deleted) input.
    curves = {}
    with torch.no_grad():
        for j, game in enumerate(problem.games):
            m = masks.to(device=ctx.x.device, dtype=problem.levels.dtype)
            m = 1 - m if game.invert else m
            xt = blend(problem.levels, m.unsqueeze(2)).reshape(n * k, *ctx.x.shape[1:])
            curves[j] = forward_scores(problem, xt, ctx.targets.repeat(k)).view(n, k).float().cpu()
    ex.scores["optimised"] = ex.scores.pop("masked")
    ex.scores["masked"] = curves[0]
    if len(problem.games) > 1:
        ex.scores["optimised_delete"] = ex.scores.pop("masked_delete")
        ex.scores["masked_delete"] = curves[1]
    ex.scores["sufficient_area"] = sufficient_area(curves[0], ex.scores["clean"], areas, cfg.keep_fraction,
                                                   perturbed=ex.scores.get("perturbed"))
    ex.masks = masks
    ex.extra["achieved_area"] = achieved.tolist()  # of the optimised masks (pixels above ½)
    ex.extra["mask_area"] = [c / (H * W) for c in area_counts(areas, H * W)]  # of the reported masks, exact
    # Rungs whose optimised mask misses its area (over or under, extremal's tolerance) are
    # flagged and warned about; the reported masks are the nested cuts and keep their areas.
    target = torch.tensor(areas, dtype=achieved.dtype).view(1, -1)
    ex.extra["area_missed"] = ((achieved - target).abs() > AREA_TOLERANCE * target).tolist()
    warn_area_misses(ctx.method, achieved, areas)
    return ex


def sufficient_area(curve: torch.Tensor, clean: torch.Tensor, areas: tuple[float, ...], keep_fraction: float,
                    perturbed: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)``: the smallest ``areas[k]`` with ``curve[i, k] >= keep_fraction·clean[i]``; 1.0 if
    none (the whole image kept is the clean image: it keeps the clean score, ``keep_fraction ≤ 1``).

    NaN where the reading is degenerate: the fully perturbed input (area 0) already keeps
    ``keep_fraction`` of the clean score, or the clean score is not above the perturbed one
    (``perturbed[i] >= keep_fraction·clean[i]`` or ``clean[i] <= perturbed[i]``): no region is
    needed, so no area is "sufficient" (:func:`~meaningful_perturbation.degenerate_reason`
    then names the explanation degenerate).

    Args:
        curve: ``(N, K)`` preserved scores; clean: ``(N,)`` clean scores (same units);
        areas: the ``K`` increasing areas; keep_fraction: in (0, 1];
        perturbed: ``(N,)`` scores of the fully perturbed input, or ``None`` (no NaN check).
    """
    ok = curve >= keep_fraction * clean.reshape(-1, 1)
    a = torch.tensor(areas, dtype=torch.float32).expand_as(curve)
    out = torch.where(ok, a, torch.ones_like(a)).min(dim=1).values
    if perturbed is not None:
        p, c = perturbed.reshape(-1).float(), clean.reshape(-1).float()
        out = torch.where((p >= keep_fraction * c) | (c <= p), torch.full_like(out, float("nan")), out)
    return out


def area_curve(ex: Any) -> dict[str, Any]:
    """The area–score curve of an ``extremal-sweep`` explanation (also after save/load).

    Returns:
        A dict: ``areas`` (list of K fractions), ``preserved`` ``(N, K)`` probability of the
        preserved input at each area (the reported, nested masks), ``best`` ``(N, K)`` its
        running maximum over the areas (non-decreasing), ``deleted`` ``(N, K)`` of the deleted
        input (``dual`` only, else ``None``), ``clean`` and ``perturbed`` ``(N,)``,
        ``sufficient_area`` ``(N,)`` (1.0 where no area of the ladder keeps ``keep_fraction``
        of the clean score; NaN where the fully perturbed input already keeps it) and
        ``keep_fraction``.

    Raises:
        ConfigError: ``ex`` is not an ``extremal-sweep`` explanation (names what is missing).

    Example:
        >>> import torch, meaningful_perturbation as mp
        >>> from meaningful_perturbation.methods.sweep import area_curve
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> ex = mp.explain(model, torch.rand(1, 3, 16, 16), target=0, method="extremal-sweep",
        ...                 areas=(0.1, 0.2, 0.4), steps=2, jitter="none")
        >>> c = area_curve(ex)
        >>> c["areas"], tuple(c["preserved"].shape)
        ([0.1, 0.2, 0.4], (1, 3))
    """
    if not all(hasattr(ex, a) for a in ("extra", "scores", "method", "config")):
        raise ConfigError(f"ex: expected an extremal-sweep Explanation, got {type(ex).__name__}")
    areas = ex.extra.get("areas")
    missing = [k for k in ("masked", "clean", "sufficient_area") if k not in ex.scores]
    if ex.method != "extremal-sweep" or not isinstance(areas, list) or missing:
        raise ConfigError(
            f"ex: expected an extremal-sweep explanation (areas in extra, masked/clean/sufficient_area scores), "
            f"got method {ex.method!r}" + (f" without scores {missing}" if missing else "")
        )
    preserved = ex.scores["masked"]
    return {
        "areas": [float(a) for a in areas],
        "preserved": preserved,
        "best": torch.cummax(preserved, dim=1).values,
        "deleted": ex.scores.get("masked_delete"),
        "clean": ex.scores["clean"].reshape(-1),
        "perturbed": ex.scores["perturbed"].reshape(-1) if "perturbed" in ex.scores else None,
        "sufficient_area": ex.scores["sufficient_area"],
        "keep_fraction": float(ex.config.get("keep_fraction", SweepConfig.keep_fraction)),
    }


register(
    "extremal-sweep",
    SweepConfig,
    "Extremal Perturbation over a ladder of 12 areas (1.25%-57%) in one batch: nested masks, the area-score curve "
    "and a saliency ranking every pixel by the area at which it is kept (2019 §3-4, Fig. 1)",
    perturbation_levels=perturbation_levels,
)(_run)
