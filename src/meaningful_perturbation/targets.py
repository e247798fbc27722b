"""What to explain: the model's clean scores and the target classes of each image.

Shared by :func:`~meaningful_perturbation.explain`, the ``mperturb`` command line and the batch
runner, so each reads a model's output and a target the same way:

* :func:`clean_scores` calls the model on the clean images and returns its checked output with
  the :class:`~meaningful_perturbation.core.head.Head` that reads it;
* :func:`resolve_target` turns the Python ``target`` argument into one class list per image;
* :func:`target_from_option` turns the command line's ``--target`` (an index, a class name,
  ``top1`` / ``top5``) into a class list for one image.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ._validate import describe
from .core.head import Head, model_output, resolve_head
from .errors import ConfigError, InputError, ModelError

__all__ = ["clean_scores", "resolve_target", "target_from_option", "TARGET_FORMS"]

TARGET_FORMS = (
    "None, an int, an (N,) integer tensor, a list of N class lists, "
    "or an (N, classes) multi-hot 0/1 matrix"
)


def clean_scores(model: Callable, x: torch.Tensor, head: Any = "auto") -> tuple[torch.Tensor, Head]:
    """``model(x)`` without gradients, checked, and the head that reads it.

    Args:
        model: maps ``(N, C, H, W)`` to ``(N, outputs)`` (see :func:`.core.head.model_output`
            for the accepted return types).
        x: ``(N, C, H, W)`` input.
        head: ``"auto"`` or a head kind (:data:`.core.head.HEADS`).

    Returns:
        ``(out, head)``: the output ``(N, outputs)`` in float32 and the resolved head.

    Raises:
        ModelError: the call fails or returns something that is not one row of class scores
            per image (tuples, other dicts, NaN, ...), with how to wrap the model.
        ConfigError: ``head`` is unknown or contradicts the output's values.
    """
    with torch.no_grad():
        try:
            out = model(x)
        except (ModelError, InputError, ConfigError):
            raise
        except Exception as e:
            raise _forward_error(model, x, e) from e
    out = model_output(out, x.shape[0], where="on the clean images").float()
    return out, resolve_head(head, out)


def _is_multi_hot(rows: list[list[Any]], classes: int, *, indices_possible: bool = True) -> bool:
    """Rows of ``classes`` entries, all 0 or 1. Where the entries could also be class indices
    (integers), only a matrix that cannot be index lists counts: with 3+ classes a 0/1 row
    repeats a class; with 1 or 2 classes some row must repeat one (``[0, 1]`` stays classes 0
    and 1)."""
    if not rows or not all(len(r) == classes for r in rows) or not all(v in (0, 1) for r in rows for v in r):
        return False
    if not indices_possible:
        return True
    return any(len(set(r)) < len(r) for r in rows)


def _multi_hot_rows(rows: list[list[Any]]) -> list[list[int]]:
    out = []
    for i, r in enumerate(rows):
        idx = [c for c, v in enumerate(r) if v == 1]
        if not idx:
            raise InputError(
                f"target: row {i} of the multi-hot matrix has no positive class; every image needs at least one "
                "class (or pass a list of class lists, e.g. [[2, 7], [5]])"
            )
        out.append(idx)
    return out


def resolve_target(target: Any, logits: torch.Tensor, top_k: int = 1) -> list[list[int]]:
    """Normalise ``target`` into one list of distinct class indices per image.

    Args:
        target: ``None`` (the ``top_k`` classes of the clean image), an int (every image), an
            ``(N,)`` integer tensor / sequence of ints, a sequence of ``N`` class sequences
            (several classes per image, their scores summed), or a multi-hot label matrix:
            an ``(N, classes)`` tensor or list of lists whose entries are all 0 or 1 (bool,
            integer or float, as a multi-label data set stores them), read as the classes
            marked 1. Integer 0/1 rows that are also valid class lists (only possible with
            one or two classes: ``[[0, 1]]``) are read as class lists; pass bool or float
            labels to mean multi-hot there.
        logits: clean ``(N, classes)`` model output.
        top_k: classes taken when ``target`` is None.

    Raises:
        InputError: naming ``target``: wrong type, a float tensor that is not multi-hot, a
            class out of range, a class listed twice for one image, a multi-hot row with no
            positive class, or a count of entries other than ``N``.
    """
    n, classes = logits.shape
    if target is None:
        k = min(int(top_k), classes)
        return logits.topk(k, dim=1).indices.tolist()
    if isinstance(target, bool):
        raise InputError(f"target: expected {TARGET_FORMS}, got {describe(target)}")
    if isinstance(target, int):
        rows = [[target]] * n
    elif isinstance(target, torch.Tensor):
        integer_index = not (target.is_floating_point() or target.dtype == torch.bool)
        if (
            target.dim() == 2
            and target.shape[1] == classes
            and _is_multi_hot(target.tolist(), classes, indices_possible=integer_index)
        ):
            rows = _multi_hot_rows(target.tolist())
        elif target.is_floating_point() or target.dtype == torch.bool:
            raise InputError(
                f"target: expected an integer tensor of class indices or an ({n}, {classes}) multi-hot 0/1 matrix, "
                f"got {describe(target)}"
            )
        elif target.dim() == 0:
            rows = [[int(target)]] * n
        elif target.dim() == 1:
            rows = [[int(v)] for v in target.tolist()]
        elif target.dim() == 2:
            rows = [list(map(int, r)) for r in target.tolist()]
        else:
            raise InputError(f"target: expected shape (N,), (N, T) or ({n}, {classes}) multi-hot, got {tuple(target.shape)}")
    elif isinstance(target, Sequence) and not isinstance(target, str):
        raw = [r.tolist() if isinstance(r, torch.Tensor) else r for r in target]
        if all(isinstance(r, Sequence) and not isinstance(r, str) for r in raw) and _is_multi_hot(
            [list(r) for r in raw], classes, indices_possible=all(
                isinstance(v, int) and not isinstance(v, bool) for r in raw for v in r
            )
        ):
            rows = _multi_hot_rows([list(r) for r in raw])
        else:
            rows = []
            for r in raw:
                if isinstance(r, int) and not isinstance(r, bool):
                    rows.append([int(r)])
                elif isinstance(r, Sequence) and not isinstance(r, str):
                    vals = list(r)
                    if not vals or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                        raise InputError(f"target: each class list must hold at least one int, got {r!r}")
                    rows.append([int(v) for v in vals])
                else:
                    raise InputError(f"target: entries must be ints or lists of ints, got {describe(r)}")
    else:
        raise InputError(f"target: expected {TARGET_FORMS}, got {describe(target)}")
    if len(rows) != n:
        raise InputError(f"target: expected {n} entries (one per image), got {len(rows)}")
    for i, r in enumerate(rows):
        for c in r:
            if not 0 <= c < classes:
                raise InputError(
                    f"target: class {c} is out of range for a model with {classes} classes (valid: 0..{classes - 1})"
                )
        if len(set(r)) != len(r):
            dup = next(c for c in r if r.count(c) > 1)
            raise InputError(
                f"target: class {dup} appears {r.count(dup)} times in the class list of image {i}; list each class "
                "once (a multi-hot label vector must have one entry per class of the model)"
            )
    return rows


def target_from_option(
    option: Any, scores: torch.Tensor, class_names: Sequence[str] | None, *, name: str = "--target"
) -> list[list[int]] | None:
    """The command line's target for one image → ``[[classes]]`` (``None`` = the method's default).

    Args:
        option: ``None``, ``"top1"``, ``"top5"``, a class index (int) or a class name
            (case-insensitive).
        scores: ``(1, outputs)`` clean model output of the image (ranks ``top1``/``top5``).
        class_names: the model's class names, if any.

    Raises:
        ConfigError: an index out of range or an unknown class name, naming ``name``.
    """
    n_classes = int(scores.shape[-1])
    if option is None:
        return None
    if option in ("top1", "top5"):
        k = min(1 if option == "top1" else 5, n_classes)
        return [scores[0].topk(k).indices.tolist()]
    if isinstance(option, int):
        if not 0 <= option < n_classes:
            raise ConfigError(f"{name}: class index {option} out of range for a model with {n_classes} classes")
        return [[option]]
    names = list(class_names or ())
    lowered = [n.lower() for n in names]
    if option.lower() in lowered:
        return [[lowered.index(option.lower())]]
    if not names:
        raise ConfigError(f"{name}: {option!r} is not an index, top1 or top5, and the model has no class names")
    hint = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise ConfigError(f"{name}: unknown class name {option!r}; classes: {hint}")


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
