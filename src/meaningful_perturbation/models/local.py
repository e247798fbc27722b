"""Models that come from this machine: the bundled demo, archives, and Python factories.

Sources: ``demo``, ``torchscript:FILE``, ``export:FILE`` and ``python:FILE.py:FACTORY``.
All but ``demo`` can run code from (or named by) the file, so they load only with
``trust_code=True`` (CLI ``--trust-code``); the refusal comes before the file's contents are
read (see ``docs/security.md``).
TorchScript and ``torch.export`` archives may carry their preprocessing in an extra file
named :data:`~meaningful_perturbation.models.base.PREPROCESSING_EXTRA_FILE` (JSON of
:class:`~meaningful_perturbation.io.Preprocessing` fields); without it, ImageNet defaults apply.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from typing import Any, Callable

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError, ModelError
from meaningful_perturbation.io.preprocessing import Preprocessing
from meaningful_perturbation.models.base import (
    PREPROCESSING_EXTRA_FILE,
    LoadedModel,
    LoadRequest,
    existing_file,
    finish,
    one_line,
    preprocessing_from_mapping,
    declared_channels,
    read_preprocessing_json_declared,
    require_trust,
)
from meaningful_perturbation.models.weights import apply_state_dict, load_state_dict_file

__all__ = ["ExportedClassifier", "load_demo", "load_export", "load_python", "load_torchscript"]


def _apply_weights_file(module: Any, request: LoadRequest) -> None:
    if request.weights is None:
        return
    if not isinstance(module, nn.Module):
        raise InputError(
            f"{request.weights}: cannot load weights into a {type(module).__name__} "
            f"(model spec {request.spec!r} did not give a torch.nn.Module)"
        )
    state = load_state_dict_file(request.weights, trust_code=request.trust_code)
    apply_state_dict(module, state, source=str(request.weights))


def load_demo(arg: str, request: LoadRequest) -> LoadedModel:
    """``demo[:FAMILY]``: a small CNN bundled with the package and its preprocessing;
    ``FAMILY`` (default ``shapes``) is a key of ``meaningful_perturbation.demo.DEMO_FAMILIES``."""
    try:
        demo = importlib.import_module("meaningful_perturbation.demo")
    except ImportError as exc:
        raise ConfigError(
            f"model spec 'demo': the bundled demo model is not available in this installation "
            f"({exc}); reinstall meaningful-perturbation or use another spec"
        ) from exc
    family = arg or "shapes"
    families = getattr(demo, "DEMO_FAMILIES", {"shapes": (None, getattr(demo, "DEMO_PREPROCESSING", None))})
    if family not in families:
        raise ConfigError(
            f"model spec {request.spec!r}: expected demo or demo:FAMILY with FAMILY one of "
            f"{', '.join(families)}, got {family!r}"
        )
    model = demo.load_demo_model(family=family) if arg else demo.load_demo_model()
    _apply_weights_file(model, request)  # every weights file through the one checked reader
    values = dict(families[family][1] or {})
    if "input_size" in values and "resize" not in values:
        size = values["input_size"]
        # The demo images are exactly the input size: resize to it, never crop anything off.
        values["resize"] = size if isinstance(size, int) else min(size)
    prep = preprocessing_from_mapping(values, source="demo.DEMO_PREPROCESSING", lenient=True)
    return LoadedModel(finish(model, request, what="demo"), prep, request.spec)


def load_torchscript(arg: str, request: LoadRequest) -> LoadedModel:
    """``torchscript:FILE``: an archive written by ``torch.jit.save``.

    Needs ``request.trust_code`` (checked before the file is opened).
    """
    path = existing_file(arg, what="TorchScript archive", spec=request.spec)
    require_trust(
        request, subject=f"model spec {request.spec!r}", what="a TorchScript archive",
        why="torch.jit.load runs the program stored in it",
        instead="to run only your own code, use python:FILE.py:FACTORY with --weights FILE.safetensors",
    )
    extra: dict[str, Any] = {PREPROCESSING_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=request.device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(
            f"{arg}: not a TorchScript archive ({one_line(exc)}); write one with "
            "torch.jit.save(torch.jit.script(model), path), or use python:FILE.py:FACTORY "
            "with --weights for a state dict"
        ) from exc
    prep, declared = read_preprocessing_json_declared(extra[PREPROCESSING_EXTRA_FILE], source=arg)
    _apply_weights_file(model, request)
    return LoadedModel(
        finish(model, request, what="torch.jit.load"), prep, request.spec,
        channels_from=declared, channels_declared=declared is not None,
    )


class ExportedClassifier(nn.Module):
    """Wrap the module of a ``torch.export`` program so it behaves like an ordinary model.

    Exported graphs are traced in one mode and refuse ``.train()``/``.eval()``; this wrapper
    records the flag without forwarding it, so code that saves and restores training modes
    (e.g. :func:`meaningful_perturbation.core.frozen.frozen`) works unchanged.

    Args:
        program_module: ``ExportedProgram.module()``.
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the exported graph on ``x`` ``(N, C, H, W)``."""
        return self.program(x)

    def train(self, mode: bool = True) -> "ExportedClassifier":
        """Record ``mode`` on the wrapper only (the exported graph has a fixed mode)."""
        self.training = bool(mode)
        return self


def load_export(arg: str, request: LoadRequest) -> LoadedModel:
    """``export:FILE``: a ``.pt2`` archive written by ``torch.export.save``.

    Needs ``request.trust_code`` (checked before the file is opened): ``torch.export.load``
    unpickles weights and constants marked as pickled, so a crafted archive runs code.
    """
    path = existing_file(arg, what="torch.export archive (.pt2)", spec=request.spec)
    require_trust(
        request, subject=f"model spec {request.spec!r}", what="a torch.export archive",
        why="torch.export.load unpickles parts of it and runs the program stored in it",
        instead="to run only your own code, use python:FILE.py:FACTORY with --weights FILE.safetensors",
    )
    extra: dict[str, Any] = {PREPROCESSING_EXTRA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
        module = program.module()
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise InputError(
            f"{arg}: not a torch.export archive ({one_line(exc)}); write one with "
            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')"
        ) from exc
    prep, declared = read_preprocessing_json_declared(extra[PREPROCESSING_EXTRA_FILE], source=arg)
    wrapped = ExportedClassifier(module)
    _apply_weights_file(module, request)
    return LoadedModel(
        finish(wrapped, request, what="torch.export.load"), prep, request.spec,
        channels_from=declared, channels_declared=declared is not None,
    )


def load_python(arg: str, request: LoadRequest) -> LoadedModel:
    """``python:FILE.py:FACTORY``: import FILE by path and call ``FACTORY()``.

    The factory returns an ``nn.Module``, or ``(module, preprocessing)`` where
    ``preprocessing`` is a dict of :class:`Preprocessing` fields or a :class:`Preprocessing`.
    The dict states the input channel count with ``"channels": 1`` (or 3) or an
    ``"input_size"`` given as ``(C, H, W)``; without it the count is inferred from the model
    (:mod:`meaningful_perturbation.models.channels`).
    The file's folder is on ``sys.path`` while it is imported, so it can import its siblings.
    Needs ``request.trust_code`` (checked before the file is read).
    """
    file_part, sep, factory_name = arg.rpartition(":")
    if not sep or not file_part or not factory_name:
        raise ConfigError(
            f"model spec {request.spec!r}: expected python:FILE.py:FACTORY, "
            "e.g. python:my_model.py:build"
        )
    path = existing_file(file_part, what="Python file", spec=request.spec)
    require_trust(
        request, subject=f"model spec {request.spec!r}", what="a Python factory",
        why=f"importing {file_part} and calling {factory_name}() runs its code",
    )
    module_name = "_mperturb_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{file_part}: cannot be imported as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)
    sys.modules[module_name] = module  # lets dataclasses/pickle inside the file find it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        sys.modules.pop(module_name, None)
        raise ModelError(
            f"{file_part}: importing the file failed ({type(exc).__name__}: {one_line(exc)})"
        ) from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        available = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name
        )  # fmt: skip
        raise ConfigError(
            f"model spec {request.spec!r}: {file_part} defines no callable {factory_name!r} "
            f"(callables defined there: {', '.join(available) or 'none'})"
        )
    try:
        result = factory()
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        raise ModelError(
            f"{file_part}: {factory_name}() failed ({type(exc).__name__}: {one_line(exc)})"
        ) from exc
    model, prep, declared = _split_factory_result(result, request, factory_name)
    _apply_weights_file(model, request)
    return LoadedModel(
        finish(model, request, what=f"{factory_name}()"), prep, request.spec,
        channels_from=declared, channels_declared=declared is not None,
    )


def _split_factory_result(
    result: Any, request: LoadRequest, factory_name: str
) -> tuple[nn.Module | Callable, Preprocessing, str | None]:
    if isinstance(result, tuple) and len(result) == 2 and not isinstance(result[0], (dict, Preprocessing)):
        model, info = result
        source = f"{request.spec}: {factory_name}() preprocessing"
        prep = preprocessing_from_mapping(info, source=source)
        return model, prep, declared_channels(info, source=f"{factory_name}() metadata")
    return result, Preprocessing(assumed=True), None  # the factory stated none


