"""Shared checks and helpers of the metrics: input validation, targets, chunked model calls.

Every check raises :class:`~meaningful_perturbation.errors.InputError` whose message starts
with the argument's name and says what was expected and what arrived.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "describe",
    "check_saliency",
    "check_mask",
    "check_images",
    "check_images_and_saliency",
    "check_positive_int",
    "check_fraction",
    "resolve_target",
    "class_probabilities",
    "step_counts",
    "descending_order",
]


from .._validate import describe  # noqa: E402  (one helper for every error message)


def check_saliency(saliency: Any, name: str = "saliency") -> torch.Tensor:
    """``saliency`` must be a finite floating ``(N, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(saliency, torch.Tensor):
        raise InputError(f"{name}: expected a float torch.Tensor of shape (N, H, W), got {describe(saliency)}")
    if saliency.dim() != 3:
        hint = " (drop the channel axis with saliency[:, 0])" if saliency.dim() == 4 else ""
        hint = " (add a batch axis with saliency.unsqueeze(0))" if saliency.dim() == 2 else hint
        raise InputError(
            f"{name}: expected 3 dimensions (N, H, W), got {saliency.dim()} with shape {tuple(saliency.shape)}{hint}"
        )
    if not saliency.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor, got dtype {saliency.dtype} (use saliency.float())")
    if saliency.shape[0] == 0 or saliency.shape[1] == 0 or saliency.shape[2] == 0:
        raise InputError(f"{name}: expected a non-empty (N, H, W) tensor, got shape {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise InputError(f"{name}: contains NaN or inf values; expected finite saliency")
    return saliency


def check_mask(mask: Any, shape: torch.Size, name: str, device: torch.device) -> torch.Tensor:
    """``mask`` must be a boolean tensor (or a 0/1 numeric one) of ``shape``; returned as bool on ``device``."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a bool torch.Tensor of shape {tuple(shape)}, got {describe(mask)}")
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)} (that of saliency), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise InputError(
                f"{name}: expected a bool mask (or only 0/1 values), got dtype {mask.dtype} with other values"
            )
        mask = mask != 0
    return mask.to(device)


def check_images(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` must be a finite floating ``(N, C, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a float torch.Tensor of shape (N, C, H, W), got {describe(x)}")
    if x.dim() != 4:
        raise InputError(f"{name}: expected 4 dimensions (N, C, H, W), got {x.dim()} with shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor normalised for the model, got dtype {x.dtype}")
    if min(x.shape) == 0:
        raise InputError(f"{name}: expected a non-empty (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: contains NaN or inf values")
    return x


def check_images_and_saliency(x: Any, saliency: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x`` ``(N, C, H, W)`` and ``saliency`` ``(N, H, W)`` agree; saliency moved to ``x.device``."""
    x = check_images(x)
    saliency = check_saliency(saliency)
    n, _, h, w = x.shape
    if tuple(saliency.shape) != (n, h, w):
        raise InputError(
            f"saliency: expected shape {(n, h, w)} to match x {tuple(x.shape)}, got {tuple(saliency.shape)}"
        )
    return x, saliency.to(x.device)


def check_positive_int(v: Any, name: str, minimum: int = 1) -> int:
    """``v`` must be an int ``>= minimum``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {describe(v)}")
    return v


def check_fraction(v: Any, name: str, *, low: float = 0.0, high: float = 1.0, open_low: bool = False) -> float:
    """``v`` must be a real number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name}: expected a number in {'(' if open_low else '['}{low}, {high}], got {describe(v)}")
    if v > high or v < low or (open_low and v == low):
        raise InputError(f"{name}: expected a number in {'(' if open_low else '['}{low}, {high}], got {v}")
    return float(v)


