"""The occlusion start of the 2019 objective's optimisation (``start="occlusion"``).

The 2019 start, every mask parameter ``init`` (1: nothing perturbed; ``start="constant"``),
gives the optimiser a first-order signal taken at the clean image, where a model whose
evidence is redundant (any part of a texture carries it) is saturated: the area term then
pulls every pixel down alike and the ranking is fixed in the first steps, in a worse local
optimum of the same objective (docs/sweep.md, "The start"). With ``start="occlusion"`` each
area's mask starts instead from a top cut of an **occlusion probe** (Zeiler & Fergus 2014,
§4.2) run under the game's own perturbation: every ``probe_window`` square (32 px at 224,
``probe_stride`` 8 px apart, and a last one flush with the far edge) is replaced by the fully
perturbed image and the drop of the target's probability is recorded; area ``a_k`` starts
with 1 on the ``round(a_k·P)`` lattice points of highest mean drop, 0 elsewhere. An image
where no window changes the score keeps the constant start. The objective, mask, λ path and
optimiser are unchanged, so the result is still a local optimum of the 2019 game. Choosing a
start by scoring candidate masks with the model follows the 2017 authors' code (its circular
initialisation, :mod:`.paper`). Cost: one forward pass per window (841 at 64 px, 625 at 224),
never more images per forward than one optimisation step.

Default of ``extremal-sweep``; an option of ``extremal`` and ``extremal-fast``, whose defaults
stay the paper's constant start (the evaluation issue's decision).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.loop import Problem, forward_scores
from ..core.objective import class_probability
from ..core.perturbation import blend
from ..errors import ConfigError
from .common import Context, check_choice, check_range, pixels

__all__ = ["PROBE_BATCH", "STARTS", "apply_start", "check_start", "occlusion_probe", "probe_size", "probe_windows",
           "start_from"]

#: Starts of the optimisation: the occlusion probe's top cuts, or a constant (``init``).
STARTS = ("constant", "occlusion")
#: Most images per forward pass of the occlusion probe (speed and memory only; occlusion's
#: batch). The probe never passes more images at once than the optimisation does (N·K·games).
PROBE_BATCH = 64


def check_start(cfg: Any) -> None:
    """Validate ``start``, ``probe_window`` and ``probe_stride`` of an extremal config.

    Raises:
        ConfigError: an unknown start; ``init`` with the occlusion start (it would be
            ignored); probe settings with the constant start (ignored too); a window not
            smaller than the reference size (one window covering the image ranks nothing); a
            stride larger than the window (pixels no window covers).
    """
    check_choice("start", cfg.start, STARTS)
    if cfg.start == "occlusion" and cfg.init is not None:
        raise ConfigError(
            f"init: a constant start value is used only with start='constant' (start='occlusion' starts from an "
            f"occlusion probe), got init={cfg.init!r} with start='occlusion'; set start=constant too"
        )
    check_range("probe_window", cfg.probe_window, 1, integer=True)
    check_range("probe_stride", cfg.probe_stride, 1, integer=True)
    if cfg.probe_window >= cfg.reference_size:
        raise ConfigError(
            f"probe_window: expected a window smaller than the image's short side ({cfg.reference_size} px at the "
            f"reference size {cfg.reference_size}, where it is given), got {cfg.probe_window}: one window covering "
            "the image ranks no region"
        )
    if cfg.probe_stride > cfg.probe_window:
        raise ConfigError(
            f"probe_stride: expected a stride no larger than the window (probe_window={cfg.probe_window}), so that "
            f"every pixel is probed, got {cfg.probe_stride}"
        )
    if cfg.start == "constant":
        defaults = {f.name: f.default for f in dataclasses.fields(type(cfg))}
        for name in ("probe_window", "probe_stride"):
            if getattr(cfg, name) != defaults[name]:
                raise ConfigError(
                    f"{name}: used only by the occlusion start, got {name}={getattr(cfg, name)!r} with "
                    "start='constant'; drop it or use start=occlusion"
                )


def apply_start(ctx: Context, cfg: Any, problem: Problem) -> int:
    """With ``cfg.start == "occlusion"``, run the probe and set ``problem.theta`` to each area's
    top cut; returns the probe's forward passes per image (0 for the constant start).

    """
    if cfg.start != "occlusion":
        return 0
    H, W = ctx.size
    window, stride = probe_size(cfg, (H, W))
    if ctx.note is not None:
        ctx.note(f"occlusion probe, {len(probe_windows((H, W), window, stride))} windows")
    importance, passes = occlusion_probe(problem, ctx.targets, ctx.clean_logits, (H, W), window, stride)
    if ctx.note is not None:
        ctx.note("")
    problem.theta = start_from(importance.to(problem.theta.device), problem.theta, cfg.area_tuple)
    return passes


def probe_windows(size: tuple[int, int], window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(row, col)`` of the occlusion probe's windows on an ``H×W`` image:
    ``window`` px squares (clipped to the image) every ``stride`` px, plus one flush with the
    far edge where the stride does not end there, so every pixel is covered."""

    def starts(length: int, side: int) -> list[int]:
        out = list(range(0, length - side + 1, stride))
        return out if out[-1] == length - side else out + [length - side]

    H, W = size
    return [(r, c) for r in starts(H, min(window, H)) for c in starts(W, min(window, W))]


