"""Training data for maskers: named, generic sources of normalised image batches.

A *data source* is any object with ``batch(step, size) -> (x, labels, teacher)``:
``x`` ``(B, C, H, W)`` normalised for the classifier, ``labels`` ``(B,)`` long (the class to
explain), ``teacher`` ``(B, H, W)`` target masks in [0, 1] for distillation or ``None``. The
batch of a step depends only on ``(seed, step)``, so a resumed training sees exactly the
batches an uninterrupted one would. Optionally ``evaluation(n)`` returns
``(x, labels, gt_masks)`` held-out images with ground-truth masks for the model card.

Built in (``--data`` of ``mperturb train-masker``):

``shapes[:SIZE]``  ShapeEvidence (:mod:`meaningful_perturbation.data.shapes`), fresh images
                   every step from the ``train`` split, evaluation on the ``test`` split.
``npz:FILE``       arrays ``images`` ``(N, C, H, W)`` float (already normalised) and
                   ``labels`` ``(N,)`` int, optionally ``masks`` ``(N, H, W)`` (ground truth
                   for evaluation); read with ``allow_pickle=False``.
``run:DIR``        distillation: the images and masks of a ``mperturb run`` folder
                   (``paper`` / ``extremal`` ...), see :class:`RunFolderSource`.

``NAME[:SIZE]``     any ground-truth family of ``meaningful_perturbation.data.families``
                   (where present, e.g. ``textures``), as ``shapes``.

Other sources register a factory with :func:`register_data_source` (one line), after which
``--data NAME[:ARG]`` trains on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError

__all__ = ["GroundTruthSource", "ShapesSource", "ArraySource", "RunFolderSource", "register_data_source", "data_source", "DATA_SOURCES"]


def _step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63))
    return g


class GroundTruthSource:
    """A generated ground-truth family: ``make(n, size=, split=, seed=)`` returning an object
    whose ``to_tensors()`` has ``images`` (normalised), ``labels`` and ``masks`` (the
    interface of :func:`~meaningful_perturbation.data.make_shape_evidence`). Training draws
    fresh ``"train"`` images at every step; the card's quality uses the ``"test"`` split.

    A second family with the same interface trains with one line::

        register_data_source("textures", lambda arg, *, seed, preprocessing=None:
                             GroundTruthSource(make_textures, int(arg or 64), seed, "textures"))
    """

    def __init__(self, make: Callable[..., Any], size: int = 64, seed: int = 0, name: str = "generated") -> None:
        self.make, self.size, self.seed = make, int(size), int(seed)
        self.description = f"{name} train split, {self.size} px, fresh images every step (seed {self.seed})"

    def batch(self, step: int, size: int):
        t = self.make(int(size), size=self.size, split="train", seed=(self.seed * 100_003 + int(step)) % (2**31)).to_tensors()
        return t.images, t.labels.long(), None

    def evaluation(self, n: int):
        t = self.make(int(n), size=self.size, split="test", seed=7).to_tensors()
        return t.images, t.labels.long(), t.masks.bool()


class ShapesSource(GroundTruthSource):
    """ShapeEvidence images, ``size`` px, a fresh draw of the train split at every step."""

    def __init__(self, size: int = 64, seed: int = 0) -> None:
        from ..data import make_shape_evidence

        super().__init__(make_shape_evidence, size, seed, "ShapeEvidence")


class ArraySource:
    """Batches sampled (with a per-step generator) from arrays in memory or an ``.npz`` file."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
                 *, seed: int = 0, description: str = "arrays", holdout: int = 0) -> None:
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise InputError(f"data: expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
        n = images.shape[0]
        self.holdout = min(int(holdout), n - 1) if masks is not None else 0
        self.images, self.labels = images.float(), labels.long()
        self.masks, self.teacher = masks, teacher
        self.seed, self.description = int(seed), description

    @classmethod
    def from_npz(cls, path: str, *, seed: int = 0) -> "ArraySource":
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--data: file {path!r} not found; expected an .npz with 'images' and 'labels'")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise InputError(f"--data: {path!r} is not a readable .npz of plain arrays ({' '.join(str(e).split())[:160]})") from None
        missing = [k for k in ("images", "labels") if k not in arrays]
        if missing:
            raise InputError(f"--data: {path!r} lacks {', '.join(missing)}; expected arrays 'images' (N, C, H, W) and 'labels' (N,)")
        masks = torch.from_numpy(arrays["masks"]).bool() if "masks" in arrays else None
        return cls(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), masks, seed=seed,
                   description=f"arrays from {p.name}", holdout=min(64, len(arrays["labels"]) // 5))

    def batch(self, step: int, size: int):
        n = self.images.shape[0] - self.holdout
        idx = torch.randint(0, n, (int(size),), generator=_step_generator(self.seed, step))
        teacher = self.teacher[idx] if self.teacher is not None else None
        return self.images[idx], self.labels[idx], teacher

    def evaluation(self, n: int):
        if self.masks is None or self.holdout == 0:
            return None
        lo = self.images.shape[0] - self.holdout
        return self.images[lo:][:n], self.labels[lo:][:n], self.masks[lo:][:n]


class RunFolderSource(ArraySource):
    """Images and teacher masks from a ``mperturb run`` folder, for distillation.

    Every finished item of ``results*.jsonl`` gives the image file (``file``), its target
    (the first class) and ``items/<id>.npz`` (an :class:`~meaningful_perturbation.Explanation`,
    read with :meth:`~meaningful_perturbation.Explanation.load`); the teacher mask is the
    saliency scaled to [0, 1] per image (for ``paper`` deletion masks, ``1 − m``: the deleted
    evidence; for ``extremal``, the preserved area). Images are read and preprocessed with
    ``preprocessing`` (the classifier's), and must come out at the saliency's size.
    """

    def __init__(self, folder: str, preprocessing: Any, *, seed: int = 0) -> None:
        from ..explanation import Explanation
        from ..io import load_image, preprocess

        root = Path(folder)
        files = sorted(root.glob("results*.jsonl"))
        if not files:
            raise InputError(f"--data: {folder!r} has no results*.jsonl; expected a folder written by `mperturb run`")
        xs, ys, ts = [], [], []
        for f in files:
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed run
                npz = root / rec.get("files", {}).get("npz", "")
                if not rec.get("file") or not npz.is_file():
                    continue
                ex = Explanation.load(npz)
                x, _ = preprocess(load_image(rec["file"]), preprocessing)
                s = ex.saliency[0].float()
                if tuple(s.shape) != tuple(x.shape[-2:]):
                    raise InputError(f"--data: item {npz.name}: saliency {tuple(s.shape)} and image {tuple(x.shape[-2:])} differ; "
                                     "run the teacher with the classifier's own input size")
                s = s - s.min()
                ts.append(s / s.max().clamp_min(1e-12))
                xs.append(x)
                ys.append(int(rec["target"][0]))
        if not xs:
            raise InputError(f"--data: {folder!r} holds no finished items with their .npz")
        super().__init__(torch.stack(xs), torch.tensor(ys), None, torch.stack(ts), seed=seed,
                         description=f"{len(xs)} images of the run folder {root.name} (teacher masks: {files[0].name})")


DATA_SOURCES: dict[str, Callable[..., Any]] = {}


def register_data_source(name: str, factory: Callable[..., Any]) -> None:
    """``factory(arg: str | None, *, seed: int, preprocessing) -> source`` for ``--data name[:arg]``."""
    DATA_SOURCES[name] = factory


register_data_source("shapes", lambda arg, *, seed, preprocessing=None: ShapesSource(int(arg) if arg else 64, seed))
register_data_source("npz", lambda arg, *, seed, preprocessing=None: ArraySource.from_npz(arg or "", seed=seed))
register_data_source("run", lambda arg, *, seed, preprocessing=None: RunFolderSource(arg or "", preprocessing, seed=seed))


def _family(name: str) -> Any:
    """The ground-truth family ``name`` of ``meaningful_perturbation.data.families`` (a table of
    generators with ShapeEvidence's interface, where the package has one), else ``None``."""
    try:
        from ..data import families
    except ImportError:
        return None
    return getattr(families, "FAMILIES", {}).get(name)


def data_source(spec: Any, *, seed: int = 0, preprocessing: Any = None):
    """A data source from ``spec``: an object with ``batch`` (returned as is) or ``"NAME[:ARG]"``.

    Raises:
        InputError: unknown name (the message lists the registered ones) or a bad argument.
    """
    if hasattr(spec, "batch"):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"data: expected a source name ({', '.join(DATA_SOURCES)}) or an object with batch(step, size), got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    if name not in DATA_SOURCES:
        family = _family(name)
        if family is not None:  # a ground-truth family of meaningful_perturbation.data.families
            if arg and not arg.isdigit():
                raise InputError(f"--data: {name} takes an image size, e.g. {name}:64, got {spec!r}")
            return GroundTruthSource(family.make, int(arg) if arg else 64, seed, getattr(family, "title", name))
        raise InputError(f"--data: unknown source {name!r}; expected one of {', '.join(f'{k}[:ARG]' for k in DATA_SOURCES)}")
    if name == "shapes" and arg and not arg.isdigit():
        raise InputError(f"--data: shapes takes an image size, e.g. shapes:64, got {spec!r}")
    return DATA_SOURCES[name](arg or None, seed=seed, preprocessing=preprocessing)
