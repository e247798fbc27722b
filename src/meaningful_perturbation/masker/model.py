"""A trained masker: the decoder, what it was trained for, and its file format.

File format (one ``.safetensors`` file, never a pickle): the decoder's state dict as tensors,
and in the safetensors header metadata ``format = "mperturb-masker"``, ``version = "1"``,
``config`` (JSON: layers, width, mask grid, mask blur) and ``fingerprint`` (JSON: see
:func:`~.net.classifier_fingerprint`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from ..core.mask import UpsampledMask
from ..errors import InputError, ModelError
from .net import FeatureTap, MaskerNet, check_fingerprint

__all__ = ["MaskerSpec", "Masker", "load_masker", "check_masker", "check_masker_setting", "FORMAT", "VERSION"]

FORMAT = "mperturb-masker"
VERSION = "1"
#: Largest masker file read (a masker is a small decoder: the demo's is ~100 kB).
MAX_MASKER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class MaskerSpec:
    """Architecture of a masker (stored in its file).

    Attributes:
        layers: classifier module names tapped, deepest first (paper §3: encoder features at
            several scales; the first one gets the class filter).
        channels: channels of each tapped layer's output.
        num_classes: classes of the classifier.
        input_size: ``(H, W)`` of the images it was trained on.
        width: decoder channels.
        mask_blur: Gaussian blur (image pixels) of the upsampled mask (as the 2017 mask, σm).
    """

    layers: tuple[str, ...]
    channels: tuple[int, ...]
    num_classes: int
    input_size: tuple[int, int]
    width: int = 32
    mask_blur: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MaskerSpec":
        d = json.loads(text)
        return cls(layers=tuple(d["layers"]), channels=tuple(int(c) for c in d["channels"]), num_classes=int(d["num_classes"]),
                   input_size=(int(d["input_size"][0]), int(d["input_size"][1])), width=int(d["width"]),
                   mask_blur=float(d["mask_blur"]))


@dataclass
class Masker:
    """A masking model bound to one classifier.

    Attributes:
        spec: architecture.
        net: the decoder (:class:`~.net.MaskerNet`).
        fingerprint: the classifier it was trained for (:func:`~.net.classifier_fingerprint`).
        info: free JSON-able facts for the model card (data, objective, steps, quality).
        source: where it was loaded from (path) or ``"<module>"``.
    """

    spec: MaskerSpec
    net: MaskerNet
    fingerprint: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "<module>"

    def mask_operator(self, grid: tuple[int, int]) -> UpsampledMask:
        return UpsampledMask(grid, tuple(self.spec.input_size), blur_sigma=self.spec.mask_blur)

    def masks(self, feats: list[torch.Tensor], classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep-masks from tapped features: ``(grid (N,1,1,h,w), full (N,1,1,H,W))`` in [0, 1]."""
        logits = self.net(feats, classes)  # (N, 1, h, w)
        grid = torch.sigmoid(logits).unsqueeze(1)  # (N, 1, 1, h, w)
        op = self.mask_operator(tuple(grid.shape[-2:]))
        return op(grid)

    def predict(self, model: nn.Module, x: torch.Tensor, classes: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Keep-masks ``(N, 1, H, W)`` in [0, 1] (1 = keep = evidence for the class) for
        images ``x`` ``(N, C, H, W)`` (normalised for ``model``) and classes ``(N,)``.

        One classifier pass (features, no gradients) and one decoder pass. ``model`` is used
        as found; :func:`meaningful_perturbation.explain` freezes it.

        Raises:
            InputError: ``x`` is not the masker's input size.
            ModelError: ``model`` is not the classifier the masker was trained for.
        """
        tap = FeatureTap(model, self.spec.layers, purpose=f"masker: {self.source!r} was trained for another classifier")
        out, feats = tap(x)
        if check:
            from ..core.head import unwrap_output

            out = unwrap_output(out)
            classes_out = out.shape[-1] if isinstance(out, torch.Tensor) else self.spec.num_classes
            check_fingerprint(self.fingerprint, model, classes_out, x.shape[-2:], where=repr(self.source))
        self.net.to(x.device)
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                _, full = self.masks(feats, classes.to(x.device))
        finally:
            self.net.train(was)
        return full[:, :, 0].float()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the masker atomically to ``path`` (``.safetensors``)."""
        from safetensors.torch import save_file

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"format": FORMAT, "version": VERSION, "config": self.spec.to_json(),
                "fingerprint": json.dumps(self.fingerprint, sort_keys=True), "info": json.dumps(self.info, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
            plain_file_mode(tmp)
        return path


def plain_file_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode of a file made by ``open()`` (0666 less the umask, 0644 usually):
    safetensors writes 0600, unlike every other output of the package."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_safetensors(path: str | os.PathLike, *, what: str, option: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with project errors for bad files.

    Raises:
        InputError: missing file, too large, or not a safetensors file (a pickle, a zip, ...).
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option}: file {str(p)!r} not found; expected a {what} (.safetensors)")
    size = p.stat().st_size
    if size > MAX_MASKER_BYTES:
        raise InputError(f"{option}: {str(p)!r} is {size} bytes, more than the {MAX_MASKER_BYTES} a {what} can be")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError / OSError for any bad header
        head = p.read_bytes()[:2]
        hint = " (it looks like a pickle, which is never loaded: save with safetensors)" if head[:1] == b"\x80" or head == b"PK" else ""
        raise InputError(f"{option}: {str(p)!r} is not a safetensors file{hint}; expected a {what} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from None
    return tensors, meta


def load_masker(path: str | os.PathLike, *, option: str = "masker") -> Masker:
    """Load a masker written by :meth:`Masker.save` (safetensors only, never a pickle).

    ``option`` names the argument in errors (``"--masker"`` from the CLI).

    Raises:
        InputError: missing or unreadable file, a folder (pass ``FOLDER/masker.safetensors``),
            a training checkpoint (pass the ``masker.safetensors`` beside it), not a
            safetensors file, or not a masker.
    """
    p = Path(path)
    if p.is_dir():
        hint = str(p / "masker.safetensors")
        raise InputError(f"{option}: {str(p)!r} is a folder; pass FOLDER/masker.safetensors ({hint!r})")
    tensors, meta = read_safetensors(path, what="masker written by train-masker", option=option)
    if meta.get("format") == "mperturb-masker-checkpoint":
        beside = p.with_name("masker.safetensors")
        raise InputError(f"{option}: {str(p)!r} is a training checkpoint, not a masker; pass the masker.safetensors "
                         f"beside it ({str(beside)!r}){'' if beside.is_file() else ', written when the training finishes (train-masker --resume)'}")
    if meta.get("format") != FORMAT:
        raise InputError(f"{option}: {str(path)!r} is a safetensors file but not a masker (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r}); train one with `mperturb train-masker`")
    if meta.get("version") != VERSION:
        raise InputError(f"{option}: {str(path)!r} has masker format version {meta.get('version')!r}; this version reads {VERSION!r}")
    try:
        spec = MaskerSpec.from_json(meta["config"])
        fingerprint = json.loads(meta["fingerprint"])
        info = json.loads(meta.get("info", "{}"))
        ok = (isinstance(fingerprint, dict) and isinstance(fingerprint.get("params_sha256"), str)
              and isinstance(fingerprint.get("classes"), int) and isinstance(fingerprint.get("layers"), list)
              and all(isinstance(v, str) for v in fingerprint["layers"]) and isinstance(fingerprint.get("input_size"), list)
              and len(fingerprint["input_size"]) == 2 and all(isinstance(v, int) for v in fingerprint["input_size"]))
        if not ok:
            raise ValueError("the classifier fingerprint is not {classes, input_size, layers, params_sha256}")
        if not isinstance(info, dict):
            raise ValueError("the info entry is not a JSON object")
        net = MaskerNet(spec.channels, spec.num_classes, spec.width)
        net.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, RecursionError) as e:
        raise InputError(f"{option}: {str(path)!r} has a damaged masker header or weights ({' '.join(str(e).split())[:200]})") from None
    net.eval()
    return Masker(spec, net, fingerprint, info, source=str(path))


def as_masker(value: Any, *, option: str = "masker") -> Masker:
    """A :class:`Masker` from a path, a :class:`Masker`, or ``"demo"`` (the shipped one)."""
    if isinstance(value, Masker):
        return value
    if value is None or value == "demo":
        from . import DEMO_MASKER_PATH

        return _cached(str(DEMO_MASKER_PATH), option)
    if isinstance(value, (str, os.PathLike)):
        return _cached(str(value), option)
    raise InputError(f"{option}: expected a path to a .safetensors masker, 'demo' or a Masker, got {type(value).__name__}")


_CACHE: dict[str, tuple[tuple[int, int], Masker]] = {}


def _cached(path: str, option: str = "masker") -> Masker:
    """Load once per file version (the runner calls explain once per batch)."""
    p = Path(path)
    try:
        st = p.stat()
        key = (st.st_mtime_ns, st.st_size)
    except OSError:
        key = (0, 0)
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    m = load_masker(path, option=option)
    _CACHE[path] = (key, m)
    return m


def check_masker(value: Any, model: Any, *, input_size: Any = None, option: str = "--masker") -> Masker:
    """Load ``value`` (as :func:`as_masker`) and check it against ``model`` once, before any
    image is explained: the tapped layers exist, their weights and the head's weights are the
    ones it was trained with, and (when given) ``input_size`` ``(H, W)`` or ``int`` is its
    training size. The CLI (``explain``, ``run``, ``benchmark``) calls it before writing.

    Raises:
        InputError: unreadable / not a masker (message names ``option``), or another input size.
        ModelError: a masker trained for another classifier (names the layer or head that differs).
    """
    masker = as_masker(value, option=option)
    if input_size is not None and isinstance(input_size, int):
        input_size = (input_size, input_size)
    if isinstance(model, nn.Module):
        try:
            check_fingerprint(masker.fingerprint, model, None, input_size, where=repr(masker.source),
                              option="--input-size" if option == "--masker" else option)
        except ModelError as e:
            text = str(e)
            raise ModelError(option + text[len("masker"):] if text.startswith("masker:") else text) from None
    return masker


def check_masker_setting(settings: Any, model: Any, prep: Any = None) -> None:
    """With ``--method masker``: check the masker against the loaded classifier (layers,
    weights, head, input size) once, before any output is written (``explain``, ``run``).

    Raises:
        InputError / ModelError: naming ``--masker`` (:func:`~meaningful_perturbation.masker.model.check_masker`).
    """
    if getattr(settings, "method", None) != "masker":
        return
    size = getattr(prep, "input_size", None) if prep is not None else None
    check_masker(settings.config.get("masker", "demo"), model, input_size=size, option="--masker")
