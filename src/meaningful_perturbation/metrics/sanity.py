"""Sanity check by cascading model randomisation (Adebayo et al. 2018).

An explanation that depends on what the model learned must change when the model's
weights are destroyed. Layers are re-initialised cumulatively from the output side, the
saliency is recomputed after each, and its Spearman rank correlation with the original
saliency is reported: it should fall towards 0.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import InputError, ModelError
from ._common import check_images, describe, resolve_target
from ._ranks import average_ranks

__all__ = ["SanityResult", "spearman", "cascading_randomization", "parameter_layers"]


@dataclass(frozen=True)
class SanityResult:
    """Outcome of :func:`cascading_randomization`.

    Attributes:
        layer_names: the layers in the order they were randomised (output side first);
            row ``k`` of ``spearman`` has layers ``0..k`` randomised.
        spearman: ``(n_layers, N)`` float64 Spearman correlation between the saliency of the
            randomised model and the original saliency, per image. Lower (closer to 0)
            means the explainer passes the check.
    """

    layer_names: list[str]
    spearman: torch.Tensor


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image, ties receiving average ranks.

    Equal to ``scipy.stats.spearmanr`` of each flattened pair: the Pearson correlation of
    the average ranks.

    Args:
        a: ``(N, ...)`` real tensor (e.g. ``(N, H, W)`` saliency).
        b: same shape as ``a``.

    Returns:
        ``(N,)`` float64 in [-1, 1]; NaN where either map is constant.

    Example:
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] == 0:
            raise InputError(f"{name}: expected a tensor of shape (N, ...) with N >= 1, got {describe(t)}")
    if a.shape != b.shape:
        raise InputError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    n = a.shape[0]
    ra = average_ranks(a.detach().reshape(n, -1))
    rb = average_ranks(b.detach().to(a.device).reshape(n, -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = (ra.pow(2).sum(dim=1) * rb.pow(2).sum(dim=1)).sqrt()
    num = (ra * rb).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the submodules that own parameters, output side first (reverse registration order).

    Registration order is taken as the forward order, which holds for ``nn.Sequential``
    and for modules whose ``__init__`` declares layers input first; pass ``layers``
    explicitly otherwise.
    """
    names = [name for name, mod in model.named_modules() if any(True for _ in mod.parameters(recurse=False))]
    return names[::-1]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw ``module``'s own parameters from a seed, leaving the global RNG untouched.

    Uses the module's ``reset_parameters()`` (PyTorch's default initialisation) when it has
    one; otherwise each parameter is redrawn from ``N(0, σ²)`` with σ its current standard
    deviation (0.01 when that is 0 or undefined).
    """
    devices = [p.device for p in module.parameters(recurse=False) if p.device.type == "cuda"]
    cuda_ids = sorted({d.index or 0 for d in devices})
    # Seed only the generators this module draws from, inside fork_rng so that every
    # global RNG state is restored afterwards (torch.manual_seed would touch all devices).
    with torch.random.fork_rng(devices=cuda_ids), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        for i in cuda_ids:
            torch.cuda.default_generators[i].manual_seed(seed)
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
        else:
            gen = torch.Generator().manual_seed(seed)
            for p in module.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                std = std if std > 0 and math.isfinite(std) else 0.01
                p.copy_(torch.randn(p.shape, generator=gen).mul_(std).to(p))


def cascading_randomization(
    model: nn.Module,
    explain_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor | int,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> SanityResult:
    """Cascading randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

    The model is deep-copied (the caller's model is never modified); the saliency of the
    unchanged copy is the reference. Then, cumulatively, layer ``layers[0]`` is
    re-initialised, then ``layers[1]`` as well, and so on; after each step the saliency
    is recomputed with ``explain_fn`` and compared to the reference by :func:`spearman`.
    Layer ``k`` is re-initialised from seed ``seed + k`` (see :func:`parameter_layers` for the
    default order and ``reset_parameters`` for the distribution), so results are
    reproducible. Correlations should fall: **lower is better** for the explainer.

    Args:
        model: the classifier, an ``nn.Module`` (copied with ``copy.deepcopy``).
        explain_fn: ``explain_fn(model_copy, x, target) -> (N, H, W)`` saliency; it may
            use gradients.
        x: ``(N, C, H, W)`` normalised images.
        target: ``(N,)`` long classes (or one int).
        layers: names (as in ``model.named_modules()``) of the layers to randomise, in the
            order of randomisation (output side first); default
            :func:`parameter_layers` ``(model)``.
        seed: base seed of the re-initialisation.

    Returns:
        :class:`SanityResult` with ``spearman`` of shape ``(len(layers), N)``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module (it is deep-copied), got {describe(model)}")
    if not callable(explain_fn):
        raise InputError(f"explain_fn: expected a callable (model, x, target) -> (N, H, W), got {describe(explain_fn)}")
    x = check_images(x)
    target = resolve_target(target, x.shape[0], x.device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an int, got {describe(seed)}")
    names = parameter_layers(model) if layers is None else list(layers)
    modules = dict(model.named_modules())
    unknown = [nm for nm in names if nm not in modules]
    if unknown or not names:
        raise InputError(
            f"layers: expected a non-empty list of submodule names of model, got unknown {unknown or names}; "
            f"available: {parameter_layers(model)}"
        )

    work = copy.deepcopy(model)
    work_modules = dict(work.named_modules())

    def explain(m: nn.Module) -> torch.Tensor:
        s = explain_fn(m, x, target)
        if not isinstance(s, torch.Tensor) or s.dim() != 3 or s.shape[0] != x.shape[0]:
            raise ModelError(f"explain_fn: expected an (N, H, W) saliency tensor, got {describe(s)}")
        return s.detach()

    reference = explain(copy.deepcopy(work))
    rows = []
    for k, name in enumerate(names):
        _reinitialise(work_modules[name], seed + k)
        rows.append(spearman(explain(copy.deepcopy(work)), reference))
    return SanityResult(layer_names=names, spearman=torch.stack(rows))
