"""The public entry point :func:`explain`."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ._validate import check_images, resolve_target
from .core.frozen import frozen
from .core.loop import check_output
from .core.objective import Targets
from .core.precision import working_dtype
from .errors import InputError, ModelError
from .explanation import Explanation
from .methods.common import Context
from .methods.registry import get_method, resolve_config

__all__ = ["explain"]


def explain(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: Any = None,
    method: str = "paper",
    *,
    seed: int = 0,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> Explanation:
    """Explain the model's prediction for a batch of images.

    Args:
        model: ``nn.Module`` or callable mapping ``(N, C, H, W)`` to ``(N, classes)`` scores
            (logits). It is run in eval mode with frozen parameters and restored afterwards.
        x: ``(N, C, H, W)`` float tensor, already normalised for the model, on any device.
        target: ``None`` (top-1 class of the clean image; top-5 for ``paper-loc``), an int,
            an ``(N,)`` integer tensor, or a list of ``N`` class lists (the scores of the
            classes in a list are summed; images with different numbers of classes share
            the batch).
        method: a name from :func:`meaningful_perturbation.methods`.
        seed: seed of every random draw (jitter, noise); same seed → identical masks.
        progress: show a tqdm progress bar over the optimisation steps.
        callback: ``callback(step, total)`` after every step.
        **overrides: any field of the method's config (``steps``, ``lr``, ``game``, ...).

    Returns:
        :class:`Explanation` with float32 ``saliency`` ``(N, H, W)`` and ``masks``
        ``(N, K, H, W)`` on the CPU.

    Precision: pass ``x`` in the model's dtype (float16, bfloat16, float32 or float64, e.g.
    ``model.half(); explain(model, x.half())``). Masks, regularisers, perturbations and the
    optimiser state are computed in float32 (float64 for a float64 ``x``) and only the
    model's input is cast to ``x.dtype`` before each forward pass; scores are computed in
    at least float32 from the output, and the backward pass through a float16 model is
    rescaled per image by a power of two so that its gradients do not underflow
    (:mod:`~meaningful_perturbation.core.precision`). Float32 inputs are computed exactly
    as before.

    Raises:
        InputError: bad ``x`` (not a finite floating ``(N, C, H, W)`` tensor, or a dtype
            other than the four above), ``target`` or ``seed``; or the model fails on ``x``
            whose dtype differs from the model's parameters'.
        ModelError: the model fails on ``x`` or returns something other than finite
            ``(N, classes)`` scores.
        ConfigError: an unknown method or a bad override.

    Example:
        >>> import torch, meaningful_perturbation as mp
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> ex = mp.explain(model, torch.randn(2, 3, 32, 32), target=1, steps=5)
        >>> ex.saliency.shape, ex.masks.shape
        (torch.Size([2, 32, 32]), torch.Size([2, 1, 32, 32]))
    """
    spec = get_method(method)
    cfg = resolve_config(spec, overrides)
    x = check_images(x).detach()
    work = working_dtype(x.dtype)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an int, got {seed!r}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=getattr(cfg, "steps", None), desc=f"{method}", unit="step", leave=False)
    user_cb = callback

    def cb(step: int, total: int) -> None:
        if bar is not None:
            bar.update(1)
        if user_cb is not None:
            user_cb(step, total)

    try:
        with frozen(model):
            with torch.no_grad():
                try:
                    logits = model(x)
                except (ModelError, InputError):
                    raise
                except Exception as e:
                    raise _forward_error(model, x, e) from e
            if hasattr(logits, "logits") and not isinstance(logits, torch.Tensor):
                logits = logits.logits
            logits = check_output(logits, x.shape[0], where="on the clean images").float()
            rows = resolve_target(target, logits, getattr(cfg, "top_k", 1))
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            ctx = Context(
                model=model,
                x=x.to(work),
                targets=Targets(rows, device=x.device),
                clean_logits=logits,
                seed=seed,
                generator=generator,
                method=method,
                callback=cb if (bar is not None or user_cb is not None) else None,
                input_dtype=x.dtype,
            )
            return spec.run(ctx, cfg)
    finally:
        if bar is not None:
            bar.close()


def _forward_error(model: Callable, x: torch.Tensor, e: Exception) -> Exception:
    """The error for a model that fails on the clean ``x``: an InputError when ``x``'s dtype
    differs from the dtype of every floating parameter and buffer of the model (the likely
    cause), else a ModelError naming the dtype and device the model was run with."""
    what = f"{type(e).__name__}: {e}"
    if isinstance(model, torch.nn.Module):
        dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
        if len(dtypes) == 1 and x.dtype not in dtypes:
            (want,) = dtypes
            return InputError(
                f"x: dtype {x.dtype} does not match the model's parameters ({want}); pass x in the "
                f"model's dtype (x.to({want})) or convert the model; calling the model failed with {what}"
            )
    hint = "" if x.dtype == torch.float32 else f" (x is {x.dtype} on {x.device}: do the model's layers support that precision there?)"
    return ModelError(f"model: calling it on x of shape {tuple(x.shape)} failed with {what}{hint}")
