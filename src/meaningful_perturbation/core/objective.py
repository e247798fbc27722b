"""Objective pieces: class scores on the model output and mask regularisers.

Every function returns one value per optimised mask (no reduction over the batch), so the
loop can sum them and each mask's gradient is independent of its batch neighbours.
"""

from __future__ import annotations

import torch

from .head import LOGITS, Head

__all__ = ["Targets", "class_score", "class_probability", "l1_term", "tv_term", "SCORES"]

SCORES = ("prob", "logit", "contrastive")


class Targets:
    """Per-image target class sets, stored as a padded index tensor.

    Attributes:
        index: ``(N, T)`` long, padded with the first class of the row.
        valid: ``(N, T)`` bool, False on padding.
        lists: the class lists, one per image.
    """

    def __init__(self, lists: list[list[int]], device) -> None:
        self.lists = [list(map(int, row)) for row in lists]
        t = max(len(row) for row in self.lists)
        idx = [row + [row[0]] * (t - len(row)) for row in self.lists]
        val = [[True] * len(row) + [False] * (t - len(row)) for row in self.lists]
        self.index = torch.tensor(idx, dtype=torch.long, device=device)
        self.valid = torch.tensor(val, dtype=torch.bool, device=device)

    def __len__(self) -> int:
        return len(self.lists)

    def repeat(self, per_image: int) -> "Targets":
        """Targets for a batch where every image is repeated ``per_image`` times in a row."""
        out = Targets.__new__(Targets)
        out.lists = [row for row in self.lists for _ in range(per_image)]
        out.index = self.index.repeat_interleave(per_image, dim=0)
        out.valid = self.valid.repeat_interleave(per_image, dim=0)
        return out

    @property
    def is_single(self) -> bool:
        return all(len(row) == 1 for row in self.lists)


def class_probability(logits: torch.Tensor, targets: Targets, head: Head = LOGITS) -> torch.Tensor:
    """Probability of each row's target set (sum over its classes), ``(B,)`` float32.

    ``head`` says how the model's output ``(B, outputs)`` is read (softmax of logits by
    default; see :mod:`meaningful_perturbation.core.head`).
    """
    p = head.probabilities(logits).gather(1, targets.index)
    return (p * targets.valid).sum(dim=1)


def class_score(logits: torch.Tensor, targets: Targets, kind: str, head: Head = LOGITS) -> torch.Tensor:
    """The score ``f_c`` the games maximise or minimise, one per row, ``(B,)``.

    Args:
        logits: ``(B, outputs)`` model output.
        targets: ``B`` target sets.
        kind: ``"prob"``: class probability summed over the set (2017 authors' code uses
            the softmax ``prob`` layer); ``"logit"``: summed logits (2019 "simple" score);
            ``"contrastive"``: mean target logit minus the largest non-target logit (2019
            "contrastive" score).
        head: how the output is read; for heads that output probabilities the logit is the
            log-probability (``log p``, or the log-odds for a sigmoid head).
    """
    if kind == "prob":
        return class_probability(logits, targets, head)
    z = head.logits(logits)
    zt = z.gather(1, targets.index) * targets.valid
    if kind == "logit":
        return zt.sum(dim=1)
    # contrastive
    if z.shape[1] == 1:
        # One column (a binary sigmoid head): no other class; the log-odds already contrasts
        # the class with its absence.
        return zt.sum(dim=1)
    other = z.scatter(1, targets.index, float("-inf")).amax(dim=1)
    return zt.sum(dim=1) / targets.valid.sum(dim=1) - other


def l1_term(grid: torch.Tensor, toward: float) -> torch.Tensor:
    """Mean of ``|toward - m|`` over the mask cells, ``(N, K)``.

    ``toward = 1`` gives the deletion game's ``‖1 - m‖₁`` (penalises deleted area),
    ``toward = 0`` the preservation game's ``‖m‖₁`` (penalises kept area).
    """
    return (toward - grid).abs().mean(dim=(-3, -2, -1))


def tv_term(grid: torch.Tensor, beta: float, *, isotropic: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Total variation of the mask grid, ``(N, K)``.

    isotropic: ``Σ_u ((m(u+e_y) - m(u))² + (m(u+e_x) - m(u))²)^(β/2)`` over the cells
    where both forward differences exist (2017 authors' code ``tv()``).
    anisotropic: ``mean|Δ_y m|^β + mean|Δ_x m|^β`` (the seed re-implementation's ``tv_norm``).

    ``reduction="mean"`` divides the isotropic sum by the number of terms; the caller
    rescales it to the reference grid (see ``methods.paper``). A constant mask gives 0.
    """
    if isotropic:
        red = _IsotropicTV.apply(grid, float(beta))  # (..., ) sum over the last three dims
        if reduction == "mean":
            red = red / (grid.shape[-3] * (grid.shape[-2] - 1) * (grid.shape[-1] - 1))
        return red
    dy = grid[..., 1:, :] - grid[..., :-1, :]
    dx = grid[..., :, 1:] - grid[..., :, :-1]
    return dy.abs().pow(beta).mean(dim=(-3, -2, -1)) + dx.abs().pow(beta).mean(dim=(-3, -2, -1))


#: Below this, ``g`` is clamped for ``β < 2``: ``g^(β/2)`` has an infinite derivative at 0.
_TV_FLOOR = 1e-12


class _IsotropicTV(torch.autograd.Function):
    """``Σ_u (Δ_y m(u)² + Δ_x m(u)²)^(β/2)`` over the last three dimensions, with a
    hand-written backward: autograd's costs about 25 small kernels a step (each slice's
    backward allocates and copies a full-size gradient), this one 9, which counts on a GPU
    whose step is bound by kernel launches (issue 14). Same values and gradients (tested
    with gradcheck and against the autograd formula)."""

    @staticmethod
    def forward(ctx, grid, beta):
        dy = grid[..., 1:, :-1] - grid[..., :-1, :-1]
        dx = grid[..., :-1, 1:] - grid[..., :-1, :-1]
        g = dy * dy + dx * dx
        gc = g.clamp_min(_TV_FLOOR) if beta < 2 else g
        ctx.save_for_backward(dy, dx, g)
        ctx.beta = beta
        ctx.shape = grid.shape
        return gc.pow(beta / 2).sum(dim=(-3, -2, -1))

    @staticmethod
    def backward(ctx, grad_out):
        dy, dx, g = ctx.saved_tensors
        beta = ctx.beta
        if beta < 2:
            dg = g.clamp_min(_TV_FLOOR).pow(beta / 2 - 1) * (g >= _TV_FLOOR)  # clamp_min passes no gradient below
        else:
            dg = g.pow(beta / 2 - 1)
        dg = dg * (grad_out[..., None, None, None] * beta)  # d/dΔ of (Δ²)^(β/2) = β·Δ·g^(β/2-1)
        gy, gx = dg * dy, dg * dx
        grid_grad = dy.new_zeros(ctx.shape)
        grid_grad[..., 1:, :-1].add_(gy)
        grid_grad[..., :-1, 1:].add_(gx)
        grid_grad[..., :-1, :-1].sub_(gy + gx)
        return grid_grad, None
