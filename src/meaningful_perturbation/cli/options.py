"""Option definitions shared by the ``mperturb`` subcommands (``explain``, ``benchmark``).

``add_model_options`` / ``add_method_options`` add the arguments to a parser;
``build_run_settings`` turns the parsed namespace into a validated :class:`RunSettings`
(method overrides resolved against the preset's config, so a typo fails before any model is
loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .._atomic import file_kind
from .._runtime import AUTO, check_device, check_seed
from ..core.head import HEADS
from ..errors import ConfigError, InputError
from ..io.preprocessing import MAX_INPUT_SIDE
from ..methods.registry import config_as_dict, get_method, parse_setting, resolve_config

__all__ = [
    "RunSettings",
    "read_option_text",
    "resolve_device_option",
    "add_model_options",
    "add_method_options",
    "build_run_settings",
    "parse_set_value",
    "parse_target",
]


@dataclass
class RunSettings:
    """Everything a run needs besides the images.

    Attributes:
        model: model spec (``demo`` when not given).
        weights: optional state-dict file.
        trust_code: allow model sources that can run code (``--trust-code``; see
            ``docs/security.md``).
        device: ``cpu`` / ``cuda`` / ``cuda:1`` / ``mps`` ...; ``auto`` (the CLI default)
            is resolved by :func:`build_run_settings` to ``cuda``, ``mps`` or ``cpu``.
        offline: never use the network for model weights (``--offline``); not part of
            :meth:`to_dict` (it does not change a result).
        preprocessing: overrides for :func:`~meaningful_perturbation.io.resolve_preprocessing`
            (only the ones given).
        method: preset name.
        target: ``None`` (method default), ``"top1"``, ``"top5"``, an int, a class name, or
            a list of ints / names (several classes, their scores summed).
        overrides: method config overrides (``--config`` < ``--set`` < ``--steps``/``--areas``).
        config: the resolved method config as a plain dict.
        seed: random seed.
        head: how the model's output is read (``auto``, ``logits``, ``probabilities``,
            ``sigmoid``, ``sigmoid-probabilities``; see ``meaningful_perturbation.core.head``).
    """

    model: str = "demo"
    weights: str | None = None
    trust_code: bool = False
    device: str = "cpu"
    offline: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)
    method: str = "paper"
    target: str | int | list[str | int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    head: str = "auto"

    @property
    def unsafe_pickle(self) -> bool:
        """Deprecated name of :attr:`trust_code`."""
        return self.trust_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "trust_code": self.trust_code,
            "device": self.device,
            "preprocessing": self.preprocessing,
            "method": self.method,
            "target": self.target,
            "overrides": self.overrides,
            "seed": self.seed,
            "head": self.head,
        }


def _size(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model --weights --trust-code --offline --device`` and the preprocessing overrides
    (``--input-size --resize --channels --mean --std``)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="SPEC",
                   help="model spec (see `mperturb models`); default: the bundled demo model")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="state-dict file loaded into the model (.safetensors or torch.save)")
    g.add_argument("--trust-code", dest="trust_code", action="store_true",
                   help="run code contained in or named by the model source: python: factories, "
                        "TorchScript, torch.export archives, pickled models/weights, Hugging Face "
                        "trust_remote_code (trusted files only; see docs/security.md)")
    g.add_argument("--unsafe-pickle", dest="trust_code", action="store_true",
                   help=argparse.SUPPRESS)  # deprecated alias of --trust-code
    g.add_argument("--offline", action="store_true",
                   help="never download model weights: torchvision/timm/hf weights must already be in the "
                        "library's cache (TORCH_HOME, HF_HOME); default: download them on first use, as the "
                        "libraries do")
    g.add_argument("--device", default=AUTO, metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA if available, then MPS, else CPU); "
                        "checked against this build and machine first")
    p = parser.add_argument_group("preprocessing overrides (default: the model's own)")
    p.add_argument("--input-size", type=_size, default=None, metavar="N|HxW", help="model input size")
    p.add_argument("--resize", type=int, default=None, metavar="N",
                   help="short side before the centre crop (0 = just cover the input size)")
    p.add_argument("--channels", type=_channels, default=None, metavar="{1,3}",
                   help="input channels: 1 = grey (luma), 3 = RGB; default: the model's metadata, "
                        "else its first Conv2d, else 3 (checked with one forward pass)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="V",
                   help="normalisation mean: one value for every channel, or one per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="V",
                   help="normalisation std: one value for every channel, or one per channel")


def _channels(text: str) -> int:
    if text.strip() in ("1", "3"):
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 1 (grey) or 3 (RGB), got {text!r}")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--method --target --areas --steps --layer --set --config --seed``."""
    g = parser.add_argument_group("method")
    g.add_argument("--method", default=None, metavar="NAME",
                   help="preset (see `mperturb methods`); default paper (extremal-channels with --layer)")
    g.add_argument("--target", default=None, metavar="CLASS[,CLASS...]|top1|top5",
                   help="class index or name, several separated by commas (scores summed, e.g. 2,7 for a "
                        "multi-label model), top1, or top5 (5 top classes, scores summed); "
                        "default: the method's own (top-1; top-5 for paper-loc)")
    g.add_argument("--areas", type=float, nargs="+", default=None, metavar="A",
                   help="mask areas (extremal)")
    g.add_argument("--steps", type=int, default=None, metavar="N", help="optimisation steps")
    g.add_argument("--layer", default=None, metavar="NAME",
                   help="module name as in model.named_modules() (e.g. features.10): the layer whose channels "
                        "extremal-channels attributes (implies --method extremal-channels), or gradcam's layer")
    g.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field; VALUE parsed as JSON when possible (repeatable)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="JSON object of config overrides (applied before --set)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed, an int in [-2**63, 2**64) (default 0)")
    g.add_argument("--masker", default=None, metavar="FILE",
                   help="with --method masker: a masker trained by `mperturb train-masker` (.safetensors); "
                        "default: the one shipped for the demo model")
    g.add_argument("--head", default="auto", choices=HEADS,
                   help="how the model's output is read: logits (softmax), probabilities (the model ends in a "
                        "softmax), sigmoid (multi-label or one-column binary logits), sigmoid-probabilities; "
                        "default auto: one column -> sigmoid, rows summing to 1 -> probabilities, else logits")


