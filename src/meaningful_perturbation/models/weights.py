"""Weight files: safetensors or weights-only ``torch.load``; pickled modules only on request.

A checkpoint is reduced to a *state dict* (parameter name -> tensor) and loaded strictly:
every key must match, with the right shape, or the error lists what does not fit.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> apply_state_dict(model, {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}, source="demo")
    >>> model.bias.tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from meaningful_perturbation.errors import InputError
from meaningful_perturbation.models.base import one_line

__all__ = ["apply_state_dict", "load_state_dict_file"]

# Keys under which training scripts commonly nest the model's state dict in a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "ema")
_SHOW = 3  # how many offending keys an error message names


def load_state_dict_file(
    path: str | os.PathLike[str], *, unsafe_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read a weights file into a state dict on the CPU.

    ``.safetensors`` files are read with safetensors. Anything else goes through
    ``torch.load(weights_only=True)``, which refuses pickled Python objects; files that need
    full unpickling (e.g. ``torch.save(model)``) are read only with ``unsafe_pickle=True``,
    because unpickling can run arbitrary code. Checkpoints that nest the state dict under
    ``"state_dict"``, ``"model"``, ... and pickled whole modules are reduced to their state
    dict.

    Args:
        path: the weights file.
        unsafe_pickle: allow full unpickling for files that need it. Only for trusted files.

    Returns:
        Mapping of parameter/buffer names to tensors.

    Raises:
        InputError: missing or unreadable file, a pickled file without ``unsafe_pickle``, or
            content that holds no state dict.
    """
    name = os.fspath(path)
    p = Path(name).expanduser()
    if not p.exists():
        raise InputError(f"{name}: no such weights file")
    if p.is_dir():
        raise InputError(f"{name}: is a folder, not a weights file")
    if p.stat().st_size == 0:
        raise InputError(f"{name}: weights file is empty (0 bytes)")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{name}: not a readable safetensors file ({one_line(exc)})") from exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_save(p):  # garbage, not a refused-but-valid pickle
            raise InputError(
                f"{name}: not a PyTorch weights file ({one_line(exc)}); expected a file written "
                "by torch.save(model.state_dict(), path) or a .safetensors file"
            ) from exc
        if not unsafe_pickle:
            raise InputError(
                f"{name}: not a plain weights file (it holds pickled Python objects, e.g. a "
                "whole model saved with torch.save(model)) and unpickling can run arbitrary "
                "code; save model.state_dict() or a .safetensors file instead, or, if you trust "
                "the file, opt in with unsafe_pickle=True (CLI: --unsafe-pickle)"
            ) from exc
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - arbitrary unpickling failures
            raise InputError(f"{name}: cannot unpickle ({one_line(exc2)})") from exc2
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise InputError(
            f"{name}: not a PyTorch weights file ({one_line(exc)}); expected a file written by "
            "torch.save(model.state_dict(), path) or a .safetensors file"
        ) from exc
    return _extract_state_dict(obj, name)




def _looks_like_torch_save(path: Path) -> bool:
    """``torch.save`` writes a zip archive (PyTorch >= 1.6) or a pickle (protocol 2+)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _extract_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if _is_tensor_dict(inner):
                return dict(inner)
        # A mapping with a few non-tensor entries (e.g. "epoch") around the tensors.
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise InputError(
            f"{name}: found a dict without tensors (keys {keys}); expected a state dict "
            "(parameter name -> tensor), possibly nested under 'state_dict' or 'model'"
        )
    raise InputError(
        f"{name}: found a {type(obj).__name__}, expected a state dict (parameter name -> tensor)"
    )


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def apply_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load ``state_dict`` into ``module`` strictly, with a readable error when it does not fit.

    A ``"module."`` prefix on every key (left by ``nn.DataParallel``) is removed when the
    model's own keys lack it. Tensors are copied with the model's dtype and device.

    Args:
        module: the model to fill.
        state_dict: parameter/buffer name -> tensor.
        source: where the weights came from (a file name), for messages.

    Raises:
        InputError: missing keys, unexpected keys or shape mismatches; the message names the
            first few of each.
    """
    own = module.state_dict()
    weights = dict(state_dict)
    prefix = "module."
    if (
        weights
        and all(k.startswith(prefix) for k in weights)
        and not any(k.startswith(prefix) for k in own)
    ):
        weights = {k[len(prefix) :]: v for k, v in weights.items()}
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        f"{k} (file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_examples(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_examples(mismatched)}")
    if problems:
        raise InputError(
            f"{source}: weights do not fit the model ({'; '.join(problems)}); check that the "
            "file was saved from the same architecture"
        )
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: weights do not fit the model ({one_line(exc)})") from exc
