"""Numerical precision: which dtype the explanation is computed in, and the model's input cast.

A model may run in float16, bfloat16, float32 or float64; the caller passes ``x`` in the
model's dtype. The explanation itself is computed in a *working* precision that cannot
underflow where the model's could:

* mask parameters, regularisers, perturbation levels, blending and optimiser state are in
  float32 (float64 when ``x`` is float64). In float16 Adam's ``ε = 1e-8`` is 0 and its
  update ``m̂/(√v̂ + ε)`` is 0/0 = NaN once a gradient underflows; a bfloat16 mask near 1
  cannot move by less than 2⁻⁸, so small steps are lost;
* only the model's input is cast to ``x.dtype``, right before each forward pass
  (:func:`to_model_input`); the gradient flows back through the cast into the working
  precision;
* class scores are computed from the model's output in at least float32
  (:func:`at_least_float32`).

For a float32 ``x`` every cast is the identity: results are bitwise those of a pure
float32 computation.
"""

from __future__ import annotations

import torch

from ..errors import InputError

__all__ = ["SUPPORTED_DTYPES", "working_dtype", "to_model_input", "at_least_float32"]

# The floating dtypes a model's input may have; float8 and other storage formats are refused.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def working_dtype(dtype: torch.dtype, name: str = "x") -> torch.dtype:
    """The precision the explanation is computed in for an input of ``dtype``.

    Returns ``torch.float64`` for float64 and ``torch.float32`` for float32, float16 and
    bfloat16.

    Raises:
        InputError: ``dtype`` is not one of :data:`SUPPORTED_DTYPES`.
    """
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise InputError(f"{name}: dtype {dtype} is not supported; expected one of {names} (the model's dtype)")
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_model_input(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``x`` cast to the model's input ``dtype`` (differentiably); unchanged when ``dtype`` is
    None or already ``x.dtype``."""
    if dtype is None or x.dtype == dtype:
        return x
    return x.to(dtype)


def at_least_float32(out: torch.Tensor) -> torch.Tensor:
    """A model output promoted to at least float32 (float16/bfloat16 → float32; float32 and
    float64 unchanged), so softmax and score differences do not round to the output's 8 or
    11 significant bits."""
    if out.dtype in (torch.float16, torch.bfloat16):
        return out.float()
    return out