def parse_set_value(item: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``, the value parsed as JSON when possible.

    Example:
        >>> parse_set_value("areas=[0.1, 0.2]")
        ('areas', [0.1, 0.2])
        >>> parse_set_value("game=preserve")
        ('game', 'preserve')
    """
    parsed = parse_setting(item)
    if parsed is None:
        raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
    return parsed


#: Largest ``--config`` file read (a config object is a few hundred bytes; a ``config.json``
#: written by ``mperturb explain`` a few KB).
MAX_CONFIG_BYTES = 4 << 20


def read_option_text(path: str, option: str, *, limit: int, what: str = "JSON") -> str:
    """The UTF-8 text of the regular file ``path`` named by ``option``, read without blocking
    and without reading more than ``limit`` bytes (a leading BOM is dropped).

    Raises:
        InputError: the file cannot be opened, is not a regular file (a folder, FIFO, socket
            or device such as ``/dev/zero``), holds more than ``limit`` bytes, or is not UTF-8;
            the message names ``option``, the file and what was expected.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting
    except OSError as e:
        raise InputError(f"{option}: cannot read {path!r} ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{option}: {path!r} is {file_kind(mode)}, not a regular file; give a {what} file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise InputError(f"{option}: cannot read {path!r} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{option}: {path!r} holds more than {limit} bytes, far more than a {what} file "
                         "holds; give the right file")
    try:
        return b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{option}: {path!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         f"expected a UTF-8 {what} file") from None


def _read_config_file(path: str) -> dict[str, Any]:
    """The JSON object of config overrides in ``--config`` ``path`` (see :func:`read_option_text`)."""
    text = read_option_text(path, "--config", limit=MAX_CONFIG_BYTES, what="JSON")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"--config: {path!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path!r} must hold a JSON object of config fields, got {type(data).__name__}")
    # A config.json written by `mperturb explain` wraps the fields in "config".
    if isinstance(data.get("config"), dict) and "method" in data:
        data = data["config"]
    return data


