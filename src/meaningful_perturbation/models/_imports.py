"""Optional dependencies: import on demand, fail with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from meaningful_perturbation.errors import ConfigError

__all__ = ["require"]


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