def resolve_target(target: Any, n: int, device: torch.device) -> torch.Tensor:
    """Turn an int, an ``(N,)`` integer tensor/array or a sequence of ``N`` ints into an ``(N,)`` long tensor."""
    if isinstance(target, bool):
        raise InputError(f"target: expected an int or an (N,) integer tensor, got {describe(target)}")
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise InputError(f"target: expected integer classes, got a numpy array of dtype {target.dtype}")
        target = torch.from_numpy(target)
    if isinstance(target, np.integer):
        target = int(target)
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise InputError(f"target: expected an integer tensor of shape ({n},), got {describe(target)}")
        if target.dim() == 0:
            t = torch.full((n,), int(target), dtype=torch.long)
        elif target.dim() == 1 and target.shape[0] == n:
            t = target.long()
        else:
            raise InputError(f"target: expected shape ({n},) (one class per image), got {tuple(target.shape)}")
    elif isinstance(target, Sequence) and not isinstance(target, str):
        vals = list(target)
        if len(vals) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise InputError(f"target: expected {n} ints (one class per image), got {describe(target)}")
        t = torch.tensor([int(v) for v in vals], dtype=torch.long)
    else:
        raise InputError(f"target: expected an int or an (N,) integer tensor, got {describe(target)}")
    if (t < 0).any():
        raise InputError(f"target: expected non-negative class indices, got {t.tolist()}")
    return t.to(device)


def class_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    make_batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    count: int,
    batch_size: int,
    device: torch.device,
    head: Any = "auto",
) -> torch.Tensor:
    """Probability of a class for ``count`` images built lazily, ``batch_size`` at a time.

    Args:
        model: ``(B, C, H, W) -> (B, outputs)`` scores, read through ``head``.
        make_batch: given flat indices ``q`` (``(B,)`` long), returns the images ``(B, C, H, W)``
            and the class to read ``(B,)``.
        count: number of images.
        batch_size: images per model call.
        device: where the indices live.
        head: ``"auto"``, a head kind or a :class:`~meaningful_perturbation.core.head.Head`
            (softmax of logits, probabilities, sigmoid...); ``"auto"`` is resolved on the
            first batch's outputs and kept for the rest.

    Returns:
        ``(count,)`` float32 probabilities, computed under ``torch.no_grad()``.
    """
    from ..core.head import Head, model_output, resolve_head

    out = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            q = torch.arange(start, min(start + batch_size, count), device=device)
            images, cls = make_batch(q)
            logits = model_output(model(images), images.shape[0], where="during the metric")
            if int(cls.max()) >= logits.shape[1]:
                raise InputError(
                    f"target: class {int(cls.max())} out of range for a model with {logits.shape[1]} outputs"
                )
            if not isinstance(head, Head):
                head = resolve_head(head, logits)
            # Probabilities in float32 (half/bfloat16 logits would round them).
            p = head.probabilities(logits).gather(1, cls.view(-1, 1)).squeeze(1)
            out.append(p)
    return torch.cat(out)


def step_counts(num_pixels: int, steps: int | None, step_size: float | None, device: torch.device) -> torch.Tensor:
    """Number of pixels changed after each step: ``(S+1,)`` long, from 0 to ``num_pixels``.

    * ``steps=S``: ``n_s = floor(s·P/S)`` for ``s = 0..S`` (S equal steps, up to rounding).
    * ``step_size=f`` (fraction of the pixels per step): ``p = max(1, round(f·P))`` pixels per
      step, ``n_s = min(s·p, P)`` for ``s = 0..ceil(P/p)`` (RISE's convention, the last step
      may be shorter).
    """
    if steps is not None and step_size is not None:
        raise InputError(
            f"steps: give either steps or step_size, not both; got steps={steps!r} and step_size={step_size!r}"
        )
    if step_size is not None:
        f = check_fraction(step_size, "step_size", open_low=True)
        p = max(1, int(round(f * num_pixels)))
        s = torch.arange(0, -(-num_pixels // p) + 1, device=device)
        return (s * p).clamp_(max=num_pixels)
    steps = 100 if steps is None else check_positive_int(steps, "steps")
    s = torch.arange(0, steps + 1, device=device)
    return torch.div(s * num_pixels, steps, rounding_mode="floor")


def descending_order(saliency: torch.Tensor) -> torch.Tensor:
    """Pixel indices by decreasing saliency, ties by raster index: ``(N, H·W)`` long.

    A stable descending sort keeps equal values in their original (raster) order, so the
    result is deterministic on every device.
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices
