"""The one place where a model's raw output becomes per-class scores.

Every part of the project that reads a model — :func:`~meaningful_perturbation.explain`, the
optimisation loop, the baselines, the metrics, the CLI and the batch runner — goes through
:func:`model_output` (what the model returned → one ``(N, outputs)`` tensor) and a
:class:`Head` (that tensor → class probabilities and logit-like scores).

Heads (the ``head=`` option of ``explain``, ``--head`` on the command line):

``"logits"``
    raw scores of mutually exclusive classes; probability = softmax (the usual ImageNet
    classifier, and what the 2017 and 2019 papers' code reads: the ``prob`` layer on top of
    the logits, and the logits themselves).
``"probabilities"``
    the model already ends in a softmax: each row is non-negative and sums to 1. The
    probability is the output itself; the logit-like score is ``log p`` (the logit up to the
    row's log-partition, which cannot be recovered from probabilities), so the contrastive
    score ``log p_c − max_{o≠c} log p_o`` equals the logit difference exactly.
``"sigmoid"``
    independent classes (multi-label, or a binary classifier with one output column): the
    output is a logit ``z`` per class and the class probability is ``sigmoid(z)`` (the
    ``BCEWithLogitsLoss`` convention). A single column is class 0, the positive class.
``"sigmoid-probabilities"``
    the same with the sigmoid already applied: the output is ``p`` per class, the logit-like
    score is ``log(p / (1 − p))``.

``"auto"`` (the default) chooses from the model's output on the clean images, only where that
is safe: one output column → ``"sigmoid"`` (a softmax of one column is 1 whatever the input);
rows that are all non-negative and sum to 1 (within the output's rounding: 1e-3 for float32
and float16, the machine epsilon 2⁻⁷ for bfloat16 values, see :func:`sum_tolerance`) →
``"probabilities"``; anything else → ``"logits"``. A multi-label head cannot be told apart
from logits by its values: pass ``head="sigmoid"``. Where the values make a reading doubtful
(one column whose values all lie in [0, 1]; several columns all in [0, 1] whose rows do not
sum to 1) ``"auto"`` still picks the rule above and warns with
:class:`~meaningful_perturbation.errors.HeadWarning`, naming the option that would change it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, HeadWarning, ModelError

__all__ = ["HEADS", "Head", "unwrap_output", "model_output", "resolve_head", "declared_head", "check_head_option", "LOGITS"]

HEADS = ("auto", "logits", "probabilities", "sigmoid", "sigmoid-probabilities")

# Tolerance of the "rows sum to 1" test: float16 softmax outputs sum to 1 within ~5e-4; values
# of a coarser precision get that precision's machine epsilon (see sum_tolerance).
_SUM_TOL = 1e-3
# Probabilities are clamped away from 0 and 1 before a log so the logit-like scores stay finite.
_EPS = 1e-7


def sum_tolerance(out: torch.Tensor) -> float:
    """How far a row of probabilities ``out`` ``(N, C)`` may miss 1 through rounding alone.

    Each of a row's values is rounded to its precision with a relative error of at most half
    the machine epsilon ε, so a softmax row stored in that precision sums to 1 within about
    ε/2 (the values sum to 1). The precision is the output's dtype, or the coarsest of
    bfloat16 / float16 that holds every value exactly (a bfloat16 softmax cast back to
    float32 by the model). Returns max(1e-3, ε): 1e-3 for float32 and float16, 2⁻⁷ ≈ 0.0078
    for bfloat16.
    """
    eps = torch.finfo(out.dtype).eps if out.is_floating_point() else 0.0
    if out.is_floating_point() and out.dtype not in (torch.bfloat16, torch.float16):
        for low in (torch.bfloat16, torch.float16):
            if torch.equal(out, out.to(low).to(out.dtype)):
                eps = torch.finfo(low).eps
                break
    return max(_SUM_TOL, float(eps))


def _shape_of(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {tuple(v.shape)}"
    return type(v).__name__


def unwrap_output(out: Any) -> Any:
    """The logits tensor of an HF ``ModelOutput`` (``.logits``) or a ``{"logits": ...}`` dict;
    anything else unchanged (no checks: the optimisation loop calls this on every step)."""
    if isinstance(out, torch.Tensor):
        return out
    inner = getattr(out, "logits", None)
    if inner is None and isinstance(out, dict):
        inner = out.get("logits")
    return inner if isinstance(inner, torch.Tensor) else out


def model_output(out: Any, batch: int, *, where: str) -> torch.Tensor:
    """What a model returned → one checked ``(batch, outputs)`` tensor.

    Accepted: a tensor ``(batch, outputs)``; an object with a ``.logits`` tensor (Hugging Face
    ``ModelOutput``); a ``dict`` with a ``"logits"`` key. Refused with a
    :class:`~meaningful_perturbation.errors.ModelError` that says how to wrap the model:
    tuples and lists (which element holds the class scores cannot be known), other dicts,
    ``(batch,)`` vectors, more than two dimensions, a batch size that differs from the input's,
    and NaN or inf values.

    Args:
        out: the model's return value.
        batch: the input's batch size ``N``.
        where: a few words for the message ("on the clean images", ...).
    """
    out = unwrap_output(out)
    if not isinstance(out, torch.Tensor):
        if isinstance(out, (tuple, list)):
            parts = ", ".join(_shape_of(v) for v in out[:4]) + (", ..." if len(out) > 4 else "")
            raise ModelError(
                f"model output {where}: expected one tensor of shape ({batch}, classes), got a "
                f"{type(out).__name__} of {len(out)} items ({parts}); wrap the model so it returns the class "
                "scores only, e.g. lambda x: model(x)[0]"
            )
        elif isinstance(out, dict):
            keys = ", ".join(map(repr, list(out)[:6]))
            raise ModelError(
                f"model output {where}: expected one tensor of shape ({batch}, classes), got a dict with keys "
                f"{keys} and no 'logits'; wrap the model so it returns the class scores, e.g. "
                "lambda x: model(x)['scores']"
            )
        else:
            raise ModelError(
                f"model output {where}: expected a tensor of shape ({batch}, classes), got {type(out).__name__}"
            )
    if out.dim() == 1 and out.shape[0] == batch:
        raise ModelError(
            f"model output {where}: expected shape ({batch}, classes), got a vector of shape {tuple(out.shape)}; "
            "for a binary classifier with one logit return it as one column, out.unsqueeze(1) "
            "(read with a sigmoid: head='sigmoid'), or return both classes' logits"
        )
    if out.dim() != 2 or out.shape[0] != batch:
        raise ModelError(
            f"model output {where}: expected shape ({batch}, classes) for an input batch of {batch}, "
            f"got {tuple(out.shape)}; wrap the model so it returns one row of class scores per image"
        )
    if out.shape[1] == 0:
        raise ModelError(f"model output {where}: has no columns (shape {tuple(out.shape)}); expected one score per class")
    if not out.is_floating_point():
        raise ModelError(f"model output {where}: expected floating-point class scores, got dtype {out.dtype}")
    if not torch.isfinite(out).all():
        raise ModelError(f"model output {where}: contains NaN or inf values")
    return out


@dataclass(frozen=True)
class Head:
    """How to read a model's ``(B, outputs)`` output as class scores.

    Attributes:
        kind: ``"logits"``, ``"probabilities"``, ``"sigmoid"`` or ``"sigmoid-probabilities"``
            (see the module docstring).
        detected: True when ``"auto"`` chose ``kind`` from the clean output.
    """

    kind: str = "logits"
    detected: bool = False

    @property
    def multilabel(self) -> bool:
        """Classes are independent (a sigmoid per class), not mutually exclusive."""
        return self.kind.startswith("sigmoid")

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, classes)`` in float32, each in [0, 1].

        ``logits``: softmax; ``probabilities``: the output; ``sigmoid``: ``sigmoid(z)``;
        ``sigmoid-probabilities``: the output.
        """
        z = out.float()
        if self.kind == "logits":
            return torch.softmax(z, dim=1)
        if self.kind == "sigmoid":
            return torch.sigmoid(z)
        return z

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Logit-like scores ``(B, classes)`` in float32 (unbounded, monotone in the probability).

        ``logits`` / ``sigmoid``: the output; ``probabilities``: ``log p``;
        ``sigmoid-probabilities``: ``log(p / (1 − p))``. Probabilities are clamped to
        ``[1e-7, 1 − 1e-7]`` first so the scores stay finite.
        """
        z = out.float()
        if self.kind in ("logits", "sigmoid"):
            return z
        p = z.clamp(_EPS, 1 - _EPS)
        if self.kind == "probabilities":
            return p.log()
        return p.log() - (1 - p).log()


LOGITS = Head("logits")


def check_head_option(head: Any, name: str = "head") -> str:
    """``head`` must be one of :data:`HEADS`; returns it."""
    if not isinstance(head, str) or head not in HEADS:
        raise ConfigError(f"{name}: expected one of {', '.join(map(repr, HEADS))}, got {head!r}")
    return head


def declared_head(model: Any) -> str | None:
    """What a model says of its own head, where it says it: a Hugging Face config's
    ``problem_type`` (``"multi_label_classification"`` → ``"sigmoid"``,
    ``"single_label_classification"`` → ``"logits"``), also on a wrapper's ``.model``."""
    for m in (model, getattr(model, "model", None)):
        problem = getattr(getattr(m, "config", None), "problem_type", None)
        if problem == "multi_label_classification":
            return "sigmoid"
        if problem == "single_label_classification":
            return "logits"
    return None


def resolve_head(head: Any, out: torch.Tensor, *, name: str = "head", declared: str | None = None) -> Head:
    """The :class:`Head` for option ``head`` given the clean output ``out`` ``(N, outputs)``.

    ``"auto"`` applies the detection rule of the module docstring; an explicit kind is checked
    against the values where they contradict it (``"probabilities"`` on rows that are negative
    or do not sum to 1, ``"sigmoid-probabilities"`` on values outside [0, 1]: a
    :class:`~meaningful_perturbation.errors.ConfigError`), so a wrong choice cannot silently
    give wrong probabilities.

    ``declared`` (see :func:`declared_head`) settles ``"auto"`` where the model states its
    head: a multi-label model is read with a sigmoid, a single-label one as logits (a softmax
    model's probabilities are still recognised as such).

    Warns:
        HeadWarning: when ``"auto"`` had to choose on values that would also fit another head.
    """
    check_head_option(head, name)
    tol = sum_tolerance(out.detach())
    z = out.detach().float()
    in_unit = bool(((z >= 0) & (z <= 1)).all())
    sums_to_one = bool((z >= 0).all()) and bool(((z.sum(dim=1) - 1).abs() <= tol).all())
    cols = int(z.shape[1])
    if head == "probabilities" and not sums_to_one:
        worst = float((z.sum(dim=1) - 1).abs().max())
        raise ConfigError(
            f"{name}: 'probabilities' needs rows of non-negative values summing to 1, but the model's rows "
            f"{'have negative values' if bool((z < 0).any()) else f'miss 1 by up to {worst:.3g}'}; "
            "use head='logits' for raw scores or head='sigmoid-probabilities' for independent probabilities"
        )
    if head == "sigmoid-probabilities" and not in_unit:
        raise ConfigError(
            f"{name}: 'sigmoid-probabilities' needs outputs in [0, 1], got values from {float(z.min()):.4g} "
            f"to {float(z.max()):.4g}; use head='sigmoid' if the outputs are logits"
        )
    if head in ("logits", "probabilities") and cols == 1:
        raise ConfigError(
            f"{name}: {head!r} reads the outputs with a softmax, but the model has one output column (a softmax of "
            "one column is 1 whatever the input); use head='sigmoid' (or 'sigmoid-probabilities' if the model "
            "applies the sigmoid itself)"
        )
    if head != "auto":
        return Head(head, detected=False)
    if declared == "sigmoid":
        return Head("sigmoid", detected=True)  # HF multi-label models return logits (BCEWithLogitsLoss)
    if declared == "logits" and cols > 1:
        return Head("probabilities" if sums_to_one else "logits", detected=True)
    if cols == 1:
        if in_unit:
            warnings.warn(
                f"head: the model has one output column whose values ({float(z.min()):.3g} to {float(z.max()):.3g}) "
                "all lie in [0, 1]; it is read as a logit (probability = sigmoid(output)). If the model already "
                "applies a sigmoid, pass head='sigmoid-probabilities' (--head sigmoid-probabilities)",
                HeadWarning,
                stacklevel=3,
            )
        return Head("sigmoid", detected=True)
    if sums_to_one and cols > 1:
        return Head("probabilities", detected=True)
    constant = bool((z.amax(dim=1) == z.amin(dim=1)).all())  # e.g. a zero-initialised head: no reading fits better
    if in_unit and cols > 1 and not constant:
        warnings.warn(
            f"head: all {cols} outputs lie in [0, 1] but the rows do not sum to 1; they are read as logits "
            "(softmax). If the model ends in a sigmoid (multi-label), pass head='sigmoid-probabilities' "
            "(--head sigmoid-probabilities)",
            HeadWarning,
            stacklevel=3,
        )
    return Head("logits", detected=True)

