"""Model specs: one table of sources feeds :func:`load_model`, :func:`list_model_specs`,
the CLI's ``mperturb models`` listing and the error messages."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from meaningful_perturbation.errors import ConfigError
from meaningful_perturbation.models import hub, local
from meaningful_perturbation.io.preprocessing import resolve_preprocessing
from meaningful_perturbation.models.base import LoadedModel, LoadRequest, existing_file
from meaningful_perturbation.models.channels import infer_channels

__all__ = ["ModelSpecInfo", "list_model_specs", "load_model"]


class ModelSpecInfo(NamedTuple):
    """One row of :func:`list_model_specs`: ``(pattern, description, example)``."""

    pattern: str
    description: str
    example: str


@dataclass(frozen=True)
class _Source:
    prefix: str
    takes_argument: bool
    info: ModelSpecInfo
    load: Callable[[str, LoadRequest], LoadedModel]


_SOURCES: tuple[_Source, ...] = (
    _Source("demo", False, ModelSpecInfo(
        "demo",
        "the small CNN bundled with the package (ShapeEvidence classes, 64x64 input)",
        "demo",
    ), local.load_demo),
    _Source("torchvision", True, ModelSpecInfo(
        "torchvision:NAME[:WEIGHTS]",
        "torchvision classification model; WEIGHTS = enum member (default DEFAULT) or NONE; "
        "weights read from the torch hub cache only",
        "torchvision:vgg19",
    ), hub.load_torchvision),
    _Source("timm", True, ModelSpecInfo(
        "timm:NAME",
        "timm model with its pretrained data config; weights from the local cache only",
        "timm:resnet50.a1_in1k",
    ), hub.load_timm),
    _Source("hf", True, ModelSpecInfo(
        "hf:ID_OR_DIR",
        "Hugging Face transformers image classifier (hub id in the local cache, or a "
        "save_pretrained folder); class names from id2label",
        "hf:google/vit-base-patch16-224",
    ), hub.load_hf),
    _Source("torchscript", True, ModelSpecInfo(
        "torchscript:FILE",
        "TorchScript archive (torch.jit.save); optional preprocessing.json extra file; runs code: needs --trust-code",
        "torchscript:model.pt --trust-code",
    ), local.load_torchscript),
    _Source("export", True, ModelSpecInfo(
        "export:FILE",
        "torch.export archive (torch.export.save); optional preprocessing.json extra file; runs code: needs --trust-code",
        "export:model.pt2 --trust-code",
    ), local.load_export),
    _Source("python", True, ModelSpecInfo(
        "python:FILE.py:FACTORY",
        "import FILE.py and call FACTORY() -> nn.Module or (nn.Module, preprocessing dict); runs code: needs --trust-code",
        "python:my_model.py:build --trust-code",
    ), local.load_python),
)  # fmt: skip
_BY_PREFIX = {s.prefix: s for s in _SOURCES}


def list_model_specs() -> list[ModelSpecInfo]:
    """The model spec forms :func:`load_model` accepts, for ``mperturb models`` and docs.

    Returns:
        ``(pattern, description, example)`` rows, in a fixed order.

    Example:
        >>> [row.pattern for row in list_model_specs()][:2]
        ['demo', 'torchvision:NAME[:WEIGHTS]']
    """
    return [s.info for s in _SOURCES]


def _valid_prefixes() -> str:
    return ", ".join(s.prefix + (":" if s.takes_argument else "") for s in _SOURCES)


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    device: str | torch.device = "cpu",
    unsafe_pickle: bool | None = None,
) -> LoadedModel:
    """Load a classifier and its preprocessing from a spec string.

    Specs (see :func:`list_model_specs`): ``demo``, ``torchvision:NAME[:WEIGHTS]``,
    ``timm:NAME``, ``hf:ID_OR_DIR``, ``torchscript:FILE``, ``export:FILE``,
    ``python:FILE.py:FACTORY``.

    Nothing is downloaded unless the user sets ``HF_HUB_OFFLINE=0``: zoo weights must already
    be in the local cache (the error says which file, where, and suggests ``weights``).
    ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` are set in ``os.environ`` (unless
    already set) before a Hugging Face library is imported.

    Args:
        spec: the model spec.
        weights: a state-dict file loaded into the model after it is built (``.safetensors``,
            or anything ``torch.load(weights_only=True)`` reads). For torchvision and timm it
            replaces the pretrained download.
        trust_code: allow sources that can run code contained in or named by them
            (CLI ``--trust-code``): ``python:`` factories, ``torchscript:`` and ``export:``
            archives, weights files that need full unpickling (e.g. ``torch.save(model)``),
            Hugging Face models with custom code (``trust_remote_code``). Without it those
            are refused before their contents are read. Trusted files only; see
            ``docs/security.md``. Safetensors weights, weights-only ``torch.load`` state
            dicts, ``demo``, torchvision/timm by name and plain Hugging Face models need no
            flag.
        device: where to put the model.
        unsafe_pickle: deprecated alias of ``trust_code`` (``True`` turns it on).

    Returns:
        A :class:`LoadedModel`: ``model`` in eval mode on ``device``, mapping ``(N, C, H, W)``
        to ``(N, classes)`` logits; ``preprocessing`` (the model's own, ImageNet defaults
        otherwise; ``channels`` from the model's metadata, else its first ``Conv2d``, else 3
        — see :mod:`meaningful_perturbation.models.channels`); ``spec``; ``class_names``.

    Raises:
        ConfigError: unknown prefix, malformed spec, unknown model name, or a missing library
            (with its ``pip install`` line).
        ConfigError: also a source that can run code without ``trust_code`` (the message
            names ``--trust-code``).
        InputError: a missing, unreadable or corrupt file, weights not in the cache, or
            weights that do not fit the model.
        ModelError: user code (``python:``) or the model zoo failed while building the model.

    Example:
        >>> loaded = load_model("torchscript:model.pt", trust_code=True)  # doctest: +SKIP
        >>> logits = loaded.model(x)  # doctest: +SKIP
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"load_model: expected a model spec string like 'demo' or 'torchvision:vgg19', got {spec!r}"
        )
    spec = spec.strip()
    prefix, sep, arg = spec.partition(":")
    source = _BY_PREFIX.get(prefix)
    if source is None:
        hint = ""
        if Path(spec).expanduser().is_file():
            hint = f"; for a file try torchscript:{spec}, export:{spec} or python:{spec}:FACTORY"
        raise ConfigError(
            f"unknown model spec {spec!r}: valid prefixes are {_valid_prefixes()}{hint} "
            "(see `mperturb models`)"
        )
    if source.takes_argument and not arg:
        raise ConfigError(
            f"model spec {spec!r}: expected {source.info.pattern}, e.g. {source.info.example}"
        )
    if not source.takes_argument and sep:
        raise ConfigError(f"model spec {spec!r}: {prefix!r} takes no argument, use {prefix!r}")
    from .._runtime import check_device

    dev = check_device(device, "device")  # unknown, meta, absent cuda/mps: a ConfigError naming it
    request = LoadRequest(
        spec=spec,
        weights=Path(weights).expanduser() if weights is not None else None,
        trust_code=bool(trust_code or unsafe_pickle),
        device=dev,
    )
    if request.weights is not None:
        # Fail on a bad --weights path before any (possibly slow) model construction.
        existing_file(os.fspath(weights), what="weights file", spec=spec)  # type: ignore[arg-type]
    loaded = source.load(arg, request)
    if loaded.channels_declared:
        return loaded
    guess = infer_channels(loaded.model)  # metadata is silent: the layers' suggestion
    if guess is None:
        return loaded
    channels, where = guess
    prep = loaded.preprocessing
    if channels != prep.channels:
        prep = resolve_preprocessing(prep, channels=channels)
    return dataclasses.replace(loaded, preprocessing=prep, channels_from=where)
