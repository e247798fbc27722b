"""Up-front checks of the run-time arguments every entry point shares: ``device`` and ``seed``.

Both fail early, in one line naming the argument, what was asked and what is accepted,
instead of deep inside PyTorch (``AssertionError: Torch not compiled with CUDA enabled``,
``ValueError: Overflow when unpacking long long``).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError, MeaningfulPerturbationError

__all__ = ["AUTO", "auto_device", "available_devices", "check_device", "check_seed", "SEED_MIN", "SEED_MAX"]

#: ``torch.Generator.manual_seed`` accepts the ints in ``[-2**63, 2**64)`` (a signed or an
#: unsigned 64-bit value; negative seeds wrap to ``seed + 2**64``), torch 2.x.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


def _backend(kind: str) -> Any:
    if kind == "mps":
        return getattr(torch.backends, "mps", None)
    return getattr(torch, kind, None)


def _count(kind: str) -> int:
    """How many devices of ``kind`` this build and machine offer (0: none)."""
    if kind == "cpu":
        return 1
    mod = _backend(kind)
    try:
        if mod is None or not mod.is_available():
            return 0
        if kind == "mps":
            return 1
        return int(mod.device_count())
    except Exception:  # noqa: BLE001 - a broken driver means: not available
        return 0


def available_devices() -> list[str]:
    """The devices this build and machine can run on, e.g. ``['cpu']`` or
    ``['cpu', 'cuda:0', 'cuda:1']``."""
    out = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        n = _count(kind)
        if kind == "mps" and n:
            out.append("mps")
        else:
            out += [f"{kind}:{i}" for i in range(n)]
    return out


#: The device name that means "the best device here" (the CLI's default ``--device``).
AUTO = "auto"


def auto_device() -> str:
    """What ``"auto"`` resolves to: ``"cuda"`` when a CUDA device is visible, else ``"mps"``
    (Apple GPU), else ``"cpu"``. ``"cuda"`` carries no index, so it means the current CUDA
    device (under torchrun, the runner maps it to ``cuda:LOCAL_RANK``)."""
    for kind in ("cuda", "mps"):
        if _count(kind):
            return kind
    return "cpu"


def check_device(device: Any, name: str = "device", error: type[MeaningfulPerturbationError] = ConfigError) -> torch.device:
    """``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a
    ``torch.device``) as a :class:`torch.device` this build and machine can compute on.
    ``"auto"`` is :func:`auto_device` (CUDA, else MPS, else CPU).

    Refused: strings torch does not parse, ``meta`` (holds no data) and other kinds without
    storage, kinds this build lacks (``cuda`` on a CPU-only wheel), kinds present in the build
    but with no device on the machine, an index beyond the device count (``cpu:1`` and up:
    there is one CPU device) and an empty string.

    Raises:
        ConfigError (or ``error``): naming ``name``, the value asked for and the devices
        available, e.g. ``--device: 'cuda' is not available (PyTorch 2.3.0+cpu was built
        without CUDA); available: cpu``.
    """
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise error(f"{name}: expected a device name such as 'cpu' or 'cuda:0', got {device!r}")
    if isinstance(device, str) and not device.strip():
        raise error(f"{name}: expected a device name such as auto, cpu, cuda or cuda:1, got an empty value")
    if isinstance(device, str) and device.strip().lower() == AUTO:
        return torch.device(auto_device())
    avail = ", ".join(available_devices())
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise error(f"{name}: {str(device)!r} is not a device name (or auto); available: {avail}") from None
    kind = dev.type
    if kind == "cpu":
        if dev.index not in (None, 0):
            raise error(f"{name}: {str(device)!r}: this machine has 1 cpu device (torch counts every core as one "
                        "device), index 0; give cpu")
        return dev
    if kind == "meta":
        raise error(f"{name}: 'meta' tensors hold no data, so nothing can be computed there; available: {avail}")
    if kind not in ("cuda", "mps", "xpu"):
        raise error(f"{name}: {str(device)!r}: device type {kind!r} is not supported here; available: {avail}")
    n = _count(kind)
    if n == 0:
        built = {"cuda": torch.backends.cuda.is_built(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_built(),
                 "xpu": _backend("xpu") is not None}[kind]
        why = (f"PyTorch {torch.__version__} was built without {kind.upper()}" if not built
               else f"no {kind.upper()} device is visible on this machine")
        raise error(f"{name}: {str(device)!r} is not available ({why}); available: {avail}")
    if dev.index is not None and dev.index >= n:
        raise error(f"{name}: {str(device)!r}: this machine has {n} {kind} device(s), "
                    f"indices 0..{n - 1}; available: {avail}")
    return dev


def check_seed(seed: Any, name: str = "seed", error: type[MeaningfulPerturbationError] = ConfigError,
               *, low: int = SEED_MIN, span: int = 1) -> int:
    """``seed`` checked to be an int that ``torch.Generator.manual_seed`` accepts: in
    ``[low, 2**64 - span]`` (``span`` consecutive seeds ``seed .. seed + span - 1`` are used;
    ``low`` defaults to ``-2**63``).

    Raises:
        ConfigError (or ``error``): not an int, or out of that range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise error(f"{name}: expected an int, got {seed!r}")
    high = SEED_MAX - (span - 1)
    if not low <= seed <= high:
        raise error(f"{name}: expected an int in [{low}, {high}] (the range of a 64-bit random generator seed), "
                    f"got {seed}")
    return int(seed)
