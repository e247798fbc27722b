"""Optional dependencies: import on demand, fail with a one-line install hint, stay offline."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from meaningful_perturbation.errors import ConfigError

__all__ = ["OFFLINE_ENV", "require", "set_offline_defaults"]

#: Environment variables that keep Hugging Face libraries from reaching the network. Set to
#: ``"1"`` before a hub library is imported, unless the user already set them (so
#: ``HF_HUB_OFFLINE=0`` re-enables downloads).
OFFLINE_ENV: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_offline_defaults() -> None:
    """Set :data:`OFFLINE_ENV` to ``"1"`` where the user has not set them.

    Hub libraries read these when imported, so call this before importing them. Weights are
    then read from the local cache only: a missing file fails at once instead of hanging on
    network retries.
    """
    for name in OFFLINE_ENV:
        os.environ.setdefault(name, "1")


def require(module: str, *, pip_name: str | None = None, needed_for: str) -> ModuleType:
    """Import ``module`` or raise :class:`ConfigError` with an install hint.

    Any failure during import counts as "not available" (not only ``ImportError``): a
    library built for another torch version can fail with ``RuntimeError`` or ``OSError``.

    Args:
        module: dotted module name, e.g. ``"torchvision.models"``.
        pip_name: the package to ``pip install`` (default: the top-level module name).
        needed_for: what needs it, for the message (e.g. ``"model spec 'torchvision:vgg19'"``).

    Returns:
        The imported module.

    Raises:
        ConfigError: the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        package = pip_name or module.split(".")[0]
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"{needed_for} needs the '{package}' package, which cannot be imported ({reason}); "
            f"install it with: pip install {package}"
        ) from exc
