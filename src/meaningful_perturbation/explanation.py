"""The result of :func:`meaningful_perturbation.explain`: plain data, saved without pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_open
from .errors import InputError

__all__ = ["Explanation"]

_FORMAT = "meaningful-perturbation/explanation"
_VERSION = 1


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

    def __len__(self) -> int:
        return int(self.saliency.shape[0])

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
        arrays = {
            "saliency": self.saliency.detach().cpu().float().numpy(),
            "masks": self.masks.detach().cpu().float().numpy(),
            "__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        }
        for k, v in self.history.items():
            arrays[f"history/{k}"] = v.detach().cpu().float().numpy()
        for k, v in self.scores.items():
            arrays[f"scores/{k}"] = v.detach().cpu().float().numpy()
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Explanation":
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(f"path: no explanation file at '{path}'") from None
        except (ValueError, OSError) as e:
            raise InputError(f"path: '{path}' is not a readable explanation .npz file ({e})") from None
        if "__meta__" not in data:
            raise InputError(f"path: '{path}' is an .npz file but not an explanation (no metadata entry)")
        meta = json.loads(bytes(data["__meta__"]).decode("utf-8"))
        if meta.get("format") != _FORMAT:
            raise InputError(f"path: '{path}' has format {meta.get('format')!r}, expected {_FORMAT!r}")
        return cls(
            saliency=torch.from_numpy(data["saliency"]),
            masks=torch.from_numpy(data["masks"]),
            target=meta["target"],
            history={k: torch.from_numpy(data[f"history/{k}"]) for k in meta["history"]},
            scores={k: torch.from_numpy(data[f"scores/{k}"]) for k in meta["scores"]},
            method=meta["method"],
            config=meta["config"],
            extra=meta.get("extra", {}),
            head=str(meta.get("head", "logits")),
        )


def _slice_extra(extra: dict[str, Any], idx: slice, n: int) -> dict[str, Any]:
    out = {}
    for k, v in extra.items():
        out[k] = v[idx] if isinstance(v, list) and len(v) == n else v
    return out
