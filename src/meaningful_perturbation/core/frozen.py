"""Run a model frozen and in eval mode, restoring the caller's state afterwards."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

__all__ = ["frozen"]


@contextlib.contextmanager
def frozen(model: Callable) -> Iterator[Callable]:
    """Put ``model`` in eval mode with every parameter's ``requires_grad`` off.

    On exit — also when the body raises — every submodule's ``training`` flag and every
    parameter's ``requires_grad`` are restored exactly as found. Freezing the parameters
    means a backward pass computes gradients with respect to the input only.
    Callables that are not :class:`torch.nn.Module` are used as they are.
    """
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
