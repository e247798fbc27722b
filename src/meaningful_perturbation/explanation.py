"""The result of :func:`meaningful_perturbation.explain`: plain data, saved without pickle."""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_open
from ._terminal import format_p
from .errors import InputError

__all__ = [
    "DEGENERATE_MIN_CHANGE",
    "DEGENERATE_SALIENCY_RANGE",
    "DEGENERATE_SCORE_FRACTION",
    "LOW_CONFIDENCE",
    "MAX_LOAD_BYTES",
    "NO_REGION_NOTE",
    "Explanation",
    "degenerate_reason",
    "low_confidence",
]

_FORMAT = "meaningful-perturbation/explanation"
_VERSION = 1

#: Default limit of :meth:`Explanation.load` on the array data it reads: 1 GiB, ~50x a batch of
#: 64 images x 3 areas at 224 x 224 (float32 masks are 38.5 MB). Checked from the ``.npy``
#: headers and the zip directory before any array is allocated.
MAX_LOAD_BYTES = 1 << 30

#: A saliency map whose range (max − min) is at most this is flat. Mask-learning saliency is a
#: mask (or a sum of K masks) in [0, 1] units, so 1e-6 is far below one 8-bit grey level (1/255);
#: for the baselines (arbitrary units) the range is compared with the map's largest magnitude.
DEGENERATE_SALIENCY_RANGE = 1e-6
#: A learned mask that moves the score by less than this fraction of what perturbing the whole
#: image does (|clean − perturbed|) found no region that matters: 1% of the available change.
DEGENERATE_SCORE_FRACTION = 0.01
#: A clean probability below this is a low-confidence prediction: with a softmax head the model
#: puts more than half its probability on other classes; with a sigmoid head it says the class
#: is more likely absent than present. Chosen over "below 2/C" (twice chance), which for 1000
#: ImageNet classes would flag only p < 0.002 and so almost never.
LOW_CONFIDENCE = 0.5
#: Changes of the target's probability smaller than this (0.1 percentage point, below the
#: 3-decimal precision the CLI prints) count as no change in the degenerate checks.
DEGENERATE_MIN_CHANGE = 1e-3
#: The words every output uses for a degenerate explanation.
NO_REGION_NOTE = "no region found that changes the score"

# Kinds of model head an explanation records (core/head.py HEADS without "auto").
_HEADS = ("logits", "probabilities", "sigmoid", "sigmoid-probabilities")


