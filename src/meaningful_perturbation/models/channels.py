"""How many channels a model's input has (1 = grey, 3 = RGB), and a check that they fit.

Where the count comes from, first that applies:

1. ``--channels`` / ``resolve_preprocessing(channels=...)`` given by the user;
2. the model's own metadata (``channels_declared``): a transformers config's
   ``num_channels``; timm's data config ``input_size`` ``(C, H, W)``; torchvision
   classifiers (always RGB); a ``python:`` factory's metadata dict (``"channels"``, or an
   ``"input_size"`` of three numbers ``(C, H, W)``); a ``preprocessing.json`` inside a
   TorchScript / ``torch.export`` archive (same keys);
3. the model's layers (:func:`infer_channels`): the ``in_channels`` of the first
   ``Conv2d`` in registration order (``model.modules()``), used only when it is 1 or 3;
4. the default, 3.

Names and registration order need not follow the forward pass, so 3 is a guess;
:func:`check_input_channels` settles it with one forward pass of a zero batch (the mean
image) before any output is written. When that pass fails for the count in use but succeeds
for the other one (1 <-> 3), or the error names the expected count (PyTorch's convolution
message, transformers' ``num_channels`` message), the count was wrong: where it came from
the layers or the default it is replaced silently; where the user or the model's metadata
stated it, a :class:`~meaningful_perturbation.errors.ConfigError` names the expected and
the received count (one ``mperturb: error:`` line). Any other failure of that pass is left to
the run itself, which reports it as before.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError
from meaningful_perturbation.io.preprocessing import CHANNEL_COUNTS, Preprocessing, resolve_preprocessing
from meaningful_perturbation.models.base import LoadedModel

__all__ = [
    "CLI_OPTION_NAMES",
    "check_input_channels",
    "input_dtype",
    "infer_channels",
    "probe_channels",
    "resolve_model_preprocessing",
]

#: How ``mperturb explain`` / ``mperturb run`` name the preprocessing overrides in messages.
CLI_OPTION_NAMES: dict[str, str] = {
    "input_size": "--input-size",
    "resize": "--resize",
    "mean": "--mean",
    "std": "--std",
    "channels": "--channels",
}

# "weight of size [8, 1, 3, 3], expected input[1, 3, 32, 32] to have 1 channels, but got 3"
_TORCH_CONV = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")
# transformers: "... channel dimension of the pixel values match with the one set in the
# configuration. Expected 1 but got 3."
_HF_CHANNELS = re.compile(r"channel dimension.*?Expected (\d+) but got (\d+)", re.DOTALL)


def infer_channels(model: Any) -> tuple[int, str] | None:
    """The input channel count an ``nn.Module``'s layers suggest, or ``None``.

    Rule: the first module in ``model.modules()`` order that is a ``torch.nn.Conv2d`` (or
    subclass; in a TorchScript archive, a submodule whose ``original_name`` is ``Conv2d``)
    and has an initialised weight; its ``in_channels`` if that is 1 or 3, else ``None``.
    Linear patch embeddings and other first layers are not inspected (a flattened patch does
    not say how many channels it holds); :func:`check_input_channels` settles those.

    Returns:
        ``(channels, description)`` or ``None``.

    Example:
        >>> infer_channels(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))
        (1, 'first Conv2d layer (in_channels=1)')
    """
    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        is_conv = isinstance(module, nn.Conv2d) or getattr(module, "original_name", None) == "Conv2d"
        if not is_conv:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or isinstance(weight, nn.parameter.UninitializedParameter):
            continue
        if weight.dim() != 4:
            continue
        in_channels = getattr(module, "in_channels", None)
        if not isinstance(in_channels, int):
            groups = getattr(module, "groups", 1)
            in_channels = int(weight.shape[1]) * (groups if isinstance(groups, int) else 1)
        if in_channels in CHANNEL_COUNTS:
            return in_channels, f"first Conv2d layer (in_channels={in_channels})"
        return None
    return None


def input_dtype(model: Any) -> torch.dtype:
    """The dtype to feed ``model``: the one floating dtype of all its parameters and buffers
    when that is float16, bfloat16 or float64 (a ``model.half()`` loaded by the CLI), else
    float32 (mixed-precision modules, parameter-free models, other callables). The CLI and
    the runner cast their images to it; :func:`~meaningful_perturbation.explain` follows the
    dtype it is given."""
    if isinstance(model, nn.Module):
        dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
        if len(dtypes) == 1:
            (only,) = dtypes
            if only in (torch.float16, torch.bfloat16, torch.float64):
                return only
    return torch.float32


def _dtype_and_device(model: Any, device: torch.device | str | None) -> tuple[torch.dtype, torch.device]:
    dtype, dev = torch.float32, torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                dtype = p.dtype
                if device is None:
                    dev = p.device
                break
    return dtype, dev


def _forward_error(model: Callable, channels: int, size: tuple[int, int], dtype: torch.dtype,
                   device: torch.device) -> BaseException | None:
    x = torch.zeros((1, channels, *size), dtype=dtype, device=device)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - user models raise anything
        return exc
    return None


def probe_channels(
    model: Callable, prep: Preprocessing, *, device: torch.device | str | None = None
) -> int | None:
    """Run ``model`` once on a zero ``(1, C, H, W)`` batch; the channel count it wants.

    ``C = prep.channels``, ``(H, W) = prep.size``, in the dtype of the model's first
    floating parameter (float32 for other callables), under ``torch.no_grad()``.

    Returns:
        ``None`` when the pass succeeds, or fails for a reason this cannot tie to the channel
        count; otherwise the count the model expects (read from the error message, or the
        other of 1 and 3 when the model runs with that one). The count may be one mperturb
        cannot feed (e.g. 4).
    """
    dtype, dev = _dtype_and_device(model, device)
    fed = prep.channels
    error = _forward_error(model, fed, prep.size, dtype, dev)
    if error is None:
        return None
    text = str(error)
    for pattern in (_TORCH_CONV, _HF_CHANNELS):
        match = pattern.search(text)
        if match and int(match.group(2)) == fed and int(match.group(1)) != fed:
            return int(match.group(1))
    for other in CHANNEL_COUNTS:
        if other != fed and _forward_error(model, other, prep.size, dtype, dev) is None:
            return other
    return None


def _plural(n: int) -> str:
    return f"{n} input channel" if n == 1 else f"{n} input channels"


def check_input_channels(
    loaded: LoadedModel,
    prep: Preprocessing,
    *,
    requested: int | None = None,
    device: torch.device | str | None = None,
    option: str = "channels",
) -> int | None:
    """Check that ``loaded.model`` accepts ``prep.channels`` input channels.

    Args:
        loaded: the model and where its channel count came from.
        prep: the resolved preprocessing that will be fed.
        requested: the channel count the user asked for (``--channels``), or ``None``.
        device: where to run the probe (default: the model's parameters' device).
        option: how to name the user's setting in messages (``"--channels"`` in the CLI).

    Returns:
        ``None`` when the count fits; the count to use instead when the one in use was only
        inferred or defaulted (neither the user nor the model's metadata stated it).

    Raises:
        ConfigError: the model expects another count than the one the user or its metadata
            stated, or one mperturb cannot feed; the message names both counts.
    """
    expected = probe_channels(loaded.model, prep, device=device)
    fed = prep.channels
    if expected is None or expected == fed:
        return None
    if requested is not None:
        received_from = f"{option} {requested}"
    else:
        received_from = loaded.channels_from or "the default"
    if expected not in CHANNEL_COUNTS:
        raise ConfigError(
            f"the model takes {_plural(expected)} but mperturb feeds images as 1 (grey) or 3 "
            f"(RGB) channels (received {fed}: {received_from}); use the Python API with your "
            "own tensors for other inputs"
        )
    if requested is None and not loaded.channels_declared:
        return expected
    stated = loaded.channels_declared and loaded.preprocessing.channels == expected
    expected_from = f" ({loaded.channels_from})" if stated and loaded.channels_from else ""
    fix = f"pass {option} {expected}" + (f" or drop {option}" if requested is not None else "")
    raise ConfigError(
        f"the model takes {_plural(expected)}{expected_from} but would receive {fed} "
        f"({received_from}); {fix}"
    )


def resolve_model_preprocessing(
    loaded: LoadedModel,
    overrides: Mapping[str, Any],
    *,
    device: torch.device | str | None = None,
    names: Mapping[str, str] | None = None,
) -> Preprocessing:
    """The preprocessing to feed ``loaded``: its own with ``overrides``, channels checked.

    :func:`~meaningful_perturbation.io.resolve_preprocessing` of ``loaded.preprocessing`` and
    ``overrides``, then :func:`check_input_channels` with one forward pass; a count that was
    only inferred is corrected, a stated one that does not fit raises.

    Args:
        loaded: from :func:`~meaningful_perturbation.models.load_model`.
        overrides: :class:`~meaningful_perturbation.io.Preprocessing` fields given by the
            user (``None`` values are ignored), e.g. ``{"channels": 1, "mean": (0.5,)}``.
        device: where to run the probe.
        names: how to call each override in messages (:data:`CLI_OPTION_NAMES` for the CLI).

    Raises:
        ConfigError: an invalid override (e.g. a ``mean`` count that is neither 1 nor the
            channel count) or a channel count the model does not accept.
    """
    names = dict(names or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    prep = resolve_preprocessing(loaded.preprocessing, names=names, **given)
    requested = given.get("channels")
    option = names.get("channels", "channels")
    better = check_input_channels(loaded, prep, requested=requested, device=device, option=option)
    if better is not None:
        prep = resolve_preprocessing(loaded.preprocessing, names=names, **{**given, "channels": better})
    return prep
