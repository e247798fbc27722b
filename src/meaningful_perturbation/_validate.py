"""Input checks shared by the public functions. Errors name the argument."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .core.precision import working_dtype
from .errors import InputError

__all__ = ["check_images", "resolve_target", "describe"]


def describe(v: Any) -> str:
    """Short description of a value for error messages."""
    if isinstance(v, torch.Tensor):
        return f"tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    return f"{type(v).__name__} {v!r}"[:120]


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` must be a finite ``(N, C, H, W)`` tensor of dtype float16, bfloat16, float32 or
    float64 with ``N >= 1``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (N, C, H, W), got {describe(x)}")
    if x.dim() != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise InputError(f"{name}: expected 4 dimensions (N, C, H, W), got {x.dim()} with shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise InputError(
            f"{name}: expected a floating-point tensor normalised for the model, got dtype {x.dtype} "
            "(convert with x.float() / 255 and normalise)"
        )
    working_dtype(x.dtype, name)  # float16, bfloat16, float32 or float64 (before isfinite: float8 has none)
    if x.shape[0] == 0:
        raise InputError(f"{name}: empty batch (shape {tuple(x.shape)}); pass at least one image")
    if x.shape[-1] < 2 or x.shape[-2] < 2 or x.shape[1] == 0:
        raise InputError(f"{name}: image of shape {tuple(x.shape[1:])} is too small; expected (C, H, W) with H, W >= 2")
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: contains NaN or inf values")
    return x


def resolve_target(target: Any, logits: torch.Tensor, top_k: int = 1) -> list[list[int]]:
    """Normalise ``target`` into one list of class indices per image.

    Args:
        target: ``None`` (the ``top_k`` classes of the clean image), an int (every image),
            an ``(N,)`` integer tensor / sequence of ints, or a sequence of ``N`` class
            sequences (several classes per image, their scores summed).
        logits: clean ``(N, classes)`` model output.
        top_k: classes taken when ``target`` is None.
    """
    n, classes = logits.shape
    if target is None:
        k = min(int(top_k), classes)
        return logits.topk(k, dim=1).indices.tolist()
    if isinstance(target, bool):
        raise InputError(f"target: expected an int, an (N,) tensor or a list of class lists, got {describe(target)}")
    if isinstance(target, int):
        rows = [[target]] * n
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise InputError(f"target: expected an integer tensor, got {describe(target)}")
        if target.dim() == 0:
            rows = [[int(target)]] * n
        elif target.dim() == 1:
            rows = [[int(v)] for v in target.tolist()]
        elif target.dim() == 2:
            rows = [list(map(int, r)) for r in target.tolist()]
        else:
            raise InputError(f"target: expected shape (N,) or (N, T), got {tuple(target.shape)}")
    elif isinstance(target, Sequence) and not isinstance(target, str):
        rows = []
        for r in target:
            if isinstance(r, (int,)) and not isinstance(r, bool):
                rows.append([int(r)])
            elif isinstance(r, torch.Tensor) and r.dim() == 0 and not r.is_floating_point():
                rows.append([int(r)])
            elif isinstance(r, (Sequence, torch.Tensor)) and not isinstance(r, str):
                vals = r.tolist() if isinstance(r, torch.Tensor) else list(r)
                if not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                    raise InputError(f"target: each class list must hold at least one int, got {r!r}")
                rows.append([int(v) for v in vals])
            else:
                raise InputError(f"target: entries must be ints or lists of ints, got {describe(r)}")
    else:
        raise InputError(f"target: expected None, an int, an (N,) tensor or a list of class lists, got {describe(target)}")
    if len(rows) != n:
        raise InputError(f"target: expected {n} entries (one per image), got {len(rows)}")
    for r in rows:
        for c in r:
            if not 0 <= c < classes:
                raise InputError(f"target: class {c} is out of range for a model with {classes} classes (valid: 0..{classes - 1})")
    return rows