@dataclass
class Explanation:
    """Saliency maps, masks and the optimisation record for a batch of images.

    Attributes:
        saliency: ``(N, H, W)`` float tensor, higher = more important (``1 - m`` for the
            deletion game, ``m`` for preservation, the sum over the K areas for extremal).
        masks: ``(N, K, H, W)`` float tensor in [0, 1], 1 = keep the original pixel.
        target: one list of explained classes per image.
        history: name → ``(steps, N, K)`` tensor: ``loss``, ``score_<game>`` (the optimised
            class score per game) and each named regulariser (unweighted) at every step.
        scores: ``clean`` ``(N,)``, ``masked`` ``(N, K)`` and ``perturbed`` ``(N,)``: the
            probability of the target (read through ``head``) on the clean image, the image
            perturbed by the learned mask (the primary game's input; other games as
            ``masked_<game>``), and the fully perturbed image.
        method: preset name.
        config: the resolved configuration (plain JSON-able values).
        extra: method-specific plain data (e.g. ``areas``, ``steps_run``; the mask-learning
            presets store the run's ``seed``, which redraws their seeded perturbation with
            :func:`~meaningful_perturbation.methods.common.perturbed_input`).
        head: how the model's output was read as class scores: ``"logits"`` (softmax),
            ``"probabilities"``, ``"sigmoid"`` or ``"sigmoid-probabilities"``
            (see :mod:`meaningful_perturbation.core.head`). Files written before the option
            existed load as ``"logits"``.
        channel_masks: ``None``, or for channel attribution (``extremal-channels``) the
            ``(N, K, C)`` float keep-masks in [0, 1] over the ``C`` channels of the layer
            named in ``extra["layer"]`` (1 = channel kept); ``masks`` then holds the display
            maps. Optional in files: those without it load as ``None``.
    """

    saliency: torch.Tensor
    masks: torch.Tensor
    target: list[list[int]]
    history: dict[str, torch.Tensor] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    method: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    head: str = "logits"
    channel_masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.saliency.shape[0])

    def __repr__(self) -> str:
        """A short summary (shapes, method, head, targets, scores), never the tensors' values."""
        n = len(self)
        tg = ", ".join(str(t) for t in self.target[:3]) + (", ..." if n > 3 else "")
        parts = [
            f"method={self.method!r}",
            f"head={self.head!r}",
            f"images={n}",
            f"saliency={tuple(self.saliency.shape)}",
            f"masks={tuple(self.masks.shape)}",
            *([f"channel_masks={tuple(self.channel_masks.shape)}"] if self.channel_masks is not None else []),
            f"target=[{tg}]",
        ]
        clean = self.scores.get("clean")
        if clean is not None and clean.numel():
            parts.append(f"p_clean={[round(float(v), 3) for v in clean.reshape(-1)[:3]]}" + ("..." if clean.numel() > 3 else ""))
        if self.history:
            steps = next(iter(self.history.values())).shape[0]
            parts.append(f"steps={steps}, history={sorted(self.history)}")
        return f"Explanation({', '.join(parts)})"

    __str__ = __repr__

    def degenerate_reason(self, i: int = 0) -> str | None:
        """See :func:`degenerate_reason`."""
        return degenerate_reason(self, i)

    def __getitem__(self, i: int | slice) -> "Explanation":
        """The explanation of image ``i`` (or a slice of images), as a batch."""
        idx = slice(i, i + 1) if isinstance(i, int) else i
        if isinstance(i, int) and not -len(self) <= i < len(self):
            raise IndexError(f"explanation index {i} out of range for {len(self)} images")
        if isinstance(i, int) and i < 0:
            idx = slice(len(self) + i, len(self) + i + 1)
        return Explanation(
            saliency=self.saliency[idx],
            masks=self.masks[idx],
            target=self.target[idx],
            history={k: v[:, idx] for k, v in self.history.items()},
            scores={k: v[idx] for k, v in self.scores.items()},
            method=self.method,
            config=dict(self.config),
            extra=_slice_extra(self.extra, idx, len(self)),
            head=self.head,
            channel_masks=None if self.channel_masks is None else self.channel_masks[idx],
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` arrays with a JSON metadata entry (no pickle).

        The file is written to a temporary name and renamed, so a crash never leaves a
        half-written file under ``path``.

        Returns:
            The path written (``.npz`` appended when missing).
        """
        path = Path(path)
        if path.is_dir():
            raise InputError(f"path: {str(path)!r} is a folder; expected a file name such as "
                             f"{str(path / 'explanation.npz')!r}")
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "target": self.target,
            "config": self.config,
            "extra": self.extra,
            "head": self.head,
            "history": sorted(self.history),
            "scores": sorted(self.scores),
        }
        if self.channel_masks is not None:
            meta["channel_masks"] = True  # optional member (files without it load as None)
        arrays = {
            "saliency": self.saliency.detach().cpu().float().numpy(),
            "masks": self.masks.detach().cpu().float().numpy(),
            "__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        }
        if self.channel_masks is not None:
            arrays["channel_masks"] = self.channel_masks.detach().cpu().float().numpy()
        for k, v in self.history.items():
            arrays[f"history/{k}"] = v.detach().cpu().float().numpy()
        for k, v in self.scores.items():
            arrays[f"scores/{k}"] = v.detach().cpu().float().numpy()
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int = MAX_LOAD_BYTES) -> "Explanation":
        """Read a file written by :meth:`save`, checking it before trusting it.

        Only the members the format defines are read — ``__meta__``, ``saliency``, ``masks``,
        ``channel_masks`` when the metadata says ``"channel_masks": true``, and the ``history/<name>`` and ``scores/<name>`` arrays the metadata lists; anything
        else in the archive is never decompressed. Each array's ``.npy`` header is read
        first and checked (numeric dtype, the shape the format expects, data size equal to
        what the zip directory declares, the total within ``max_bytes``) before its data is
        allocated, so a forged header or a highly compressed member cannot exhaust memory.
        No pickle is ever loaded.

        Expected contents: metadata a UTF-8 JSON object (``format``, ``version``, ``method``
        str, ``target`` one list of int class indices per image, ``config`` and ``extra``
        objects, ``head`` one of the model-head kinds, ``history`` and ``scores`` lists of
        names); ``saliency`` float ``(N, H, W)``; ``masks`` float ``(N, K, H, W)``; each history
        array float ``(steps, N, K')``; the optional ``channel_masks`` float ``(N, K, C)``; each scores array float with first dimension ``N``.

        Args:
            path: the ``.npz`` file.
            max_bytes: the most bytes of array data read (default :data:`MAX_LOAD_BYTES`,
                1 GiB); raise it for a trusted file with very large batches.

        Returns:
            The :class:`Explanation`, arrays on the CPU.

        Raises:
            InputError: the file is missing, not a zip / ``.npz`` file, truncated or corrupt,
                not an explanation, or any member is missing, malformed, of the wrong dtype or
                shape, or too large; the message names the path and the member.
        """
        path = Path(path)
        where = f"path: '{path}'"
        if not path.exists():
            raise InputError(f"path: no explanation file at '{path}'")
        if path.is_dir():
            raise InputError(f"{where} is a folder, not an explanation .npz file")
        try:
            zf = zipfile.ZipFile(path)
        except PermissionError:
            raise InputError(f"{where}: cannot read the file (permission denied)") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
            raise InputError(
                f"{where} is not a readable explanation .npz file (not a zip archive, or "
                f"truncated or empty: {_one_line(e)})"
            ) from None
        with zf:
            reader = _MemberReader(zf, where, int(max_bytes))
            if "__meta__.npy" not in reader.infos:
                raise InputError(f"{where} is an .npz file but not an explanation (no metadata entry)")
            meta = _parse_meta(reader.read("__meta__", kinds="u", ndim=1), where)
            sal = reader.read("saliency", kinds="f", ndim=3, what="(N, H, W)")
            n, h, w = sal.shape
            masks = reader.read("masks", kinds="f", ndim=4, what=f"(N, K, H, W) = ({n}, K, {h}, {w})",
                                match={0: n, 2: h, 3: w})
            for name, arr in (("saliency", sal), ("masks", masks)):
                if not np.isfinite(arr).all():  # every method writes finite maps: a tampered or broken file
                    raise InputError(f"{where}: {name} contains NaN or inf values; expected finite values")
            if len(meta["target"]) != n:
                raise InputError(
                    f"{where}: metadata 'target' has {len(meta['target'])} entries but the "
                    f"saliency has {n} images"
                )
            history = {
                k: torch.from_numpy(reader.read(f"history/{k}", kinds="f", ndim=3,
                                                what=f"(steps, N, K) with N = {n}, K = {masks.shape[1]}",
                                                match={1: n, 2: masks.shape[1]}))
                for k in meta["history"]
            }
            scores = {
                k: torch.from_numpy(reader.read(f"scores/{k}", kinds="f", ndim=None,
                                                what=f"(N, ...) with N = {n}", match={0: n}))
                for k in meta["scores"]
            }
            channel_masks = None
            if meta.get("channel_masks") is True:
                channel_masks = torch.from_numpy(reader.read(
                    "channel_masks", kinds="f", ndim=3, what=f"(N, K, C) with N = {n}, K = {masks.shape[1]}",
                    match={0: n, 1: masks.shape[1]}))
            elif "channel_masks" in meta:
                raise InputError(f"{where}: metadata 'channel_masks' is {_short(meta['channel_masks'])}, expected true")
        return cls(
            saliency=torch.from_numpy(sal),
            masks=torch.from_numpy(masks),
            target=meta["target"],
            history=history,
            scores=scores,
            method=meta["method"],
            config=meta["config"],
            extra=meta["extra"],
            head=meta["head"],
            channel_masks=channel_masks,
        )


def degenerate_reason(ex: Explanation, i: int = 0) -> str | None:
    """Why explanation ``i`` of ``ex`` is degenerate (shows nothing), or ``None`` if it is not.

    An explanation is degenerate when (checked in this order):

    1. its saliency map is flat: ``max − min ≤`` :data:`DEGENERATE_SALIENCY_RANGE` (for a
       baseline, in arbitrary units: times the map's largest magnitude, or all zero);
    2. perturbing the *whole* image (``extremal-channels``: removing every channel) does not
       change the target's score (``|clean − perturbed| ≤`` :data:`DEGENERATE_MIN_CHANGE`): no
       region can; ``extremal-sweep``: its ``sufficient_area`` is NaN (the fully perturbed
       input already keeps ``keep_fraction`` of the clean score); ``extremal-channels``
       (preserve, dual): the clean score is not above the one with every channel removed;
    3. the learned mask moves the score by less than :data:`DEGENERATE_SCORE_FRACTION` of
       ``|clean − perturbed|`` (or less than :data:`DEGENERATE_MIN_CHANGE`): deletion game, ``|clean − masked|``; preservation game
       (and extremal, every area), ``|masked − perturbed|``.

    Checks 2–3 need ``scores["clean"]``, ``["masked"]`` and ``["perturbed"]`` (the
    mask-learning presets record them; the baselines record only ``clean``).

    Args:
        ex: an :class:`Explanation`; i: image index.

    Returns:
        A one-line reason starting with :data:`NO_REGION_NOTE`, or ``None``.
    """
    if isinstance(i, bool) or not isinstance(i, int) or not -len(ex) <= i < len(ex):
        raise InputError(f"degenerate_reason: image index {i!r} out of range for {len(ex)} images "
                         f"(expected an int in [{-len(ex)}, {len(ex)}))")
    s = ex.saliency[i].detach().float()
    s = torch.nan_to_num(s, nan=0.0)
    lo, hi = float(s.min()), float(s.max())
    baseline = "perturbed" not in ex.scores
    scale = max(abs(lo), abs(hi)) if baseline else 1.0
    if hi - lo <= DEGENERATE_SALIENCY_RANGE * scale:
        return f"{NO_REGION_NOTE} (the saliency map is flat: range {hi - lo:.2g})"
    if baseline or "masked" not in ex.scores or "clean" not in ex.scores:
        return None
    clean = float(ex.scores["clean"][i].reshape(-1)[0])
    perturbed = float(ex.scores["perturbed"][i].reshape(-1)[0])
    masked = ex.scores["masked"][i].reshape(-1).double()
    span = abs(clean - perturbed)
    channels = ex.method == "extremal-channels"
    whole = "removing every channel" if channels else "perturbing the whole image"
    if span <= DEGENERATE_MIN_CHANGE:
        return (f"{NO_REGION_NOTE} ({whole} changes it by {span:.2g}: "
                f"p {format_p(clean)} -> {format_p(perturbed)})")
    if "sufficient_area" in ex.scores and math.isnan(float(ex.scores["sufficient_area"][i].reshape(-1)[0])):
        keep = float(ex.config.get("keep_fraction", 0.9))
        return (f"{NO_REGION_NOTE} (the fully perturbed input already keeps {keep:.0%} of the clean score: "
                f"p {format_p(clean)} -> {format_p(perturbed)}; no sufficient area)")
    if channels and ex.config.get("game", "preserve") != "delete" and clean - perturbed <= DEGENERATE_MIN_CHANGE:
        return (f"{NO_REGION_NOTE} (every channel removed keeps it: p {clean:.3f} -> {perturbed:.3f}; "
                "no channel is needed to preserve it)")
    if ex.config.get("game", "delete") == "delete":
        moved = float((masked - clean).abs().max())
    else:
        moved = float((masked - perturbed).abs().max())
    if moved < max(DEGENERATE_SCORE_FRACTION * span, DEGENERATE_MIN_CHANGE):
        return (f"{NO_REGION_NOTE} (the mask moves it by {moved:.2g}; {whole} "
                f"moves it by {span:.2g})")
    return None


def low_confidence(p_clean: Any) -> bool:
    """True when the clean probability of the explained class(es) is below :data:`LOW_CONFIDENCE`.

    Args:
        p_clean: the ``scores["clean"]`` value of one image (a float in [0, 1]; for several
            target classes, the recorded sum), or ``None`` (then False).
    """
    if p_clean is None:
        return False
    try:
        p = float(p_clean)
    except (TypeError, ValueError):
        return False
    return not math.isnan(p) and p < LOW_CONFIDENCE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _MemberReader:
    """Reads single ``.npy`` members of an open zip, header first, within a byte budget."""

    def __init__(self, zf: zipfile.ZipFile, where: str, budget: int) -> None:
        self.zf = zf
        self.where = where
        self.budget = budget
        self.infos = {info.filename: info for info in zf.infolist()}

    def read(
        self, key: str, *, kinds: str, ndim: int | None, what: str = "", match: dict[int, int] | None = None
    ) -> np.ndarray:
        where = self.where
        info = self.infos.get(f"{key}.npy")
        if info is None:
            raise InputError(f"{where}: member {key!r} is missing (the metadata refers to it)")
        label = f"{where}: member {key!r}"
        try:
            with self.zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                header_len = f.tell()
                sizes = (1,) if kinds == "u" else (2, 4, 8)
                if dtype.hasobject or dtype.kind not in kinds or dtype.itemsize not in sizes:
                    expected = "uint8 bytes" if kinds == "u" else "a float array"
                    raise InputError(f"{label} has dtype {dtype}, expected {expected}")
                if ndim is not None and len(shape) != ndim:
                    raise InputError(f"{label} has shape {tuple(shape)}, expected {what or f'{ndim} dimensions'}")
                if ndim is None and len(shape) < 1:
                    raise InputError(f"{label} has shape {tuple(shape)}, expected {what}")
                for axis, size in (match or {}).items():
                    if shape[axis] != size:
                        raise InputError(f"{label} has shape {tuple(shape)}, expected {what}")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes != info.file_size - header_len:
                    raise InputError(
                        f"{label} is corrupt: its header declares shape {tuple(shape)} "
                        f"({nbytes} bytes) but the archive holds {info.file_size - header_len} bytes"
                    )
                if nbytes > self.budget:
                    raise InputError(
                        f"{label} needs {nbytes} bytes, over the {self.budget} still allowed by "
                        f"max_bytes (Explanation.load max_bytes=...; raise it for a trusted file)"
                    )
                self.budget -= nbytes
                buf = bytearray(nbytes)
                view = memoryview(buf)
                got = 0
                while got < nbytes:
                    k = f.readinto(view[got:])
                    if not k:
                        raise EOFError(f"data ends after {got} of {nbytes} bytes")
                    got += k
                if f.read(1):  # reaching the end also makes zipfile check the CRC
                    raise ValueError("data continues past the declared size")
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001  any damage (BadZipFile, zlib.error, tokenize.TokenError in
            # a forged header, RecursionError, MemoryError, unknown compression...) is the file's fault
            raise InputError(f"{label} is unreadable (truncated or corrupt: {_one_line(e)})") from None
        arr = np.frombuffer(buf, dtype=dtype)
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        return arr.reshape(shape, order="F" if fortran else "C")


_META_TYPES = {"method": str, "target": list, "config": dict, "history": list, "scores": list}


def _parse_meta(raw: np.ndarray, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: metadata is not UTF-8 text ({_one_line(e)})") from None
    except (ValueError, RecursionError) as e:  # RecursionError: nesting too deep
        raise InputError(f"{where}: metadata is not valid JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{where}: metadata is a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != _FORMAT:
        raise InputError(f"{where} has format {_short(meta.get('format'))}, expected {_FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= _VERSION:
        raise InputError(f"{where} has format version {_short(version)}; this library reads 1 to {_VERSION}")
    for key, typ in _META_TYPES.items():
        if key not in meta:
            raise InputError(f"{where}: metadata has no {key!r} entry")
        if not isinstance(meta[key], typ):
            raise InputError(
                f"{where}: metadata {key!r} is a {type(meta[key]).__name__}, expected a {typ.__name__}"
            )
    meta.setdefault("extra", {})
    if not isinstance(meta["extra"], dict):
        raise InputError(f"{where}: metadata 'extra' is a {type(meta['extra']).__name__}, expected a dict")
    meta.setdefault("head", "logits")  # files written before heads existed
    if meta["head"] not in _HEADS:
        raise InputError(f"{where}: metadata 'head' is {meta['head']!r}, expected one of {', '.join(_HEADS)}")
    for key in ("history", "scores"):
        names = meta[key]
        if not all(isinstance(k, str) and k for k in names) or len(set(names)) != len(names):
            raise InputError(f"{where}: metadata {key!r} must list distinct non-empty names, got {names!r}")
    target = meta["target"]
    ok = all(
        isinstance(t, list) and t and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in t)
        for t in target
    )
    if not ok:
        raise InputError(
            f"{where}: metadata 'target' must be one non-empty list of class indices (int >= 0) "
            f"per image, got {_short(target)}"
        )
    return meta


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: ``extra`` entries that describe the run, not one image: never sliced by image (a list of
#: K areas is not a per-image list even when K equals the number of images).
_RUN_EXTRA = frozenset({"areas", "mask_area"})


def _slice_extra(extra: dict[str, Any], idx: slice, n: int) -> dict[str, Any]:
    out = {}
    for k, v in extra.items():
        out[k] = v[idx] if isinstance(v, list) and len(v) == n and k not in _RUN_EXTRA else v
    return out