def probe_size(cfg: Any, size: tuple[int, int]) -> tuple[int, int]:
    """The probe's window and stride in pixels of an ``H×W`` image (given at ``reference_size``,
    scaled with the short side, at least 1 px; the window below the short side, the stride at
    most the window)."""
    scale = min(size) / float(cfg.reference_size)
    short = min(size)
    # probe_window < reference_size (checked), so the window is below the short side; rounding
    # may reach it on a small image: one pixel less, so that there is still a region to rank
    window = min(max(1, round(pixels(cfg.probe_window, scale))), max(1, short - 1))
    stride = min(max(1, round(pixels(cfg.probe_stride, scale))), window)
    return window, stride


def occlusion_probe(problem, targets, clean_logits: torch.Tensor, size: tuple[int, int], window: int,
                    stride: int) -> tuple[torch.Tensor, int]:
    """Sliding-window occlusion (Zeiler & Fergus 2014, §4.2) under the game's own perturbation.

    Every ``window × window`` square (``stride`` apart, the last one flush with the far edge)
    is replaced by the fully perturbed image (``levels[:, 0]``, a mask value of 0) and the drop
    of the target's probability is recorded; a pixel's importance is the mean drop over the
    windows that cover it.

    Args:
        problem: the sweep's :class:`~..core.loop.Problem` (levels, model, head).
        targets: the images' target sets.
        clean_logits: ``(N, classes)`` model output on the clean images (no pass is repeated).
        size: ``(H, W)``.
        window, stride: in pixels of this image, at least 1.

    Returns:
        ``(N, H, W)`` importance (probability units; positive = perturbing it lowers the
        score) and the number of forward passes per image (the windows).
    """
    H, W = size
    n = problem.levels.shape[0]
    wh, ww = min(window, H), min(window, W)
    boxes = probe_windows(size, window, stride)
    clean = class_probability(clean_logits, targets, problem.head)  # (N,)
    total = torch.zeros(n, H, W, dtype=torch.float32, device=problem.levels.device)
    cover = torch.zeros(H, W, dtype=torch.float32, device=problem.levels.device)
    # no more images per forward than one optimisation step passes (N·K·games, with gradients):
    # the probe adds no peak memory of its own
    per_pass = max(1, min(PROBE_BATCH, n * problem.theta.shape[1] * len(problem.games)) // n)
    for i in range(0, len(boxes), per_pass):
        chunk = boxes[i : i + per_pass]
        keep = torch.ones(len(chunk), H, W, dtype=problem.levels.dtype, device=problem.levels.device)
        for j, (r, c) in enumerate(chunk):
            keep[j, r : r + wh, c : c + ww] = 0
        b = len(chunk)
        with torch.no_grad():
            xt = blend(problem.levels, keep.view(1, b, 1, H, W).expand(n, b, 1, H, W))
            scores = forward_scores(problem, xt.reshape(n * b, *xt.shape[2:]), targets.repeat(b)).view(n, b).float()
        drop = clean.float().view(n, 1) - scores  # (N, b)
        for j, (r, c) in enumerate(chunk):
            total[:, r : r + wh, c : c + ww] += drop[:, j].view(n, 1, 1)
            cover[r : r + wh, c : c + ww] += 1
    return total / cover.clamp_min(1), len(boxes)


def start_from(importance: torch.Tensor, theta: torch.Tensor, areas: tuple[float, ...]) -> torch.Tensor:
    """Mask parameters ``(N, K, 1, gh, gw)`` of each rung's start: 1 on the ``round(a_k·P)``
    lattice points of highest importance (averaged over each point's cell), 0 elsewhere.

    An image whose importance is flat (no window changed the score) keeps ``theta``'s
    constant start: a top cut of a flat map would only follow the pixel order.
    """
    n, k = theta.shape[:2]
    gh, gw = theta.shape[-2:]
    P = gh * gw
    cell = torch.nn.functional.interpolate(importance.unsqueeze(1).float(), size=(gh, gw), mode="area").reshape(n, P)
    order = torch.sort(cell, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=order.device).expand(n, P).contiguous())
    out = theta.clone()
    span = cell.amax(dim=1) - cell.amin(dim=1)
    informative = span > 1e-6 * cell.abs().amax(dim=1).clamp_min(1e-12)
    for j, a in enumerate(areas):
        c = min(max(int(round(a * P)), 1), P)
        top = (rank < c).to(theta.dtype).view(n, *theta.shape[2:])
        out[:, j] = torch.where(informative.view(n, 1, 1, 1), top, theta[:, j])
    return out
