"""Weight files: safetensors or weights-only ``torch.load``; pickled objects only with ``trust_code``.

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
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.io.images import broken_link_text, special_file_text
from meaningful_perturbation.models.base import TRUST_FLAG, one_line

__all__ = ["apply_state_dict", "load_state_dict_file"]

# Keys under which training scripts commonly nest the model's state dict in a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "ema")
_SHOW = 3  # how many offending keys an error message names
# torch.load(weights_only=True) could run code before torch 2.6 (CVE-2025-32434).
_WEIGHTS_ONLY_SAFE = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit()) >= (2, 6)


def load_state_dict_file(
    path: str | os.PathLike[str], *, trust_code: bool = False, unsafe_pickle: bool | None = None
) -> dict[str, torch.Tensor]:
    """Read a weights file into a state dict on the CPU.

    ``.safetensors`` files are read with safetensors (plain data, never code). Anything else
    goes through ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which
    builds only tensors and plain containers and refuses other Python objects (documented by
    PyTorch as the mode for untrusted files; on torch < 2.6 it had a known code-execution
    flaw, CVE-2025-32434, so there such files need ``trust_code``). Files that need full
    unpickling (e.g. ``torch.save(model)``) are read only with ``trust_code=True``, because
    unpickling can run arbitrary code. Checkpoints that nest the state dict under
    ``"state_dict"``, ``"model"``, ... and pickled whole modules are reduced to their state
    dict. See ``docs/security.md``.

    Args:
        path: the weights file.
        trust_code: allow full unpickling for files that need it. Only for trusted files.
        unsafe_pickle: deprecated name of ``trust_code``.

    Returns:
        Mapping of parameter/buffer names to tensors.

    Raises:
        InputError: missing, empty, truncated or corrupt file (any damage to a safetensors
            file: header, sizes, dtypes), or content that holds no state dict.
        ConfigError: a file that needs full unpickling without ``trust_code`` (the message
            names ``--trust-code``).
    """
    trust = bool(trust_code or unsafe_pickle)
    name = os.fspath(path)
    p = Path(name).expanduser()
    if not p.exists():
        raise InputError(f"{name}: {broken_link_text(p) or 'no such weights file'}")
    if p.is_dir():
        raise InputError(f"{name}: is a folder, not a weights file")
    if not p.is_file():
        raise InputError(f"{name}: {special_file_text(p)}; expected a weights file")
    if p.stat().st_size == 0:
        raise InputError(f"{name}: weights file is empty (0 bytes)")
    if p.suffix.lower() == ".safetensors":
        return _read_safetensors(p, name)
    if not _WEIGHTS_ONLY_SAFE and not trust:
        raise ConfigError(
            f"{name}: torch {torch.__version__} reads pickled weights with a weights-only "
            "unpickler that can run code (CVE-2025-32434, fixed in torch 2.6); use a "
            f".safetensors file, upgrade torch, or pass {TRUST_FLAG} if you trust the file"
        )
    try:
        with warnings.catch_warnings():
            # torch's own "Detected pickle protocol ..." note on a plain pickle: the error below says it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_save(p):  # garbage, not a refused-but-valid pickle
            raise InputError(
                f"{name}: not a PyTorch weights file ({one_line(exc)}); expected a file written "
                "by torch.save(model.state_dict(), path) or a .safetensors file"
            ) from exc
        if not trust and not _refused_a_global(exc):
            raise InputError(
                f"{name}: not a plain PyTorch weights file (the weights-only reader stopped: "
                f"{_unpickler_reason(exc)}); expected a file written by "
                "torch.save(model.state_dict(), path) or a .safetensors file; if it is a pickled "
                f"checkpoint you trust, pass {TRUST_FLAG}"
            ) from exc
        if not trust:
            raise ConfigError(
                f"{name}: not a plain weights file: it holds pickled Python objects (e.g. a "
                "whole model saved with torch.save(model)) and unpickling can run code; save "
                "model.state_dict() or a .safetensors file instead, or pass "
                f"{TRUST_FLAG} only if you trust the file"
            ) from exc
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - arbitrary unpickling failures
            raise InputError(f"{name}: cannot unpickle ({one_line(exc2)})") from exc2
    except MemoryError as exc:
        raise InputError(
            f"{name}: not a usable PyTorch weights file (it claims more memory than is "
            "available); expected a file written by torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt archive fails in many ways
        raise InputError(
            f"{name}: not a PyTorch weights file ({type(exc).__name__}: {one_line(exc)}); "
            "expected a file written by torch.save(model.state_dict(), path) or a "
            ".safetensors file"
        ) from exc
    return _extract_state_dict(obj, name)


def _read_safetensors(p: Path, name: str) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file; any damage is one :class:`InputError` naming the file.

    The header is checked before any tensor is allocated: its length must fit in the file
    and every tensor's byte range must lie inside the data section with the size its dtype
    and shape need (safetensors checks this too; checking here first keeps a forged header
    from ever reaching an allocation, and gives one message for every kind of damage).
    """
    try:
        _check_safetensors_header(p)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a forged header fails in many ways
        raise _bad_safetensors(name, f"{type(exc).__name__}: {one_line(exc)}") from exc
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(p), device="cpu"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - safetensors' Rust panics are BaseException
        raise _bad_safetensors(name, one_line(exc)) from exc


