"""Summary statistics for result tables."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ._common import check_positive_int, describe

__all__ = ["bootstrap_ci"]


def bootstrap_ci(
    values: torch.Tensor | np.ndarray | Sequence[float],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``1 − alpha`` confidence interval of the mean.

    NaN values (e.g. images without ground truth) are dropped first; ``inf`` values are
    kept (and propagate, as they should for "never reached" areas). ``n_boot`` resamples
    of the same size are drawn with replacement from a ``torch.Generator`` seeded with
    ``seed``; the interval is the ``alpha/2`` and ``1 − alpha/2`` quantiles (linear
    interpolation) of the resampled means. Deterministic for a given seed.

    Args:
        values: 1-D per-image scores (tensor, array or sequence; bools count as 0/1).
        n_boot: number of bootstrap resamples.
        alpha: 1 − confidence level, in (0, 1).
        seed: seed of the resampling.

    Returns:
        ``(mean, lo, hi)`` floats; all NaN when no value is left.

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0, 1.0)
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().cpu().double().reshape(-1)
    else:
        try:
            v = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
        except (TypeError, ValueError) as e:
            raise InputError(f"values: expected a 1-D sequence of numbers, got {describe(values)}") from e
    n_boot = check_positive_int(n_boot, "n_boot")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha: expected a number in (0, 1), got {describe(alpha)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an int, got {describe(seed)}")
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return (math.nan, math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=gen)
    means = v[idx].mean(dim=1)
    q = torch.tensor([alpha / 2.0, 1.0 - alpha / 2.0], dtype=torch.float64)
    if torch.isinf(means).any():
        lo, hi = (float(np.quantile(means.numpy(), float(p))) for p in q)
    else:
        lo, hi = torch.quantile(means, q).tolist()
    return (float(v.mean()), float(lo), float(hi))
