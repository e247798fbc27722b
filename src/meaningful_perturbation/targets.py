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

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._validate import describe
from .core.head import LOGITS, Head, declared_head, model_output, resolve_head
from .errors import ConfigError, HeadWarning, InputError, ModelError

__all__ = ["call_model", "clean_scores", "resolve_target", "target_from_option", "top_classes", "TARGET_FORMS"]

TARGET_FORMS = (
    "None, an int, an (N,) integer tensor, a list of N class lists, "
    "or an (N, classes) multi-hot 0/1 matrix"
)


def call_model(model: Callable, x: torch.Tensor) -> Any:
    """``model(x)`` without gradients; a failure becomes a project error that names the input's
    shape (and its dtype where that is the likely cause, see :func:`_forward_error`)."""
    with torch.no_grad():
        try:
            return model(x)
        except (ModelError, InputError, ConfigError):
            raise
        except Exception as e:
            raise _forward_error(model, x, e) from e


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
    out = model_output(call_model(model, x), x.shape[0], where="on the clean images").float()
    return out, resolve_head(head, out, declared=declared_head(model))


def _is_multi_hot(rows: list[list[Any]], classes: int, *, indices_possible: bool = True) -> bool:
    """Rows of ``classes`` entries, all 0 or 1: a multi-hot label matrix, whatever the dtype.
    The one exception is a one-column model given integer rows ``[[0]]``: that is the class
    list of its only class."""
    if not rows or not all(len(r) == classes for r in rows) or not all(v in (0, 1) for r in rows for v in r):
        return False
    return not (indices_possible and classes == 1)


def _softmax(head: Head) -> bool:
    return not head.multilabel


def top_classes(scores: torch.Tensor, k: int, head: Head = LOGITS) -> list[list[int]]:
    """The ``k`` highest-scoring classes of each row of ``scores`` ``(N, classes)``.

    Under a softmax head (``logits`` / ``probabilities``) at most ``classes - 1`` are taken:
    the probabilities of every class sum to 1 whatever the input, so a set of all classes
    explains nothing (``paper-loc``'s top-5 of a 5-class model is its top-4).
    """
    classes = int(scores.shape[1])
    k = min(int(k), classes - 1 if _softmax(head) and classes > 1 else classes)
    return scores.topk(max(k, 1), dim=1).indices.tolist()


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


def resolve_target(target: Any, logits: torch.Tensor, top_k: int = 1, head: Head = LOGITS) -> list[list[int]]:
    """Normalise ``target`` into one list of distinct class indices per image.

    Args:
        target: ``None`` (the ``top_k`` classes of the clean image), an int (every image), an
            ``(N,)`` integer tensor / sequence of ints, a sequence of ``N`` class sequences
            (several classes per image, their scores summed), or a multi-hot label matrix:
            an ``(N, classes)`` tensor or list of lists whose entries are all 0 or 1 (bool,
            integer or float, as a multi-label data set stores them), read as the classes
            marked 1 (so with two classes ``[[0, 1]]`` is class 1; both classes are
            ``[[1, 1]]``). NumPy integers and arrays are accepted like tensors.
        logits: clean ``(N, classes)`` model output.
        top_k: classes taken when ``target`` is None (see :func:`top_classes`).
        head: the model's head. Under a softmax head a class list holding every class is
            refused (its probability is 1 whatever the input), and a multi-hot target of
            several classes warns when ``head`` was detected (a multi-label model needs
            ``head="sigmoid"``).

    Raises:
        InputError: naming ``target``: wrong type, a float tensor that is not multi-hot, a
            class out of range, a class listed twice for one image, a multi-hot row with no
            positive class, or a count of entries other than ``N``.
    """
    n, classes = logits.shape
    if target is None:
        return top_classes(logits, top_k, head)
    if isinstance(target, np.ndarray):
        if target.dtype == object:
            raise InputError("target: expected a numeric array, got a NumPy array of dtype object")
        target = torch.from_numpy(np.ascontiguousarray(target))
    elif isinstance(target, np.generic):
        target = target.item()
    multi_hot = False
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
            rows, multi_hot = _multi_hot_rows(target.tolist()), True
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
        raw = [r.tolist() if isinstance(r, (torch.Tensor, np.ndarray)) else r for r in target]
        raw = [r.item() if isinstance(r, np.generic) else r for r in raw]
        if all(isinstance(r, Sequence) and not isinstance(r, str) for r in raw) and _is_multi_hot(
            [list(r) for r in raw], classes, indices_possible=all(
                isinstance(v, int) and not isinstance(v, bool) for r in raw for v in r
            )
        ):
            rows, multi_hot = _multi_hot_rows([list(r) for r in raw]), True
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
                binary = (" (a one-column binary model scores one class, its positive class 0 with probability "
                          "sigmoid(z); to explain its negative decision, wrap it in an nn.Module that returns -z: "
                          "sigmoid(-z) = 1 - p)") if classes == 1 and c == 1 else ""
                raise InputError(
                    f"target: class {c} is out of range for a model with {classes} classes (valid: 0..{classes - 1})"
                    + binary
                )
        if len(set(r)) != len(r):
            dup = next(c for c in r if r.count(c) > 1)
            raise InputError(
                f"target: class {dup} appears {r.count(dup)} times in the class list of image {i}; list each class once"
            )
        if _softmax(head) and classes > 1 and len(r) == classes:
            raise InputError(
                f"target: image {i}'s class list holds all {classes} classes of the model; under a softmax head their "
                "probabilities sum to 1 whatever the input, so there is nothing to explain: list fewer classes, or "
                "pass head='sigmoid' if the classes are independent (multi-label)"
            )
    if multi_hot and head.detected and _softmax(head) and any(len(r) > 1 for r in rows):
        warnings.warn(
            f"head: a multi-hot target with several classes per image, but the model's output was read as "
            f"{head.kind} (softmax: the classes' probabilities compete and are summed); if the model is multi-label, "
            "pass head='sigmoid' (or 'sigmoid-probabilities' if it applies the sigmoid itself)",
            HeadWarning,
            stacklevel=3,
        )
    return rows


