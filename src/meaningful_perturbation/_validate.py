"""Input checks shared by the public functions. Errors name the argument."""

from __future__ import annotations

from typing import Any

import torch

from .core.precision import working_dtype
from .errors import InputError

__all__ = ["check_images", "describe"]


def describe(v: Any) -> str:
    """Short description of a value for error messages."""
    if isinstance(v, torch.Tensor):
        return f"tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    return f"{type(v).__name__} {v!r}"[:120]


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` must be a finite ``(N, C, H, W)`` tensor of dtype float16, bfloat16, float32 or
    float64 with ``N >= 1``."""
    if not isinstance(x, torch.Tensor):
        shape = getattr(x, "shape", None)
        if shape is not None and hasattr(x, "dtype"):  # a NumPy (or similar) array: type and shape, not its values
            raise InputError(f"{name}: expected a torch.Tensor of shape (N, C, H, W), got a {type(x).__name__} of "
                             f"shape {tuple(shape)} and dtype {x.dtype} (convert with torch.from_numpy(x))")
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