def _bad_safetensors(name: str, why: str) -> InputError:
    return InputError(
        f"{name}: not a readable safetensors file ({why}); expected a file written by "
        "safetensors.torch.save_file(model.state_dict(), path)"
    )


# safetensors format: 8-byte little-endian header length N, N bytes of JSON, then the data.
# The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (bytes into
# the data section), plus an optional "__metadata__" of strings. Sizes per the format spec
# (https://github.com/huggingface/safetensors, README "Format").
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_ST_MAX_HEADER = 100_000_000  # safetensors' own header limit (bytes)


def _check_safetensors_header(p: Path) -> None:
    import json

    size = p.stat().st_size
    name = str(p)
    with open(p, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise _bad_safetensors(name, f"{size} bytes, too short for the 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n > _ST_MAX_HEADER or 8 + n > size:
            raise _bad_safetensors(
                name, f"the header claims {n} bytes but the file has {size - 8} after the length"
            )
        text = fh.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad_safetensors(name, f"header is not JSON: {one_line(exc)}") from exc
    if not isinstance(header, dict):
        raise _bad_safetensors(name, f"header is a JSON {type(header).__name__}, expected an object")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _bad_safetensors(name, f"entry {key!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_ITEMSIZE:
            raise _bad_safetensors(name, f"tensor {key!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise _bad_safetensors(name, f"tensor {key!r} has an invalid shape {shape!r}")
        if not (
            isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data
        ):  # fmt: skip
            raise _bad_safetensors(
                name, f"tensor {key!r} has data offsets {offsets!r} outside the {data}-byte data section"
            )
        count = 1
        for d in shape:
            count *= d
        if count * _ST_ITEMSIZE[dtype] != offsets[1] - offsets[0]:
            raise _bad_safetensors(
                name, f"tensor {key!r}: shape {shape} of {dtype} needs {count * _ST_ITEMSIZE[dtype]} "
                f"bytes but its data offsets span {offsets[1] - offsets[0]}"
            )


def _refused_a_global(exc: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` stopped at a Python object (a pickle *global*:
    a class or function to import), as opposed to bytes it cannot parse."""
    return "global" in str(exc).lower()


def _unpickler_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Unsupported") or line.startswith("Trying to"):
            return one_line(Exception(line))
    return type(exc).__name__


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
        InputError: missing keys, unexpected keys, shape mismatches, or integer/bool/complex
            tensors for floating-point parameters; the message names the first few of each.
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
    # A float parameter filled from integers, booleans or complex numbers is a wrong file,
    # not a precision choice (copy_ would convert it silently).
    wrong_dtype = [
        f"{k} (file {str(weights[k].dtype).replace('torch.', '')} vs model "
        f"{str(own[k].dtype).replace('torch.', '')})"
        for k in own
        if k in weights
        and isinstance(weights[k], torch.Tensor)
        and own[k].is_floating_point()
        and not weights[k].is_floating_point()
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_examples(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_examples(mismatched)}")
    if wrong_dtype:
        problems.append(f"{len(wrong_dtype)} non-float tensor(s) for float parameters: {_examples(wrong_dtype)}")
    if problems:
        raise InputError(
            f"{source}: weights do not fit the model ({'; '.join(problems)}); check that the "
            "file was saved from the same architecture"
        )
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: weights do not fit the model ({one_line(exc)})") from exc
