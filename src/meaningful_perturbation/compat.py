"""Adapters to the Captum and Quantus conventions.

* :class:`MeaningfulPerturbation` and :class:`ExtremalPerturbation` look like Captum
  perturbation attribution classes: ``Attr(forward_func).attribute(inputs, target=...)``.
  Following Captum, the attributions have the **same shape as** ``inputs``
  ``(N, C, H, W)``: the per-pixel saliency ``(N, H, W)`` of :func:`~meaningful_perturbation.explain`
  is broadcast (copied) over the channel axis, on the inputs' device and dtype. Sum or take one
  channel to get the map back. The full :class:`~meaningful_perturbation.Explanation` of the
  last call is kept in ``.last_explanation``.
* :func:`as_quantus_explain_func` returns a function usable as Quantus' ``explain_func``:
  ``(model, inputs: np.ndarray, targets: np.ndarray, **kwargs) -> np.ndarray (N, 1, H, W)``.

Neither Captum nor Quantus is imported here.

Example:
    >>> import torch
    >>> from meaningful_perturbation.compat import MeaningfulPerturbation
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
    ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> attr = MeaningfulPerturbation(net).attribute(torch.randn(2, 3, 16, 16), target=1, steps=2)
    >>> tuple(attr.shape)
    (2, 3, 16, 16)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .api import explain
from .errors import InputError
from .explanation import Explanation

__all__ = ["MeaningfulPerturbation", "ExtremalPerturbation", "as_quantus_explain_func"]


def _captum_target(target: Any, n: int) -> Any:
    """Captum targets: None, int, (N,) tensor, or a list of ints (one per example)."""
    if target is None or isinstance(target, int) or isinstance(target, torch.Tensor):
        return target
    if isinstance(target, (list, tuple)):
        if len(target) == n and all(isinstance(t, (int, np.integer)) for t in target):
            return torch.as_tensor([int(t) for t in target], dtype=torch.long)
        if len(target) == n and all(isinstance(t, (list, tuple)) for t in target):
            return [list(map(int, t)) for t in target]
    if isinstance(target, np.ndarray):
        return torch.as_tensor(target, dtype=torch.long).reshape(-1)
    raise InputError(
        f"target: expected None, an int, an (N,) tensor or a list of N ints, got {type(target).__name__}"
    )


class MeaningfulPerturbation:
    """Captum-style wrapper of :func:`~meaningful_perturbation.explain`.

    Args:
        forward_func: model or callable mapping ``(N, C, H, W)`` to ``(N, classes)``.
        method: preset name (default ``"paper"``).
    """

    method = "paper"

    def __init__(self, forward_func: Callable[[torch.Tensor], torch.Tensor], method: str | None = None) -> None:
        self.forward_func = forward_func
        if method is not None:
            self.method = method
        self.last_explanation: Explanation | None = None

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(self, inputs: torch.Tensor, target: Any = None, *, seed: int = 0, **kwargs: Any) -> torch.Tensor:
        """Attributions of ``inputs`` for ``target``.

        Args:
            inputs: ``(N, C, H, W)`` tensor.
            target: ``None`` (top class), int, ``(N,)`` tensor or list of ints.
            seed: random seed.
            **kwargs: config overrides of the method (``steps``, ``l1``, ``areas``, ...).

        Returns:
            ``(N, C, H, W)`` tensor: the saliency broadcast over channels.
        """
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise InputError("inputs: expected one image tensor (multi-input models are not supported)")
            inputs = inputs[0]
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            raise InputError(f"inputs: expected an (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs))}")
        ex = explain(
            self.forward_func, inputs, target=_captum_target(target, inputs.shape[0]),
            method=self.method, seed=seed, **kwargs,
        )
        self.last_explanation = ex
        sal = ex.saliency.to(device=inputs.device, dtype=inputs.dtype if inputs.is_floating_point() else torch.float32)
        return sal.unsqueeze(1).expand_as(inputs).contiguous()


class ExtremalPerturbation(MeaningfulPerturbation):
    """Captum-style Extremal Perturbation; ``areas=[...]`` in :meth:`attribute` picks the areas.

    The attribution is the saliency of ``explain(method="extremal")``: the sum of the masks of
    all areas, broadcast over channels.
    """

    method = "extremal"

    def attribute(self, inputs: torch.Tensor, target: Any = None, *, areas: Any = None, seed: int = 0,
                  **kwargs: Any) -> torch.Tensor:
        if areas is not None:
            kwargs["areas"] = tuple(float(a) for a in (areas if isinstance(areas, (list, tuple)) else [areas]))
        return super().attribute(inputs, target, seed=seed, **kwargs)


def as_quantus_explain_func(method: str = "paper", **overrides: Any) -> Callable[..., np.ndarray]:
    """An ``explain_func`` for Quantus metrics.

    Args:
        method: preset name.
        **overrides: config overrides and ``seed``.

    Returns:
        ``f(model, inputs, targets, **kwargs) -> np.ndarray`` of shape ``(N, 1, H, W)``,
        float32. ``inputs`` is a channel-first ``(N, C, H, W)`` array (or tensor); ``kwargs``
        may carry ``device`` and further overrides (Quantus passes its own keys too; those
        that are not settings of the method are ignored).

    Example:
        >>> import quantus  # doctest: +SKIP
        >>> metric = quantus.FaithfulnessCorrelation(nr_runs=10)  # doctest: +SKIP
        >>> metric(model=net, x_batch=x, y_batch=y, explain_func=as_quantus_explain_func(steps=100))  # doctest: +SKIP
    """
    import dataclasses

    from .methods.registry import get_method

    fields = {f.name for f in dataclasses.fields(get_method(method).default_config())}
    seed = int(overrides.pop("seed", 0))

    def explain_func(model: Any, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        device = kwargs.get("device")
        if device is None and isinstance(model, torch.nn.Module):
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs,
                            dtype=torch.float32, device=device or "cpu")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        t = None if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        if t is not None and t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        extra = {k: v for k, v in kwargs.items() if k in fields}
        ex = explain(model, x, target=t, method=method, seed=seed, **{**overrides, **extra})
        return ex.saliency.unsqueeze(1).float().cpu().numpy()

    explain_func.__name__ = f"mperturb_{method.replace('-', '_')}"
    return explain_func
