"""Model specs: one table of sources feeds :func:`load_model`, :func:`list_model_specs`,
the CLI's ``mperturb models`` listing and the error messages."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from meaningful_perturbation.errors import ConfigError, MeaningfulPerturbationWarning
from meaningful_perturbation.models import hub, local
from meaningful_perturbation.io.preprocessing import Preprocessing, resolve_preprocessing
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
    optional_argument: bool = False  # PREFIX and PREFIX:ARG both valid (demo[:FAMILY])


_SOURCES: tuple[_Source, ...] = (
    _Source("demo", False, ModelSpecInfo(
        "demo[:FAMILY]",
        "the small CNN bundled with the package, 64x64 input; FAMILY = shapes (default, "
        "ShapeEvidence classes) or textures (TextureEvidence orientation classes)",
        "demo:textures",
    ), local.load_demo, optional_argument=True),
    _Source("torchvision", True, ModelSpecInfo(
        "torchvision:NAME[:WEIGHTS]",
        "torchvision classification model; WEIGHTS = enum member (default DEFAULT) or NONE "
        "(random); weights downloaded into the torch hub cache ($TORCH_HOME) unless --offline",
        "torchvision:vgg19",
    ), hub.load_torchvision),
    _Source("timm", True, ModelSpecInfo(
        "timm:NAME[:NONE]",
        "timm model with its pretrained data config; NONE = random weights; weights downloaded "
        "into the Hugging Face cache ($HF_HOME) unless --offline",
        "timm:resnet50.a1_in1k",
    ), hub.load_timm),
    _Source("hf", True, ModelSpecInfo(
        "hf:ID_OR_DIR[:NONE]",
        "Hugging Face transformers image classifier (hub id, downloaded into $HF_HOME unless "
        "--offline, or a save_pretrained folder); NONE = random weights; class names from id2label",
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
        ['demo[:FAMILY]', 'torchvision:NAME[:WEIGHTS]']
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
    offline: bool = False,
    progress: bool = True,
    given: tuple[str, ...] = (),
) -> LoadedModel:
    """Load a classifier and its preprocessing from a spec string.

    Specs (see :func:`list_model_specs`): ``demo[:FAMILY]``, ``torchvision:NAME[:WEIGHTS]``,
    ``timm:NAME``, ``hf:ID_OR_DIR``, ``torchscript:FILE``, ``export:FILE``,
    ``python:FILE.py:FACTORY``.

    ``torchvision:``, ``timm:`` and ``hf:`` download pretrained weights the way each library
    does on its own, into its own cache (torch hub cache under ``TORCH_HOME``; Hugging Face
    cache under ``HF_HOME`` / ``HF_HUB_CACHE``), with the library's progress bar. With
    ``offline=True`` (or, for the Hugging Face sources, ``HF_HUB_OFFLINE=1``) nothing is
    downloaded: the weights must be in that cache already, else an :class:`InputError` names
    the file, the cache folder and its variable. ``demo`` and local files never use the
    network. ``NAME:NONE`` builds any hub model with random weights.

    A model that does not state its preprocessing (a Hugging Face model without
    ``preprocessor_config.json``, an archive without ``preprocessing.json``, a ``python:``
    factory returning only the module) gets an assumed recipe: ``preprocessing.assumed`` is
    ``True`` and a :class:`~meaningful_perturbation.errors.MeaningfulPerturbationWarning`
    says which size, resize mode and mean/std were assumed.

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
        device: where to put the model (``"auto"``: CUDA, else MPS, else CPU).
        unsafe_pickle: deprecated alias of ``trust_code`` (``True`` turns it on).
        offline: never use the network (CLI ``--offline``).
        progress: show the libraries' download progress bars (CLI: off with ``-q``).
        given: preprocessing fields the caller sets itself (``"input_size"``, ``"resize"``,
            ``"mean"``, ``"std"``; the CLI's ``--input-size``...): the assumed-preprocessing
            warning names only what is still assumed, and is not raised when nothing is.

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
    if source.optional_argument and sep and not arg:
        raise ConfigError(f"model spec {spec!r}: expected {source.info.pattern}, e.g. {source.info.example}")
    if not source.takes_argument and not source.optional_argument and sep:
        raise ConfigError(f"model spec {spec!r}: {prefix!r} takes no argument, use {prefix!r}")
    from .._runtime import check_device

    dev = check_device(device, "device")  # unknown, meta, absent cuda/mps: a ConfigError naming it
    request = LoadRequest(
        spec=spec,
        weights=Path(weights).expanduser() if weights is not None else None,
        trust_code=bool(trust_code or unsafe_pickle),
        device=dev,
        offline=bool(offline),
        progress=bool(progress),
    )
    if request.weights is not None:
        # Fail on a bad --weights path before any (possibly slow) model construction.
        existing_file(os.fspath(weights), what="weights file", spec=spec)  # type: ignore[arg-type]
    loaded = source.load(arg, request)
    if loaded.preprocessing.assumed:
        note = _assumed_note(spec, prefix, loaded.preprocessing, tuple(given))
        if note is not None:
            warnings.warn(MeaningfulPerturbationWarning(note), stacklevel=2)
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


#: What each source lacked when its preprocessing had to be assumed.
_MISSING_PREPROCESSING = {
    "hf": "no preprocessor_config.json",
    "torchscript": "no preprocessing.json in the archive",
    "export": "no preprocessing.json in the archive",
    "python": "the factory returned no preprocessing",
}


def describe_preprocessing(prep: Preprocessing) -> str:
    """One phrase for a recipe: size, resize mode, mean/std, interpolation.

    Example:
        >>> describe_preprocessing(Preprocessing(input_size=32, resize=None, crop="none"))[:52]
        'whole image resized to 32x32 (aspect ratio not kept)'
    """
    h, w = prep.size
    if prep.crop == "none":
        geometry = f"whole image resized to {h}x{w} (aspect ratio not kept)"
    elif prep.resize is None:
        geometry = f"resized to cover {h}x{w} (aspect ratio kept), centre crop {h}x{w}"
    else:
        geometry = f"short side resized to {prep.resize}, centre crop {h}x{w}"
    stats = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
    return f"{geometry}, mean {stats(prep.mean)}, std {stats(prep.std)}, {prep.interpolation}"


#: The preprocessing fields an assumed recipe guesses, and the CLI option setting each.
_ASSUMED_FIELDS = (("input_size", "--input-size"), ("resize", "--resize"), ("mean", "--mean"), ("std", "--std"))


def _assumed_note(spec: str, prefix: str, prep: Preprocessing, given: tuple[str, ...] = ()) -> str | None:
    """The warning for an assumed recipe, naming only the fields not in ``given``; ``None``
    when every field is given."""
    lacked = _MISSING_PREPROCESSING.get(prefix, "it states none")
    missing = [(f, opt) for f, opt in _ASSUMED_FIELDS if f not in given]
    if not missing:
        return None
    if len(missing) == len(_ASSUMED_FIELDS):
        what = describe_preprocessing(prep)
    else:
        h, w = prep.size
        stats = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
        parts = {"input_size": f"input size {h}x{w}",
                 "resize": "no resize (whole image stretched)" if prep.crop == "none"
                 else "resize to cover the input size" if prep.resize is None
                 # with --input-size given, the resize follows it (ImageNet's 256/224 ratio)
                 else "short side resized to 256/224 of the input size, centre crop" if "input_size" in given
                 else f"short side resized to {prep.resize}",
                 "mean": f"mean {stats(prep.mean)}", "std": f"std {stats(prep.std)}"}
        what = ", ".join(parts[f] for f, _ in missing)
    opts = [opt for _, opt in missing]
    listed = opts[0] if len(opts) == 1 else ", ".join(opts[:-1]) + f" and {opts[-1]}"
    return (
        f"model spec {spec!r}: the model does not state its preprocessing ({lacked}); assumed "
        f"{what}; if it was trained otherwise, set {listed} (Python API: resolve_preprocessing)"
    )
