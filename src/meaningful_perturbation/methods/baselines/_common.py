"""Shared plumbing of the baselines: the score function handed to Captum, the loop over
several target classes per image, and packaging a saliency map as an Explanation."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ...core.head import LOGITS, Head
from ...core.loop import check_output
from ...core.objective import class_probability
from ...core.precision import ModelBridge, at_least_float32, to_model_input
from ...explanation import Explanation
from ..common import Context
from ..registry import config_as_dict

__all__ = ["SCORE_KINDS", "score_forward", "model_outputs", "sum_over_targets", "normalise", "package"]

# What a baseline differentiates or perturbs: the class probability or the logit (read through
# the model's head, core/head.py).
SCORE_KINDS = ("prob", "logit")


def model_outputs(model: Callable, x: torch.Tensor, *, where: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``model(x)`` as a checked ``(B, outputs)`` tensor (see :func:`...core.head.model_output`),
    with ``x`` cast to the model's input ``dtype`` first (None: as it is)."""
    return check_output(model(to_model_input(x, dtype)), x.shape[0], where=where)


def score_forward(
    model: Callable,
    kind: str,
    *,
    where: str,
    head: Head = LOGITS,
    dtype: torch.dtype | None = None,
    scale_gradients: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward function for Captum: ``x ↦ (B, classes)`` class probabilities (``kind="prob"``)
    or logits, both read through ``head`` (softmax of logits by default) in at least float32;
    ``x`` is cast to the model's input ``dtype`` (the gradient flows back into ``x``'s
    precision). ``scale_gradients``: rescale the backward pass of a float16 model per image so
    that the input gradient does not underflow (:class:`ModelBridge`; only for gradients with
    respect to the input, not to inner layers)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        bridge = ModelBridge(dtype)
        inp = bridge.enter(x) if scale_gradients else to_model_input(x, dtype)
        out = at_least_float32(bridge.leave(model_outputs(model, inp, where=where)))
        return head.probabilities(out) if kind == "prob" else head.logits(out)

    return forward


def sum_over_targets(ctx: Context, attribute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``Σ_t valid[:, t]·attribute(index[:, t])`` over the target slots.

    Captum explains one class per row, so an image with several classes (a ragged target
    list) is explained once per slot ``t`` and the attributions are summed, skipping the
    padding. For attributions linear in the score (signed gradients, pre-ReLU Grad-CAM,
    occlusion differences) this is the attribution of the summed score, the quantity the
    mask-learning presets explain. ``ctx.callback(t + 1, T)`` reports each slot.
    """
    index, valid = ctx.targets.index, ctx.targets.valid
    total = index.shape[1]
    acc = None
    for t in range(total):
        a = attribute(index[:, t])
        w = valid[:, t].to(a.dtype).view(-1, *([1] * (a.dim() - 1)))
        acc = a * w if acc is None else acc + a * w
        if ctx.callback is not None:
            ctx.callback(t + 1, total)
    return acc


def normalise(saliency: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``(N, H, W)`` to [0, 1] (a constant map gives 0)."""
    n = saliency.shape[0]
    flat = saliency.reshape(n, -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(saliency.shape)


def package(ctx: Context, saliency: torch.Tensor, cfg: Any, extra: dict[str, Any] | None = None) -> Explanation:
    """Wrap a ``(N, H, W)`` saliency map as an :class:`Explanation`.

    Baselines learn no keep-mask: ``masks[:, 0]`` is the saliency min-max normalised per
    image (1 = most important pixel), so code that reads ``masks`` gets a [0, 1] importance
    map. ``history`` is empty; ``scores`` holds only ``clean``, the probability of the target
    on the clean image (read through the model's head).
    """
    sal = saliency.detach().float().cpu()
    return Explanation(
        saliency=sal,
        masks=normalise(sal).unsqueeze(1),
        target=ctx.targets.lists,
        history={},
        scores={"clean": class_probability(ctx.clean_logits, ctx.targets, ctx.head).detach().float().cpu()},
        method=ctx.method,
        config=config_as_dict(cfg),
        extra=dict(extra or {}),
        head=ctx.head.kind,
    )
