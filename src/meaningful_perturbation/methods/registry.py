"""Method registry: one place feeding ``explain``, ``methods()``, the CLI and the docs.

A leaf module: presets import :func:`register` from here and register themselves when their
module is imported; the package ``meaningful_perturbation.methods`` imports every preset
module, so the registry never needs to know them (and importing this module, which imports
its package first, always finds every preset registered).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

__all__ = ["MethodSpec", "register", "get_method", "methods", "resolve_config", "config_as_dict", "config_sources"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: preset name used by ``explain(..., method=name)``.
        config_cls: frozen dataclass of the method's knobs (defaults cite their sources).
        run: ``run(ctx, config) -> Explanation`` where ``ctx`` is a :class:`~.context.Context`.
        summary: one line for listings.
        defaults: keyword overrides applied on top of ``config_cls()`` (presets that share
            a config class, e.g. ``paper-loc``).
        perturbation_levels: ``(x, config, *, generator) -> levels`` the levels the preset's
            optimiser blends its keep-mask with (figures redraw the perturbed input with it,
            :func:`~.common.perturbed_input`); ``None`` for methods that learn no keep-mask.
    """

    name: str
    config_cls: type
    run: Callable[..., Any]
    summary: str
    defaults: tuple[tuple[str, Any], ...] = ()
    notes: tuple[tuple[str, str], ...] = ()
    perturbation_levels: Callable[..., Any] | None = None
    requires: tuple[tuple[str, str], ...] = ()  # (importable module, pip extra) of an optional dependency

    def check_requirements(self) -> None:
        """Raise :class:`~meaningful_perturbation.ConfigError` naming the missing optional
        dependency and the extra that installs it (before anything is computed or written)."""
        import importlib.util

        for module, extra in self.requires:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"method {self.name!r} needs {module}, which is not installed: "
                    f"pip install 'meaningful-perturbation[{extra}]'"
                )

    def default_config(self):
        return dataclasses.replace(self.config_cls(), **dict(self.defaults))

    def sources(self) -> dict[str, str]:
        """Source comment of every default: the config class's, replaced by the preset's own
        note for the fields the preset overrides."""
        out = config_sources(self.config_cls)
        for key, _ in self.defaults:
            out[key] = dict(self.notes).get(key, f"preset {self.name!r}")
        return out


_REGISTRY: dict[str, MethodSpec] = {}
# Listing order, independent of which module happened to be imported first.
_ORDER = ("paper", "paper-loc", "seed", "extremal", "extremal-fast", "extremal-sweep", "extremal-channels", "masker", "gradient", "gradcam", "occlusion", "rise", "random", "center")


def _ordered() -> list[str]:
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(name, len(rank)), name))


def register(
    name: str,
    config_cls: type,
    summary: str,
    *,
    notes: dict[str, str] | None = None,
    perturbation_levels: Callable[..., Any] | None = None,
    requires: dict[str, str] | None = None,
    **defaults: Any,
) -> Callable:
    """Decorator registering ``run`` under ``name``; ``notes`` cite the source of each override;
    ``perturbation_levels`` is the level builder of a mask-learning preset (see :class:`MethodSpec`);
    ``requires`` maps an optional module the method imports to the pip extra that installs it."""

    def deco(run: Callable) -> Callable:
        _REGISTRY[name] = MethodSpec(
            name, config_cls, run, summary, tuple(defaults.items()), tuple((notes or {}).items()), perturbation_levels,
            tuple((requires or {}).items()),
        )
        return run

    return deco


def methods() -> list[str]:
    """Names of the registered presets: the paper methods first, then the baselines."""
    return _ordered()


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``; unknown names list the valid ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"method: unknown method {name!r}; valid methods: {', '.join(_ordered())}")
    return _REGISTRY[name]


def parse_setting(item: str) -> tuple[str, Any] | None:
    """``"key=value"`` → ``(key, value)`` for a config override, or ``None`` if malformed.

    The value is read as JSON when it parses (numbers, booleans, ``null``, lists), as the
    plain string otherwise; ``-`` in the key becomes ``_``. Callers raise their own error
    (``--set`` in the CLI, a method entry of the benchmark).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        value = raw
    return key.replace("-", "_"), value


def resolve_config(spec: MethodSpec, overrides: dict[str, Any]):
    """The preset's config with ``overrides`` applied and validated."""
    base = spec.default_config()
    valid = [f.name for f in dataclasses.fields(base)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise ConfigError(
            f"{', '.join(map(repr, unknown))}: not a setting of method {spec.name!r}; valid settings: {', '.join(valid)}"
        )
    cfg = dataclasses.replace(base, **{k: _plain(v) for k, v in overrides.items()})
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def _plain(value: Any) -> Any:
    """NumPy arrays and torch tensors of at most one dimension as Python values (a 0-d one as
    its scalar, a 1-d one as a tuple): ``areas=np.array([...])`` is a ladder like a tuple.
    Anything else, higher-dimensional arrays included (refused by the settings' checks), as is."""
    if hasattr(value, "tolist") and getattr(value, "ndim", None) in (0, 1) and not isinstance(value, (str, bytes)):
        out = value.tolist()
        return tuple(out) if isinstance(out, list) else out
    return value


def config_sources(config_cls: type) -> dict[str, str]:
    """The source comment of each field default (``name: T = value  # source``)."""
    import inspect
    import re

    out: dict[str, str] = {}
    for cls in config_cls.__mro__:  # a subclass's own comment wins over its base's
        try:
            src = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=[^#\n]*#\s*(.+)$", src, flags=re.M):
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def config_as_dict(cfg) -> dict[str, Any]:
    """JSON-able view of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