def parse_target(text: str | None) -> str | int | list[str | int] | None:
    """``None`` / ``top1`` / ``top5`` / an int / a class name (kept as str) / several of
    them separated by commas (a list: the classes' scores are summed).

    Example:
        >>> parse_target("2,7"), parse_target("tabby"), parse_target("top5")
        ([2, 7], 'tabby', 'top5')
    """
    if text is None:
        return None
    t = text.strip()
    if t.lower() in ("top1", "top5"):
        return t.lower()
    if "," in t:
        parts = [p.strip() for p in t.strip("[]").split(",")]
        if not all(parts):
            raise ConfigError(f"--target: expected classes separated by commas, got {text!r}")
        return [parse_target(p) for p in parts]  # type: ignore[misc]
    try:
        return int(t)
    except ValueError:
        return t


#: Settings with a dedicated option: an error about one the user gave that way names the
#: option (``--areas: ...``), not ``--set``.
FLAG_SETTINGS = {"steps": "--steps", "areas": "--areas", "masker": "--masker", "layer": "--layer"}


def name_option(message: str, args: argparse.Namespace | None) -> str:
    """``message`` (``"<setting>: ..."``) with the setting replaced by its dedicated option
    when the user gave it that way (``areas: ...`` → ``--areas: ...`` after ``--areas``).

    Example:
        >>> name_option("areas: expected ...", argparse.Namespace(areas=[0.1]))
        '--areas: expected ...'
    """
    key = message.split(":", 1)[0]
    if key in FLAG_SETTINGS and getattr(args, key, None) is not None:
        return FLAG_SETTINGS[key] + message[len(key):]
    return message