def target_from_option(
    option: Any,
    scores: torch.Tensor,
    class_names: Sequence[str] | None,
    *,
    name: str = "--target",
    head: Head = LOGITS,
) -> list[list[int]] | None:
    """The command line's target for one image → ``[[classes]]`` (``None`` = the method's default).

    Args:
        option: ``None``, ``"top1"``, ``"top5"``, a class index (int), a class name
            (case-insensitive), or a list of indices / names (several classes, their scores
            summed; ``--target 2,7`` on the command line).
        scores: ``(1, outputs)`` clean model output of the image (ranks ``top1``/``top5``).
        class_names: the model's class names, if any.
        head: the model's head (``top5`` takes at most ``classes - 1`` under a softmax).

    Raises:
        ConfigError: an index out of range, an unknown class name or a class listed twice,
            naming ``name``.
    """
    n_classes = int(scores.shape[-1])
    if option is None:
        return None
    if option in ("top1", "top5"):
        return [top_classes(scores[:1], 1 if option == "top1" else 5, head)[0]]
    if isinstance(option, (list, tuple)):
        row = [target_from_option(o, scores, class_names, name=name, head=head)[0][0] for o in option]
        if not row:
            raise ConfigError(f"{name}: expected at least one class, got an empty list")
        if len(set(row)) != len(row):
            raise ConfigError(f"{name}: a class is listed twice in {list(option)!r}; list each class once")
        return [row]
    if isinstance(option, int):
        if not 0 <= option < n_classes:
            raise ConfigError(f"{name}: class index {option} out of range for a model with {n_classes} classes")
        return [[option]]
    names = list(class_names or ())
    lowered = [n.lower() for n in names]
    if option.lower() in lowered:
        return [[lowered.index(option.lower())]]
    # WordNet-style names list synonyms ("tabby, tabby cat" in timm's and the ImageNet synset
    # descriptions), and the command line splits --target on commas: one synonym names the
    # class when exactly one class lists it.
    wanted = option.strip().lower()
    synonym_of = [i for i, n in enumerate(lowered) if wanted in (s.strip() for s in n.split(","))]
    if len(synonym_of) == 1:
        return [[synonym_of[0]]]
    if len(synonym_of) > 1:
        listed = ", ".join(f"{i} ({names[i]!r})" for i in synonym_of[:10])
        raise ConfigError(f"{name}: class name {option!r} is ambiguous, listed by classes {listed}; give the index")
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
