"""Run a model frozen and in eval mode, restoring the caller's state afterwards."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import torch

__all__ = ["frozen", "modules_of"]


def modules_of(model: Any, depth: int = 3) -> list[torch.nn.Module]:
    """The :class:`torch.nn.Module` s that calling ``model`` runs, as far as they can be seen.

    A module is itself. For any other callable (``lambda x: net(x)[0]``, a function, a bound
    method, a ``functools.partial``, an object with ``__call__``), the modules it refers to:
    its closure's cells, the global names its code reads, ``__self__``, ``__wrapped__``, a
    partial's function and arguments, an object's attributes; functions found there are
    followed ``depth`` levels deep. Without this a ``lambda`` around a network would run it in
    training mode (BatchNorm statistics updated, dropout active) with trainable parameters.
    """
    found: dict[int, torch.nn.Module] = {}
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.setdefault(id(obj), obj)
            return
        if level <= 0 or isinstance(obj, (type, torch.Tensor, str, bytes, int, float, bool)) or obj is None:
            return
        refs: list[Any] = []
        if isinstance(obj, functools.partial):
            refs += [obj.func, *obj.args, *obj.keywords.values()]
        for attr in ("__self__", "__wrapped__", "__func__"):
            inner = getattr(obj, attr, None)
            if inner is not None and not isinstance(inner, type(torch)):  # not a module object
                refs.append(inner)
        code = getattr(obj, "__code__", None)
        if code is not None:
            refs += [c.cell_contents for c in (getattr(obj, "__closure__", None) or ()) if _filled(c)]
            glb = getattr(obj, "__globals__", {})
            refs += [glb[n] for n in _names(code) if n in glb]
        elif callable(obj) and hasattr(obj, "__dict__") and not isinstance(obj, type(torch)):
            refs += list(vars(obj).values())  # an object with __call__: its attributes
        for r in refs:
            if isinstance(r, torch.nn.Module) or callable(r):
                visit(r, level - 1)

    visit(model, depth)
    return list(found.values())


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _names(code: Any) -> list[str]:
    """Global names read by ``code`` and the code objects nested in it (lambdas, comprehensions)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names += _names(const)
    return names


@contextlib.contextmanager
def frozen(model: Callable) -> Iterator[Callable]:
    """Put ``model`` in eval mode with every parameter's ``requires_grad`` off.

    On exit — also when the body raises — every submodule's ``training`` flag and every
    parameter's ``requires_grad`` are restored exactly as found. Freezing the parameters
    means a backward pass computes gradients with respect to the input only. A callable that
    is not a :class:`torch.nn.Module` (``lambda x: net(x)[0]``) has the modules it refers to
    frozen (see :func:`modules_of`); one that refers to none is used as it is.
    """
    roots = modules_of(model)
    if not roots:
        yield model
        return
    mods = list({id(m): m for r in roots for m in r.modules()}.values())
    params = list({id(p): p for r in roots for p in r.parameters()}.values())
    training = [(m, m.training) for m in mods]
    grads = [(p, p.requires_grad) for p in params]
    try:
        for r in roots:
            r.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
