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
  (:func:`at_least_float32`);
* for a model whose dtype has a narrower exponent range than float32 (float16: smallest
  normal 6e-5, subnormals down to 6e-8) the gradient that enters the model's backward pass
  is rescaled per image by a power of two so that its largest entry is in [1, 2), and the
  input gradient is divided by the same factor (:class:`ModelBridge`). Without it the
  gradient of a confident softmax probability, ``p·(1 − p) ≈ 1e-6``, underflows to 0 inside
  the model and the mask never moves (mixed-precision training's loss scaling, per image,
  so results do not depend on the batch; powers of two make the rescaling exact).

For a float32 ``x`` every cast is the identity: results are bitwise those of a pure
float32 computation.
"""

from __future__ import annotations

import torch

from ..errors import InputError

__all__ = ["SUPPORTED_DTYPES", "working_dtype", "to_model_input", "at_least_float32", "ModelBridge"]

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


def _needs_scaling(dtype: torch.dtype | None) -> bool:
    """True for dtypes whose exponent range is narrower than float32's (float16)."""
    return dtype is not None and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(torch.float32).max


class ModelBridge:
    """The two ends of one forward pass of the model, for gradient flow across precisions.

    ``enter(x)`` casts the input to the model's dtype; ``leave(out)`` promotes a low-precision
    output to float32. For float16 models (see :func:`_needs_scaling`) the two ends also
    rescale the backward pass: ``leave``'s backward multiplies row ``i`` of the output
    gradient by ``s_i = 2^-floor(log2 max_j |g_ij|)`` and ``enter``'s backward divides row
    ``i`` of the input gradient by ``s_i``. This is exact for models whose output row ``i``
    depends on input row ``i`` only (eval mode); rows whose gradient is 0 or not finite are
    left unscaled. With ``dtype`` None or equal to the input's dtype both ends return their
    argument unchanged.
    """

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype
        self.scale: torch.Tensor | None = None  # (B,) set by leave's backward
        self._batch: int | None = None  # rows of the input, when the backward pass is rescaled

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None or x.dtype == self.dtype:
            return x
        if _needs_scaling(self.dtype) and x.requires_grad and x.dim() >= 1:
            self._batch = x.shape[0]
            return _Enter.apply(x, self.dtype, self)
        return x.to(self.dtype)

    def leave(self, out):
        """``out`` in at least float32; anything but a floating tensor is returned as it is."""
        if self.dtype is None or not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        if self._batch is not None and out.dim() >= 1 and out.shape[0] == self._batch:
            return _Leave.apply(out, self)  # one output row per input row: rescale per row
        return at_least_float32(out)


class _Enter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dtype, bridge):
        ctx.source = x.dtype
        ctx.bridge = bridge
        return x.to(dtype)

    @staticmethod
    def backward(ctx, g):
        g = g.to(ctx.source)
        s = ctx.bridge.scale
        if s is not None and s.shape[0] == g.shape[0]:
            g = g / s.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
        return g, None, None


class _Leave(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, bridge):
        ctx.dtype = out.dtype
        ctx.bridge = bridge
        return out.float()

    @staticmethod
    def backward(ctx, g):
        peak = g.reshape(g.shape[0], -1).abs().amax(dim=1) if g.numel() else g.new_zeros(g.shape[:1])
        ok = (peak > 0) & torch.isfinite(peak)
        scale = torch.where(ok, torch.exp2(-torch.floor(torch.log2(torch.where(ok, peak, torch.ones_like(peak))))), torch.ones_like(peak))
        ctx.bridge.scale = scale
        return (g * scale.view(-1, *([1] * (g.dim() - 1)))).to(ctx.dtype), None
