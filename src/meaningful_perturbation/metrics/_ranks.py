"""Batched average ranks (ties share the mean of their ranks), the basis of AUROC and Spearman."""

from __future__ import annotations

import torch

__all__ = ["average_ranks"]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of every row of ``values``, ties receiving the average of their ranks.

    Same convention as ``scipy.stats.rankdata(method="average")``, batched over rows.

    Args:
        values: ``(N, M)`` real tensor.

    Returns:
        ``(N, M)`` float64 ranks in ``[1, M]``.

    Example:
        >>> average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
        tensor([[3.5000, 1.0000, 3.5000, 2.0000]], dtype=torch.float64)
    """
    n, m = values.shape
    v, idx = torch.sort(values, dim=1, stable=True)
    pos = torch.arange(m, device=values.device).expand(n, m)
    starts = torch.ones_like(v, dtype=torch.bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    # Groups of equal values are contiguous after sorting: the first position of an
    # element's group is the running max of group starts, the last the reverse running min.
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    last_rev = torch.where(ends, pos, torch.full_like(pos, m)).flip(1).cummin(dim=1).values
    last = last_rev.flip(1)
    avg = (first + last).to(torch.float64) / 2.0 + 1.0
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, idx, avg)
    return ranks
