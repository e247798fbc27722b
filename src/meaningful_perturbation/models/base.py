"""What a model loader returns, and the request every loader receives."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.io.preprocessing import Preprocessing

__all__ = [
    "PREPROCESSING_EXTRA_FILE",
    "LoadRequest",
    "LoadedModel",
    "declared_channels",
    "hf_offline_variable",
    "existing_file",
    "finish",
    "one_line",
    "preprocessing_from_mapping",
    "read_preprocessing_json",
    "read_preprocessing_json_declared",
    "require_trust",
    "weights_only_loads",
]

#: Name of the optional JSON file inside TorchScript / ``torch.export`` archives that holds
#: the model's :class:`~meaningful_perturbation.io.Preprocessing` fields, e.g.
#: ``torch.jit.save(m, path, _extra_files={PREPROCESSING_EXTRA_FILE: json.dumps(prep.to_dict())})``.
PREPROCESSING_EXTRA_FILE = "preprocessing.json"


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready for :func:`meaningful_perturbation.explain`, with its preprocessing.

    Attributes:
        model: maps a normalised ``(N, 3, H, W)`` float batch to ``(N, classes)`` logits; an
            ``nn.Module`` in eval mode on the requested device.
        preprocessing: the model's own preprocessing (resize, crop, mean/std, class names);
            combine it with user overrides through
            :func:`~meaningful_perturbation.io.resolve_preprocessing`.
        spec: the spec string the model was loaded from.
        channels_from: where ``preprocessing.channels`` came from, for messages (e.g.
            ``"config.json num_channels=1"``, ``"first Conv2d layer (in_channels=1)"``), or
            ``None`` when nothing said it (the default, 3).
        channels_declared: ``True`` when the model's own metadata states the channel count
            (not inferred from its layers); see :mod:`meaningful_perturbation.models.channels`.
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: Preprocessing
    spec: str
    channels_from: str | None = None
    channels_declared: bool = False

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Name of each output index (``preprocessing.class_names``), or ``None``."""
        return self.preprocessing.class_names


@dataclass(frozen=True)
class LoadRequest:
    """Everything a source loader needs besides its own argument.

    Attributes:
        spec: the full spec string, for messages.
        weights: state-dict file to load into the model, or ``None``.
        trust_code: the user consented to running code contained in or named by the model
            source (``--trust-code``): Python factories, TorchScript and ``torch.export``
            archives, pickled models and weights, Hugging Face ``trust_remote_code``.
        device: where the model must end up.
        offline: never use the network (CLI ``--offline``): zoo weights must already be in
            the library's own cache.
        progress: let the model libraries show their download progress bars.
    """

    spec: str
    weights: Path | None
    trust_code: bool
    device: torch.device
    offline: bool = False
    progress: bool = True

    @property
    def unsafe_pickle(self) -> bool:
        """Deprecated name of :attr:`trust_code`."""
        return self.trust_code


#: The CLI flag (and, in brackets, the Python argument) that lets a model source run code.
TRUST_FLAG = "--trust-code (Python API: load_model(..., trust_code=True))"


def require_trust(request: LoadRequest, *, subject: str, what: str, why: str, instead: str = "") -> None:
    """Refuse, before its contents are read, a source that can run code the user did not allow.

    Called by every loader whose loading step can execute code from (or named by) the source:
    importing a Python file, ``torch.jit.load``, ``torch.export.load``, full unpickling,
    Hugging Face ``trust_remote_code``. See ``docs/security.md`` for the trust model.

    Args:
        request: the load request; nothing happens when ``request.trust_code`` is set.
        subject: what the message is about (a file name or the model spec).
        what: the kind of source, e.g. ``"a torch.export archive"``.
        why: how it can run code, e.g. ``"torch.export.load unpickles parts of it"``.
        instead: an optional safe alternative, appended to the message.

    Raises:
        ConfigError: ``request.trust_code`` is false; the message names ``--trust-code``.
    """
    if request.trust_code:
        return
    tail = f"; {instead}" if instead else ""
    raise ConfigError(
        f"{subject}: {what} can run code when loaded ({why}); pass {TRUST_FLAG} only if you "
        f"trust it{tail}"
    )


