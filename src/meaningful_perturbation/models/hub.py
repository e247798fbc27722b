"""Models from model zoos: ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME`` and ``hf:ID_OR_DIR``.

Offline by default. Hugging Face libraries get ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` (unless the user set them) before they are imported; for
torchvision and timm the local cache is checked *before* the model is built, so a missing
file fails at once with its expected location and the ``--weights FILE`` alternative,
instead of hanging on network retries. ``HF_HUB_OFFLINE=0`` allows downloads again.

The zoo's own preprocessing is translated to :class:`~meaningful_perturbation.io.Preprocessing`:
torchvision weights' ``transforms()`` and ``meta["categories"]``; timm's pretrained data config
(``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``) and ImageNet
class descriptions; Hugging Face image-processor config (``size``, ``crop_size``, ``crop_pct``,
``image_mean``/``image_std``, ``resample``) and ``config.id2label``.

Input channels: torchvision classifiers take RGB (3); timm's data config states them as the
first number of ``input_size`` ``(C, H, W)``; a transformers config as ``num_channels``.
Statistics given for another channel count are carried over with
:func:`~meaningful_perturbation.io.stats_for_channels` (e.g. ``image_mean`` ``[0.5, 0.5, 0.5]``
for a ``num_channels=1`` model becomes ``(0.5,)``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError, ModelError
from meaningful_perturbation.io.preprocessing import (
    CHANNEL_COUNTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    stats_for_channels,
)
from meaningful_perturbation.models._imports import require, set_offline_defaults
from meaningful_perturbation.models.base import (
    LoadedModel,
    LoadRequest,
    downloads_allowed,
    finish,
    one_line,
    require_trust,
    weights_only_loads,
)
from meaningful_perturbation.models.weights import apply_state_dict, load_state_dict_file

__all__ = ["HuggingFaceClassifier", "load_hf", "load_timm", "load_torchvision"]

_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values used by HF configs


def _interpolation(value: Any) -> str:
    text = str(getattr(value, "value", value)).lower()
    return "bicubic" if "bicubic" in text else "bilinear"


def _close(name: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def _apply_weights(module: nn.Module, request: LoadRequest) -> None:
    if request.weights is not None:
        state = load_state_dict_file(request.weights, trust_code=request.trust_code)
        apply_state_dict(module, state, source=str(request.weights))


def _torch_hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _missing_weights_error(spec: str, what: str, where: str, how: str) -> InputError:
    return InputError(
        f"model spec {spec!r}: pretrained weights {what} are not in the local cache ({where}) "
        f"and downloads are off; {how}, or pass a state-dict file with --weights FILE "
        "(set HF_HUB_OFFLINE=0 to allow downloads)"
    )


# ----------------------------------------------------------------------------------------------
# torchvision
# ----------------------------------------------------------------------------------------------


def load_torchvision(arg: str, request: LoadRequest) -> LoadedModel:
    """``torchvision:NAME[:WEIGHTS]``: a torchvision classification model.

    ``WEIGHTS`` is a weights-enum member name (``DEFAULT`` when omitted, e.g.
    ``IMAGENET1K_V1``) or ``NONE`` for random initialisation. With ``--weights FILE`` the
    architecture is built without pretrained weights and filled from FILE; the
    preprocessing and class names still come from the named (or default) weights.
    """
    name, _, weights_name = arg.partition(":")
    tvm = require("torchvision.models", pip_name="torchvision", needed_for=f"model spec {request.spec!r}")
    try:
        available = list(tvm.list_models(module=tvm))
    except TypeError:  # older torchvision without the module filter
        available = list(tvm.list_models())
    if name not in available:
        raise ConfigError(
            f"model spec {request.spec!r}: torchvision has no classification model {name!r}"
            f"{_close(name, available)}"
        )
    enum_cls = tvm.get_model_weights(name)
    members = [m.name for m in enum_cls]
    wanted = weights_name or "DEFAULT"
    random_init = wanted.upper() == "NONE"
    meta_weights = None
    if not random_init:
        try:
            meta_weights = enum_cls[wanted]
        except KeyError:
            raise ConfigError(
                f"model spec {request.spec!r}: {enum_cls.__name__} has no member {wanted!r}; "
                f"choose one of DEFAULT, NONE, {', '.join(members)}"
            ) from None
    elif members:
        meta_weights = enum_cls["DEFAULT"] if "DEFAULT" in enum_cls.__members__ else enum_cls[members[0]]

    pretrained = None if random_init or request.weights is not None else meta_weights
    if pretrained is not None and not downloads_allowed():
        cached = _torch_hub_checkpoint(pretrained.url)
        if not cached.is_file():
            raise _missing_weights_error(
                request.spec, cached.name, str(cached.parent), f"download {pretrained.url} into that folder"
            )
    try:
        with weights_only_loads(request.trust_code):  # torch.hub reads with weights_only=False
            model = tvm.get_model(name, weights=pretrained)
    except (RuntimeError, OSError) as exc:
        raise ModelError(f"model spec {request.spec!r}: building the model failed ({one_line(exc)})") from exc
    _apply_weights(model, request)
    prep = _torchvision_preprocessing(meta_weights)
    return LoadedModel(
        finish(model, request, what="torchvision"), prep, request.spec,
        channels_from="torchvision classification models take RGB", channels_declared=True,
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


def _torchvision_preprocessing(weights: Any) -> Preprocessing:
    if weights is None:
        return Preprocessing()
    categories = weights.meta.get("categories") if hasattr(weights, "meta") else None
    try:
        t = weights.transforms()
        crop = _first(t.crop_size)
        resize = _first(t.resize_size)
        return Preprocessing(
            input_size=tuple(crop) if isinstance(crop, (list, tuple)) else int(crop),
            resize=int(min(resize)) if isinstance(resize, (list, tuple)) else int(resize),
            crop="center",
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=_interpolation(t.interpolation),  # type: ignore[arg-type]
            class_names=tuple(categories) if categories else None,
        )
    except (AttributeError, TypeError, ValueError, ConfigError):
        # Weights whose transforms are not the ImageNet classification recipe.
        return Preprocessing(class_names=tuple(categories) if categories else None)


# ----------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------


def load_timm(arg: str, request: LoadRequest) -> LoadedModel:
    """``timm:NAME``: a timm model (``NAME`` may carry a pretrained tag, ``resnet50.a1_in1k``).

    With ``--weights FILE`` the model is created without pretrained weights and filled from
    FILE. Preprocessing comes from the model's pretrained data config: short side resized
    to ``floor(input / crop_pct)`` and centre-cropped (``crop_mode="squash"`` stretches the
    whole image instead).
    """
    set_offline_defaults()
    timm = require("timm", needed_for=f"model spec {request.spec!r}")
    name = arg
    if not timm.is_model(name):
        raise ConfigError(
            f"model spec {request.spec!r}: timm has no model {name!r}{_close(name, list(timm.list_models()))}"
        )
    pretrained = request.weights is None
    if pretrained and not downloads_allowed():
        _check_timm_cache(timm, name, request.spec)
    try:
        with weights_only_loads(request.trust_code):
            model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - hub/network errors have many types
        raise ModelError(f"model spec {request.spec!r}: timm could not create it ({one_line(exc)})") from exc
    _apply_weights(model, request)
    prep = _timm_preprocessing(timm, model, request.spec)
    return LoadedModel(
        finish(model, request, what="timm"), prep, request.spec,
        channels_from=f"timm data config input_size (C, H, W) with C={prep.channels}",
        channels_declared=True,
    )


def _check_timm_cache(timm: Any, name: str, spec: str) -> None:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an old timm: let create_model decide
        return
    if cfg is None:
        raise InputError(
            f"model spec {spec!r}: timm has no pretrained weights for {name!r}; pass --weights FILE"
        )
    get = cfg.get if isinstance(cfg, Mapping) else (lambda key, default=None: getattr(cfg, key, default))
    if get("file"):
        if not Path(get("file")).is_file():
            raise _missing_weights_error(spec, str(get("file")), str(get("file")), "create that file")
        return
    url = get("url")
    if url and _torch_hub_checkpoint(url).is_file():
        return
    hub_id = get("hf_hub_id")
    if hub_id:
        hub = require("huggingface_hub", needed_for=f"model spec {spec!r}")
        repo, _, revision = hub_id.partition("@")
        names = [get("hf_hub_filename")] if get("hf_hub_filename") else []
        names += [re.sub(r"(pytorch_)?model\.bin$", "model.safetensors", n) for n in names]
        names += ["model.safetensors", "pytorch_model.bin"]
        for filename in dict.fromkeys(names):
            found = hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return
        cache = getattr(getattr(hub, "constants", None), "HF_HUB_CACHE", "~/.cache/huggingface/hub")
        raise _missing_weights_error(
            spec, f"of the Hugging Face repo {repo}", str(cache),
            f"run `huggingface-cli download {repo}` where there is internet and copy the cache",
        )  # fmt: skip
    if url:
        cached = _torch_hub_checkpoint(url)
        how = f"download {url} into that folder"
        raise _missing_weights_error(spec, cached.name, str(cached.parent), how)


def _unsupported_channels(spec: str, count: Any, where: str) -> ConfigError:
    return ConfigError(
        f"model spec {spec!r}: the model takes {count!r} input channels ({where}); mperturb "
        "feeds images as 1 (grey) or 3 (RGB) channels (use the Python API with your own "
        "tensors for other inputs)"
    )


def _timm_preprocessing(timm: Any, model: nn.Module, spec: str = "timm") -> Preprocessing:
    data = timm.data
    if hasattr(data, "resolve_model_data_config"):
        cfg = data.resolve_model_data_config(model)
    else:
        cfg = data.resolve_data_config({}, model=model)
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if channels not in CHANNEL_COUNTS:
        raise _unsupported_channels(spec, channels, "timm data config input_size")
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    squash = cfg.get("crop_mode") == "squash"
    return Preprocessing(
        input_size=(int(height), int(width)),
        resize=None if squash else int(math.floor(min(height, width) / crop_pct)),
        crop="none" if squash else "center",
        mean=stats_for_channels(cfg.get("mean", IMAGENET_MEAN), int(channels)),
        std=stats_for_channels(cfg.get("std", IMAGENET_STD), int(channels)),
        interpolation=_interpolation(cfg.get("interpolation", "bilinear")),  # type: ignore[arg-type]
        class_names=_timm_class_names(data, model),
        channels=int(channels),
    )


def _timm_class_names(data: Any, model: nn.Module) -> tuple[str, ...] | None:
    try:
        subset = data.infer_imagenet_subset(model)
        if not subset:
            return None
        return tuple(data.ImageNetInfo(subset).label_descriptions())
    except Exception:  # noqa: BLE001 - class names are optional; older timm lacks ImageNetInfo
        return None


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers
# ----------------------------------------------------------------------------------------------


class HuggingFaceClassifier(nn.Module):
    """Make a transformers image classifier a plain ``x -> logits`` module.

    Args:
        model: an ``AutoModelForImageClassification`` model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` normalised pixels -> ``(N, num_labels)`` logits
        (``C = config.num_channels``)."""
        return self.model(pixel_values=x).logits


def load_hf(arg: str, request: LoadRequest) -> LoadedModel:
    """``hf:ID_OR_DIR``: a transformers image-classification model (hub id or local folder)."""
    set_offline_defaults()
    transformers = require("transformers", needed_for=f"model spec {request.spec!r}")
    if not arg:
        raise ConfigError(f"model spec {request.spec!r}: expected hf:ORG/NAME or hf:FOLDER")
    path = Path(arg).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(
                f"{arg}: no usable model in this folder (no config.json); write one with "
                "model.save_pretrained(FOLDER)"
            )
        source = str(path)
    elif path.exists():
        raise InputError(
            f"{arg}: is a file; hf: expects a folder written by save_pretrained() or a hub id ORG/NAME"
        )
    elif arg.startswith((".", "/", "~", "\\")) or arg.count("/") > 1:
        raise InputError(f"{arg}: no such folder (model spec {request.spec!r})")
    else:
        source = arg  # a hub id, looked up in the local cache
    kwargs: dict[str, Any] = {} if downloads_allowed() else {"local_files_only": True}
    remote = _hf_remote_code(source, path.is_dir(), kwargs)
    if remote is not None:
        require_trust(
            request, subject=f"model spec {request.spec!r}",
            what="a Hugging Face model with custom code",
            why=f"its config.json names {remote}, which transformers imports with trust_remote_code",
        )
    try:
        with weights_only_loads(request.trust_code):
            model = transformers.AutoModelForImageClassification.from_pretrained(
                source, trust_remote_code=request.trust_code, **kwargs
            )
    except OSError as exc:
        where = f"folder {source}" if path.is_dir() else f"local Hugging Face cache (nor a folder {arg})"
        raise InputError(
            f"model spec {request.spec!r}: no usable model in the {where} ({one_line(exc)}); "
            "download it where there is internet (huggingface-cli download ORG/NAME) and copy "
            "the cache, or save it with model.save_pretrained(FOLDER) and use hf:FOLDER"
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not request.trust_code:  # custom code found late
            require_trust(
                request, subject=f"model spec {request.spec!r}",
                what="a Hugging Face model with custom code",
                why="transformers would import Python files from it (trust_remote_code)",
            )
        raise ConfigError(
            f"model spec {request.spec!r}: not an image-classification model ({one_line(exc)})"
        ) from exc
    _apply_weights(model, request)
    channels = getattr(model.config, "num_channels", None)
    if channels is not None and channels not in CHANNEL_COUNTS:
        raise _unsupported_channels(request.spec, channels, "config.json num_channels")
    prep = _hf_preprocessing(transformers, source, model.config, kwargs)
    return LoadedModel(
        finish(HuggingFaceClassifier(model), request, what="transformers"), prep, request.spec,
        channels_from=None if channels is None else f"config.json num_channels={channels}",
        channels_declared=channels is not None,
    )


def _hf_remote_code(source: str, is_dir: bool, kwargs: dict[str, Any]) -> str | None:
    """The custom-code entry (``auto_map``) of a model's ``config.json``, or ``None``.

    Read as JSON from the folder or the local hub cache, before transformers sees the model,
    so a model that would import Python files is refused without running anything. A config
    that cannot be found here is left to transformers, which refuses remote code itself
    unless ``trust_remote_code=True``.
    """
    import json

    config: Path | None = None
    if is_dir:
        config = Path(source) / "config.json"
    else:
        try:
            hub = require("huggingface_hub", needed_for="hf: model specs")
            found = hub.try_to_load_from_cache(source, "config.json")
            config = Path(found) if isinstance(found, str) else None
        except Exception:  # noqa: BLE001 - not in the cache: transformers reports it
            config = None
    if config is None or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None  # transformers reports a broken config
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not auto_map:
        return None
    if isinstance(auto_map, Mapping):
        return ", ".join(f"{k}={v}" for k, v in list(auto_map.items())[:2] if isinstance(k, str))[:200]
    return str(auto_map)[:200]


def _hf_class_names(config: Any) -> tuple[str, ...] | None:
    id2label = getattr(config, "id2label", None) or {}
    try:
        names = tuple(str(id2label[i] if i in id2label else id2label[str(i)]) for i in range(len(id2label)))
    except KeyError:
        return None
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None  # transformers' placeholder labels carry no information
    return names


def _as_stats(values: Any, channels: int) -> tuple[float, ...]:
    vals = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    return stats_for_channels(vals, channels)


def _hw(value: Any) -> tuple[int, int] | None:
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _hf_preprocessing(transformers: Any, source: str, config: Any, kwargs: dict[str, Any]) -> Preprocessing:
    names = _hf_class_names(config)
    channels = getattr(config, "num_channels", None)
    channels = int(channels) if channels in CHANNEL_COUNTS else 3
    try:
        mixin = transformers.image_processing_utils.ImageProcessingMixin
        proc, _ = mixin.get_image_processor_dict(source, **kwargs)
    except Exception:  # noqa: BLE001 - no preprocessor_config.json: fall back to the model config
        proc = {}
    if proc.get("do_normalize", True):
        mean = _as_stats(proc.get("image_mean") or IMAGENET_MEAN, channels)
        std = _as_stats(proc.get("image_std") or IMAGENET_STD, channels)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    interpolation = _PIL_RESAMPLE.get(proc.get("resample"), "bilinear")
    size = proc.get("size")
    shortest = size.get("shortest_edge") if isinstance(size, Mapping) else None
    fixed = _hw(size) if shortest is None else None
    do_crop = proc.get("do_center_crop", proc.get("crop_size") is not None)
    crop = _hw(proc.get("crop_size")) if do_crop else None
    crop_pct = proc.get("crop_pct")
    common = dict(mean=mean, std=std, interpolation=interpolation, class_names=names, channels=channels)
    if crop is not None:
        # Resize (short side to the requested size) then centre-crop. Processors that resize
        # to a fixed (h, w) before cropping are approximated by a short-side resize.
        short = int(shortest) if shortest else (min(fixed) if fixed else min(crop))
        return Preprocessing(input_size=crop, resize=max(short, min(crop)), crop="center", **common)
    if shortest is not None and crop_pct:
        # ConvNeXt-style: below 384 px resize to shortest/crop_pct and crop; at 384+ warp.
        if shortest < 384:
            return Preprocessing(
                input_size=int(shortest), resize=int(shortest / float(crop_pct)), crop="center", **common
            )
        return Preprocessing(input_size=int(shortest), resize=None, crop="none", **common)
    if shortest is not None:
        return Preprocessing(input_size=int(shortest), resize=int(shortest), crop="center", **common)
    if fixed is not None:
        return Preprocessing(input_size=fixed, resize=None, crop="none", **common)
    image_size = _hw(getattr(config, "image_size", None)) or (224, 224)
    if not proc:
        # No processor config: the model was trained on something; ImageNet stats are the
        # most common guess, and stretching keeps the whole image.
        return Preprocessing(
            input_size=image_size, resize=None, crop="none", class_names=names, channels=channels
        )
    return Preprocessing(input_size=image_size, resize=None, crop="none", **common)
