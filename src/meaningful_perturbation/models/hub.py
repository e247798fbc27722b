"""Models from model zoos: ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:NONE]`` and
``hf:ID_OR_DIR[:NONE]``.

Pretrained weights are fetched exactly as each library fetches them on its own, into its own
cache, with its own progress bar (on stderr; off with ``progress=False`` / CLI ``-q``):

- torchvision: ``torchvision.models.get_model(name, weights=..., progress=...)``, i.e. the
  weights enum's ``get_state_dict`` -> ``torch.hub.load_state_dict_from_url`` into
  ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, default
  ``~/.cache/torch/hub/checkpoints``);
- timm: ``timm.create_model(name, pretrained=True)``: the Hugging Face hub cache
  (``HF_HUB_CACHE``, default ``$HF_HOME/hub``) or, for older weights, the torch hub cache;
- transformers: ``from_pretrained(ID)`` into the Hugging Face hub cache (``HF_HOME``).

``offline=True`` (CLI ``--offline``) forbids the network: the cache is checked *before* the
model is built, and a missing file fails at once naming that source's own cache folder and
the variable that moves it (``TORCH_HOME`` for the torch hub cache, ``HF_HOME`` /
``HF_HUB_CACHE`` for the Hugging Face one), instead of hanging on network retries. The user's
own ``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE=1`` for ``hf:``) works the same way for
the Hugging Face sources. Local folders (``hf:FOLDER``) never touch the network.

``NONE`` as the last part (``torchvision:resnet50:NONE``, ``timm:resnet50:NONE``,
``hf:ORG/NAME:NONE``) builds the architecture with random weights: no weights are fetched
(``hf:`` still needs the model's ``config.json``, from the cache or the hub). The random
weights come from a fixed seed (0; the caller's generator is left as found), so the same spec
is the same model in every call and process.

Zoo loads run inside :func:`~meaningful_perturbation.models.base.weights_only_loads`: every
``torch.load`` is weights-only unless ``trust_code``, downloads included.

The zoo's own preprocessing is translated to :class:`~meaningful_perturbation.io.Preprocessing`:
torchvision weights' ``transforms()`` and ``meta["categories"]``; timm's pretrained data config
(``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``) and ImageNet
class descriptions; Hugging Face image-processor config (``size``, ``crop_size``, ``crop_pct``,
``image_mean``/``image_std``, ``resample``) and ``config.id2label``. A Hugging Face model
without ``preprocessor_config.json`` gets an *assumed* recipe (the config's ``image_size``,
stretched, ImageNet mean/std), marked ``Preprocessing.assumed`` and announced by a warning.

Input channels: torchvision classifiers take RGB (3); timm's data config states them as the
first number of ``input_size`` ``(C, H, W)``; a transformers config as ``num_channels``.
Statistics given for another channel count are carried over with
:func:`~meaningful_perturbation.io.stats_for_channels` (e.g. ``image_mean`` ``[0.5, 0.5, 0.5]``
for a ``num_channels=1`` model becomes ``(0.5,)``).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from meaningful_perturbation.errors import ConfigError, InputError, MeaningfulPerturbationError, ModelError
from meaningful_perturbation.io.preprocessing import (
    CHANNEL_COUNTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    stats_for_channels,
)
from meaningful_perturbation.models._imports import require
from meaningful_perturbation.models.base import (
    LoadedModel,
    LoadRequest,
    finish,
    hf_offline_variable,
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
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url`` (follows ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


#: How each cache is named in messages, with the variables that move it.
TORCH_CACHE = "the torch hub cache"
TORCH_VARIABLE = "TORCH_HOME"
HF_CACHE = "the Hugging Face cache"
HF_VARIABLE = "HF_HOME or HF_HUB_CACHE"
#: The switch that forbids downloads, as messages name it.
OFFLINE_FLAG = "--offline (Python API: offline=True)"


def _hf_cache_dir() -> str:
    try:
        import huggingface_hub.constants as constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - huggingface_hub missing: its documented default
        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _offline_reason(request: LoadRequest, *hf_variables: str) -> str | None:
    """Why downloads are off for this load, or ``None`` when they are allowed: ``--offline``,
    or (Hugging Face sources only, passing their variable names) the user's own
    ``HF_HUB_OFFLINE=1``."""
    if request.offline:
        return OFFLINE_FLAG
    return hf_offline_variable(*hf_variables) if hf_variables else None


def _missing_weights_error(
    spec: str, what: str, cache: str, where: str, variable: str, reason: str, how: str = ""
) -> InputError:
    """The one message for "weights not cached and downloads are off": names the source's
    own cache, the variable that moves it, why downloads are off and how to get the weights."""
    undo = "run once without --offline" if reason == OFFLINE_FLAG else f"unset {reason.split('=')[0]}"
    return InputError(
        f"model spec {spec!r}: pretrained weights {what} are not in {cache} ({where}; set by "
        f"{variable}) and downloads are off ({reason}); {undo} to download them"
        f"{', ' + how if how else ''}, or pass a state-dict file with --weights FILE"
    )


def _download_failed(spec: str, what: str, cache: str, where: str, exc: BaseException, url: str = "") -> ModelError:
    """The one message for a download that failed: the same facts as the offline message (the
    source's cache, the variable that moves it, where the file comes from) and the error."""
    variable = TORCH_VARIABLE if cache == TORCH_CACHE else HF_VARIABLE
    return ModelError(
        f"model spec {spec!r}: downloading pretrained weights {what}{f' from {url}' if url else ''} into {cache} "
        f"({where}; set by {variable}) failed ({type(exc).__name__}: {one_line(exc, 160)}); check the network "
        f"connection, or put the file into that folder, or pass a state-dict file with --weights FILE "
        f"(':NONE' after the name: random weights)"
    )


@contextlib.contextmanager
def _quiet_hub_retries() -> Iterator[None]:
    """huggingface_hub logs every retry of a failed request (20 lines over ~50 s offline);
    the failure itself is reported once, by :func:`_download_failed`."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Hugging Face download bars as the user asked: left alone when ``enabled``, switched
    off (and back on afterwards) when not."""
    if enabled:
        yield
        return
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except Exception:  # noqa: BLE001 - no huggingface_hub: nothing to switch
        yield
        return
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    tf_logging = None
    try:
        from transformers.utils import logging as tf_logging  # its own "Loading weights" bar

        tf_bar = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers absent or without these switches
        tf_logging = None
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
        if tf_logging is not None and tf_bar:
            tf_logging.enable_progress_bar()


@contextlib.contextmanager
def _fixed_init(active: bool) -> Iterator[None]:
    """Random weights (``:NONE``) drawn from a fixed seed (0), the caller's CPU generator left
    as found: the same spec builds the same model in every process and call, so ``--seed``
    reproduces a run and ``--resume`` continues it with the same model."""
    if not active:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _split_none(arg: str) -> tuple[str, bool]:
    """``NAME:NONE`` -> ``(NAME, True)`` (random weights); anything else -> ``(arg, False)``."""
    head, sep, tail = arg.rpartition(":")
    if sep and head and tail.upper() == "NONE":
        return head, True
    return arg, False


# ----------------------------------------------------------------------------------------------
# torchvision
# ----------------------------------------------------------------------------------------------


def load_torchvision(arg: str, request: LoadRequest) -> LoadedModel:
    """``torchvision:NAME[:WEIGHTS]``: a torchvision classification model.

    ``WEIGHTS`` is a weights-enum member name (``DEFAULT`` when omitted, e.g.
    ``IMAGENET1K_V1``) or ``NONE`` for random initialisation. Pretrained weights are fetched
    by torchvision itself (``get_model(name, weights=..., progress=...)``) into the torch hub
    cache (``$TORCH_HOME/hub/checkpoints``) unless ``request.offline``, which requires them
    to be there already. With ``--weights FILE`` the architecture is built without
    pretrained weights and filled from FILE; the preprocessing and class names still come
    from the named (or default) weights.
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
    cached = _torch_hub_checkpoint(pretrained.url) if pretrained is not None else None
    fetching = cached is not None and not cached.is_file()
    reason = _offline_reason(request)  # torchvision has no offline variable of its own
    if fetching and reason is not None:
        raise _missing_weights_error(
            request.spec, cached.name, TORCH_CACHE, str(cached.parent), TORCH_VARIABLE, reason,
            f"put {pretrained.url} into that folder",
        )
    try:
        with weights_only_loads(request.trust_code), _fixed_init(pretrained is None):  # torch.hub: weights_only=False
            model = tvm.get_model(name, weights=pretrained, progress=request.progress)
    except (RuntimeError, OSError) as exc:
        if fetching and not cached.is_file():  # the download itself failed
            raise _download_failed(request.spec, cached.name, TORCH_CACHE, str(cached.parent), exc,
                                   pretrained.url) from exc
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
    """``timm:NAME[:NONE]``: a timm model (``NAME`` may carry a pretrained tag,
    ``resnet50.a1_in1k``; ``:NONE`` means random weights, ``pretrained=False``).

    Pretrained weights are fetched by timm itself (``create_model(name, pretrained=True)``)
    into the Hugging Face cache (or, for older weights, the torch hub cache). Offline
    (``request.offline`` or the user's ``HF_HUB_OFFLINE=1``) the cached file is found first
    and handed to timm as ``pretrained_cfg_overlay={"file": ...}``, so nothing reaches the
    network. With ``--weights FILE`` the model is created without pretrained weights and
    filled from FILE. Preprocessing comes from the model's pretrained data config: short side
    resized to ``floor(input / crop_pct)`` and centre-cropped (``crop_mode="squash"``
    stretches the whole image instead).
    """
    timm = require("timm", needed_for=f"model spec {request.spec!r}")
    name, random_init = _split_none(arg)
    if not timm.is_model(name):
        raise ConfigError(
            f"model spec {request.spec!r}: timm has no model {name!r}{_close(name, list(timm.list_models()))}"
        )
    pretrained = request.weights is None and not random_init
    kwargs: dict[str, Any] = {}
    fetching: tuple[str, str, str] | None = None  # (what, cache, folder) of a download to come
    if pretrained:
        found, fetching = _timm_cached_weights(timm, name, request.spec)
        reason = _offline_reason(request, "HF_HUB_OFFLINE")
        if reason is not None:
            if found is None and fetching is not None:
                what, cache, where = fetching
                variable = TORCH_VARIABLE if cache == TORCH_CACHE else HF_VARIABLE
                raise _missing_weights_error(request.spec, what, cache, where, variable, reason)
            if found is not None:  # timm reads the cached file itself, no hub lookup
                kwargs["pretrained_cfg_overlay"] = {"file": str(found), "source": ""}
        elif found is not None:
            fetching = None
        set_progress = getattr(getattr(timm, "models", None), "set_pretrained_download_progress", None)
        if callable(set_progress):  # timm's torch-hub downloads are silent unless asked
            set_progress(request.progress)
    try:
        with weights_only_loads(request.trust_code), _hf_progress(request.progress), _fixed_init(not pretrained), \
                _quiet_hub_retries():
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network errors have many types
        if fetching is not None and isinstance(exc, OSError):  # requests/urllib errors are OSErrors
            raise _download_failed(request.spec, *fetching, exc) from exc
        raise ModelError(f"model spec {request.spec!r}: timm could not create it ({one_line(exc)})") from exc
    _apply_weights(model, request)
    prep = _timm_preprocessing(timm, model, request.spec)
    return LoadedModel(
        finish(model, request, what="timm"), prep, request.spec,
        channels_from=f"timm data config input_size (C, H, W) with C={prep.channels}",
        channels_declared=True,
    )


def _timm_cached_weights(timm: Any, name: str, spec: str) -> tuple[Path | None, tuple[str, str, str] | None]:
    """Where timm's pretrained weights for ``name`` already are, and what a download would
    fetch: ``(cached file or None, (what, cache, folder) or None)``. ``(None, None)`` when
    this timm does not say (left to ``create_model``)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an old timm: let create_model decide
        return None, None
    if cfg is None:
        raise InputError(
            f"model spec {spec!r}: timm has no pretrained weights for {name!r}; pass --weights FILE "
            f"or use {spec}:NONE for random weights"
        )
    get = cfg.get if isinstance(cfg, Mapping) else (lambda key, default=None: getattr(cfg, key, default))
    if get("file"):
        path = Path(get("file"))
        if not path.is_file():
            raise InputError(
                f"model spec {spec!r}: timm's pretrained config names the file {path}, which does "
                "not exist; create it or pass a state-dict file with --weights FILE"
            )
        return path, None
    url = get("url")
    if url and _torch_hub_checkpoint(url).is_file():
        return _torch_hub_checkpoint(url), None
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
                return Path(found), None
        return None, (f"of the Hugging Face repo {repo}", HF_CACHE, _hf_cache_dir())
    if url:
        cached = _torch_hub_checkpoint(url)
        return None, (cached.name, TORCH_CACHE, str(cached.parent))
    return None, None


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
    """``hf:ID_OR_DIR[:NONE]``: a transformers image-classification model (hub id or local
    folder written by ``save_pretrained``).

    A hub id is fetched by transformers itself (``from_pretrained``) into the Hugging Face
    cache (``HF_HOME``) unless offline (``request.offline``, or the user's ``HF_HUB_OFFLINE=1``
    / ``TRANSFORMERS_OFFLINE=1``): then only the cache is read (``local_files_only=True``). A
    folder is always read locally. ``:NONE`` (or ``--weights FILE``) builds the model from
    its ``config.json`` alone (``from_config``): random weights, nothing else fetched.
    """
    transformers = require("transformers", needed_for=f"model spec {request.spec!r}")
    if not arg:
        raise ConfigError(f"model spec {request.spec!r}: expected hf:ORG/NAME or hf:FOLDER")
    random_init = False
    if not Path(arg).expanduser().exists():
        arg, random_init = _split_none(arg)
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
        source = arg  # a hub id: the Hugging Face cache, or a download
    reason = None if path.is_dir() else _offline_reason(request, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    kwargs: dict[str, Any] = {"local_files_only": True} if path.is_dir() or reason else {}
    remote = _hf_remote_code(source, path.is_dir(), kwargs)
    if remote is not None:
        require_trust(
            request, subject=f"model spec {request.spec!r}",
            what="a Hugging Face model with custom code",
            why=f"its config.json names {remote}, which transformers imports with trust_remote_code",
        )
    auto = transformers.AutoModelForImageClassification
    try:
        with weights_only_loads(request.trust_code), _hf_progress(request.progress):
            if random_init or request.weights is not None:
                config = transformers.AutoConfig.from_pretrained(
                    source, trust_remote_code=request.trust_code, **kwargs
                )
                with _fixed_init(True):
                    model = auto.from_config(config, trust_remote_code=request.trust_code)
            else:
                model = auto.from_pretrained(source, trust_remote_code=request.trust_code, **kwargs)
    except OSError as exc:
        if path.is_dir():
            raise InputError(
                f"model spec {request.spec!r}: no usable model in the folder {source} "
                f"({one_line(exc)}); save it with model.save_pretrained(FOLDER)"
            ) from exc
        if reason is not None:
            raise _missing_weights_error(
                request.spec, f"of the Hugging Face repo {source}", HF_CACHE, _hf_cache_dir(),
                HF_VARIABLE, reason, "save it with model.save_pretrained(FOLDER) and use hf:FOLDER",
            ) from exc
        raise InputError(
            f"model spec {request.spec!r}: could not get {source!r} from the Hugging Face hub into "
            f"{HF_CACHE} ({_hf_cache_dir()}) ({one_line(exc)}); check the id (ORG/NAME, or a "
            "folder written by save_pretrained) and the network connection"
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
    except (MeaningfulPerturbationError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a damaged weights file (SafetensorError, UnpicklingError, ...)
        raise InputError(
            f"model spec {request.spec!r}: transformers could not read the model's files in {source} "
            f"({type(exc).__name__}: {one_line(exc)}); re-save it with model.save_pretrained(FOLDER)"
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
            input_size=image_size, resize=None, crop="none", class_names=names, channels=channels,
            assumed=True,
        )
    return Preprocessing(input_size=image_size, resize=None, crop="none", **common)