_FORCE_SAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loads(trust_code: bool) -> Iterator[None]:
    """Within the block, make every ``torch.load`` weights-only unless ``trust_code``.

    Model-zoo libraries read their cached checkpoints with ``torch.load``, some with an
    explicit ``weights_only=False`` (``torch.hub.load_state_dict_from_url``); a replaced cache
    file could then run code. PyTorch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (read on every
    ``torch.load`` call, torch >= 2.4) overrides the caller, so a checkpoint holding pickled
    objects fails to load instead of running. The environment is restored afterwards.
    """
    if trust_code:
        yield
        return
    saved = {name: os.environ.get(name) for name in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ[_FORCE_SAFE] = "1"
    os.environ.pop(_FORCE_UNSAFE, None)  # both set is an error in torch.load
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(exc).__name__


#: Values Hugging Face libraries read as "on" for their offline variables
#: (``huggingface_hub.constants._is_true``).
_TRUE = ("1", "on", "yes", "true")


def hf_offline_variable(*names: str) -> str | None:
    """The first of ``names`` (default ``HF_HUB_OFFLINE``) the user set to an "on" value
    (``1``, ``on``, ``yes``, ``true``), as ``"NAME=value"``, or ``None``.

    Hugging Face libraries (transformers, and timm through ``huggingface_hub``) then refuse
    the network themselves; the loaders check the cache first so the message is ours.
    """
    for name in names or ("HF_HUB_OFFLINE",):
        value = os.environ.get(name, "")
        if value.strip().lower() in _TRUE:
            return f"{name}={value.strip()}"
    return None


def existing_file(text: str, *, what: str, spec: str) -> Path:
    """Return ``Path(text)`` if it is an existing regular file, else raise :class:`InputError`."""
    if not text:
        raise ConfigError(f"model spec {spec!r}: expected a {what} path after the prefix")
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"{text}: no such file (model spec {spec!r} expects a {what})")
    if path.is_dir():
        raise InputError(f"{text}: is a folder, not a {what} (model spec {spec!r})")
    return path


def preprocessing_from_mapping(
    values: Mapping[str, Any] | Preprocessing | None, *, source: str, lenient: bool = False
) -> Preprocessing:
    """Build a :class:`Preprocessing` from a model's own description of it.

    Args:
        values: ``None`` (ImageNet defaults), a :class:`Preprocessing`, or a mapping of its
            fields (JSON text decoded by the caller). Unset fields take ImageNet defaults
            (for ``channels=1``: :data:`~meaningful_perturbation.io.preprocessing.GREY_MEAN`
            / ``GREY_STD``). An ``input_size`` of three numbers is read as ``(C, H, W)``, as
            timm writes it: ``C`` becomes ``channels``.
        source: where the values came from, for messages.
        lenient: ignore unknown keys instead of raising (for bundled metadata that may carry
            extra information).

    Raises:
        ConfigError: unknown keys (unless ``lenient``) or invalid values.
    """
    if values is None:
        return Preprocessing()
    if isinstance(values, Preprocessing):
        return values
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{source}: expected preprocessing as a dict or Preprocessing, got {type(values).__name__}"
        )
    fields = set(Preprocessing.__dataclass_fields__)
    data = {k: v for k, v in values.items() if k in fields or not lenient}
    size = data.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 3:
        c = size[0]
        if "channels" in data and data["channels"] != c:
            raise ConfigError(
                f"{source}: input_size {tuple(size)!r} (C, H, W) says {c} channel(s) but "
                f"channels says {data['channels']!r}"
            )
        data["channels"], data["input_size"] = c, tuple(size[1:])
    if data.get("channels") not in (None, 1, 3):
        raise ConfigError(
            f"{source}: the model takes {data['channels']!r} input channels; mperturb feeds "
            "images as 1 (grey) or 3 (RGB) channels (use the Python API with your own tensors "
            "for other inputs)"
        )
    try:
        return Preprocessing.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def declared_channels(values: Any, *, source: str) -> str | None:
    """Where a model's metadata states its channel count, or ``None`` when it does not.

    A mapping states it with a ``channels`` key or an ``input_size`` of three numbers
    ``(C, H, W)``; a :class:`Preprocessing` with ``channels`` other than the default 3.
    """
    if isinstance(values, Preprocessing):
        return f"{source} (channels={values.channels})" if values.channels != 3 else None
    if isinstance(values, Mapping):
        if "channels" in values:
            return f"{source} (channels={values['channels']!r})"
        size = values.get("input_size")
        if isinstance(size, (list, tuple)) and len(size) == 3:
            return f"{source} (input_size={list(size)!r})"
    return None


def read_preprocessing_json(raw: str | bytes | None, *, source: str) -> Preprocessing:
    """Decode the :data:`PREPROCESSING_EXTRA_FILE` payload of an archive (empty = ImageNet
    defaults, marked ``assumed``)."""
    return read_preprocessing_json_declared(raw, source=source)[0]


def read_preprocessing_json_declared(
    raw: str | bytes | None, *, source: str
) -> tuple[Preprocessing, str | None]:
    """:func:`read_preprocessing_json`, plus :func:`declared_channels` of the payload."""
    if not raw:
        return Preprocessing(assumed=True), None  # the archive states none: ImageNet assumed
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{source}: {PREPROCESSING_EXTRA_FILE} is not valid JSON ({exc})") from exc
    where = f"{source}: {PREPROCESSING_EXTRA_FILE}"
    return preprocessing_from_mapping(values, source=where), declared_channels(values, source=where)


def finish(model: Any, request: LoadRequest, *, what: str) -> nn.Module | Callable:
    """Move a module to the requested device and put it in eval mode; check it is callable."""
    if isinstance(model, nn.Module):
        model = model.to(request.device)
        model.eval()
        return model
    if callable(model):
        return model
    raise ConfigError(
        f"model spec {request.spec!r}: {what} returned {type(model).__name__}, expected a "
        "torch.nn.Module (or a callable mapping (N, C, H, W) images to (N, classes) logits)"
    )