def _norm(value: Any) -> Any:
    """Lists and tuples compare equal (``--areas 0.1 0.2`` vs ``--set areas=[0.1,0.2]``)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def build_run_settings(args: argparse.Namespace) -> RunSettings:
    """Validate the parsed options into a :class:`RunSettings`.

    Raises:
        ConfigError / InputError: unknown method or setting, bad ``--set``/``--config`` (a
            ``--config`` that is not a regular UTF-8 file of at most 4 MB holding a JSON
            object), a ``--device`` this build or machine lacks (see
            :func:`resolve_device_option`), a ``--seed`` outside ``[-2**63, 2**64)``.
    """
    _PENDING_NOTE.clear()
    device, announce = resolve_device_option(getattr(args, "device", None))
    seed = check_seed(int(getattr(args, "seed", 0) or 0), "--seed")
    overrides: dict[str, Any] = {}
    config_keys: set = set()
    if getattr(args, "config", None):
        from_file = _read_config_file(args.config)
        overrides.update(from_file)
        config_keys = set(from_file)
    set_keys = set()
    for item in getattr(args, "set_values", None) or []:
        key, value = parse_set_value(item)
        overrides[key] = value
        set_keys.add(key)
    given = dict(overrides)  # from --config / --set: a dedicated flag must not silently replace them
    if getattr(args, "steps", None) is not None:
        overrides["steps"] = args.steps
    if getattr(args, "areas", None) is not None:
        overrides["areas"] = list(args.areas)
    if getattr(args, "masker", None) is not None:
        chosen = getattr(args, "method", None) or "paper"
        if chosen != "masker":
            raise ConfigError(f"--masker: --masker needs --method masker (got --method {chosen}); add --method masker "
                              "or drop --masker")
        from ..masker.model import as_masker

        as_masker(args.masker, option="--masker")  # a bad file fails now, before the model loads
        overrides["masker"] = args.masker
    for key, flag in FLAG_SETTINGS.items():
        if key in given and getattr(args, key, None) is not None and _norm(given[key]) != _norm(overrides.get(key, getattr(args, key))):
            raise ConfigError(f"{flag}: {flag} {_norm(overrides.get(key, getattr(args, key)))!r} and {key}="
                              f"{_norm(given[key])!r} from --set/--config disagree; give the setting once")
    # JSON lists -> tuples (configs are frozen dataclasses with tuple fields).
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    layer = getattr(args, "layer", None)
    method = getattr(args, "method", None) or ("extremal-channels" if layer is not None else "paper")
    spec = get_method(method)
    try:
        spec.check_requirements()  # before the output folder or the model
    except ConfigError as e:
        raise ConfigError(f"--method: {e}") from None
    if layer is not None:
        if "layer" not in config_as_dict(spec.default_config()):
            raise ConfigError(f"--layer: method {method!r} takes no layer; use --method extremal-channels "
                              "(channel attribution) or gradcam, or drop --layer")
        overrides["layer"] = layer
    try:
        cfg = resolve_config(spec, overrides)
    except TypeError as e:  # a value of the wrong type deep inside a dataclass check
        raise ConfigError(f"--set: invalid value for method {method!r} ({e})") from None
    except ConfigError as e:  # name the option the bad setting came from
        if str(e).startswith("-"):
            raise
        named = name_option(str(e), args)
        if named != str(e):
            raise ConfigError(named) from None
        key = str(e).split(":", 1)[0].strip("'\"")  # the setting the check names
        flag = FLAG_SETTINGS.get(key)
        if flag is not None and getattr(args, key, None) is not None and key not in given:
            where = flag  # --steps / --areas on a method without that setting
        elif key in set_keys:
            where = "--set"
        elif key in config_keys:
            where = "--config"
        else:
            where = "--set" if getattr(args, "set_values", None) or not getattr(args, "config", None) else "--config"
        raise ConfigError(f"{where}: {e}") from None
    if announce:  # once every setting is valid: a bad one gets its error line alone
        _announce_device(device, quiet=bool(getattr(args, "quiet", False)))
    resize = getattr(args, "resize", None)
    if resize is not None and not 0 <= resize <= MAX_INPUT_SIDE:
        raise ConfigError(f"--resize: expected 0 (just cover the input size) or a short side up to {MAX_INPUT_SIDE} "
                          f"pixels, got {resize}")
    prep: dict[str, Any] = {}
    for name in ("input_size", "resize", "channels", "mean", "std"):
        value = getattr(args, name, None)
        if value is not None:
            prep[name] = tuple(value) if isinstance(value, list) else value
    return RunSettings(
        model=getattr(args, "model", None) or "demo",
        weights=getattr(args, "weights", None),
        trust_code=bool(getattr(args, "trust_code", False)),
        device=device,
        offline=bool(getattr(args, "offline", False)),
        preprocessing=prep,
        method=method,
        target=parse_target(getattr(args, "target", None)),
        overrides={k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        config=config_as_dict(cfg),
        seed=seed,
        head=getattr(args, "head", None) or "auto",
    )


_PENDING_NOTE: list[str] = []


def resolve_device_option(value: Any, option: str = "--device") -> tuple[str, bool]:
    """The device named by ``--device`` (``None``: the default, ``auto``) as ``(device, auto)``:
    ``auto`` resolved to ``"cuda"`` / ``"mps"`` / ``"cpu"`` (no index: under torchrun the runner
    adds ``LOCAL_RANK``), any other name checked by :func:`check_device` and returned as
    given; ``auto`` says whether it was ``auto`` (so the choice is announced).

    Raises:
        ConfigError: an empty value, a name torch does not parse, a device this build or
            machine lacks, an index beyond the device count (``cpu:1`` and up included: there
            is one CPU device), each naming ``option``.
    """
    if value is None:
        value = AUTO
    resolved = check_device(value, option)  # an empty value and cpu:1 and up are refused there too
    if str(value).strip().lower() == AUTO:
        return str(resolved), True
    return str(value), False


def flush_device_note() -> None:
    """Print the ``--device auto`` note kept by :func:`build_run_settings` (once). Commands call
    it when the checks that need the model (``--layer``) have passed, so that an error is the
    only line a failing command prints."""
    while _PENDING_NOTE:
        print(_PENDING_NOTE.pop(0), file=sys.stderr)


def _announce_device(device: str, *, quiet: bool) -> None:
    """One stderr line naming the device ``--device auto`` chose (not with ``-q``; under
    torchrun only rank 0 speaks)."""
    if quiet or os.environ.get("RANK", "0") not in ("", "0"):
        return
    why = {"cuda": "CUDA is available", "mps": "MPS is available"}.get(device, "no CUDA or MPS device")
    _PENDING_NOTE[:] = [f"mperturb: note: device {device} (--device auto: {why})"]  # printed by flush_device_note


def method_overrides(settings: RunSettings) -> dict[str, Any]:
    """The overrides as keyword arguments for ``explain`` (lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.overrides.items()}



def check_masker_setting(settings: Any, model: Any, prep: Any = None) -> None:
    """:func:`meaningful_perturbation.masker.model.check_masker_setting`, imported lazily."""
    from ..masker.model import check_masker_setting as check

    check(settings, model, prep)
