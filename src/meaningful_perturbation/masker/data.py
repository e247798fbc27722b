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

__all__ = ["check_source", "known_sources", "GroundTruthSource", "ShapesSource", "ArraySource", "RunFolderSource", "register_data_source", "data_source", "DATA_SOURCES"]


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

    def __init__(self, make: Callable[..., Any], size: int = 64, seed: int = 0, name: str = "generated",
                 num_classes: int | None = None) -> None:
        if not 8 <= int(size) <= 4096:
            raise InputError(f"--data: {name} image size must be 8..4096 px, got {size}")
        self.make, self.size, self.seed = make, int(size), int(seed)
        self.num_classes = num_classes  # the family's class count (checked against the classifier's), None = unknown
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

        from ..data import CLASSES

        super().__init__(make_shape_evidence, size, seed, "ShapeEvidence", len(CLASSES))


class ArraySource:
    """Batches sampled (with a per-step generator) from arrays in memory or an ``.npz`` file."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
                 *, seed: int = 0, description: str = "arrays", holdout: int = 0) -> None:
        _check_arrays(images, labels, masks, teacher)
        n = images.shape[0]
        self.holdout = min(int(holdout), n - 1) if masks is not None else 0
        self.images, self.labels = images.float(), labels.long()
        self.masks, self.teacher = (masks.bool() if masks is not None else None), teacher
        import hashlib

        h = hashlib.sha256()  # the content, so --resume notices other data under the same name
        for t in (self.images, self.labels, self.masks, self.teacher):
            if t is not None:
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        self.content_sha256 = h.hexdigest()
        self.seed, self.description = int(seed), f"{description} ({n} images, content SHA-256 {self.content_sha256[:16]})"
        self.num_classes = None  # arrays: only the label range is checked (a subset of the classes is fine)

    @classmethod
    def from_npz(cls, path: str, *, seed: int = 0) -> "ArraySource":
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--data: file {path!r} not found; expected an .npz with 'images' and 'labels'")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            # numpy's own text for a non-npz file suggests allow_pickle=True, which is never done here
            why = "not a zip of .npy arrays" if ("pickle" in str(e) or isinstance(e, (OSError, EOFError))) else ' '.join(str(e).split())[:160]
            raise InputError(f"--data: {path!r} is not a readable .npz of plain arrays ({why}); expected a file written "
                             "by numpy.savez with arrays 'images' (N, C, H, W) float and 'labels' (N,) int") from None
        missing = [k for k in ("images", "labels") if k not in arrays]
        if missing:
            raise InputError(f"--data: {path!r} lacks {', '.join(missing)}; expected arrays 'images' (N, C, H, W) and 'labels' (N,)")
        for k, a in arrays.items():
            if a.dtype.kind not in "biuf":
                raise InputError(f"--data: {path!r}: array {k!r} has dtype {a.dtype}; expected numbers (images float, labels int, masks bool/0-1)")
        masks = torch.from_numpy(arrays["masks"]) if "masks" in arrays else None
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
        self.teacher_model = _run_model(root)  # (spec, weights) the run explained, or None
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


def _run_model(root: Path) -> tuple[str, str | None] | None:
    """``(model spec, weights)`` recorded in a run folder's ``settings.json``, or ``None`` when
    the folder has none (or an unreadable one: the items are still usable)."""
    path = root / "settings.json"
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        settings = json.loads(path.read_text(encoding="utf-8"))["compared"]["settings"]
        model, weights = settings["model"], settings.get("weights")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(model, str) or not (weights is None or isinstance(weights, str)):
        return None
    return model, weights


def _check_arrays(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None, teacher: torch.Tensor | None) -> None:
    """Refuse training arrays that would fail (or train on garbage) later: shapes, dtypes,
    finite pixels, labels >= 0, masks matching the images. Raises :class:`InputError` naming ``--data``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(f"--data: expected images (N, C, H, W), got shape {tuple(getattr(images, 'shape', ()))}")
    n, c, h, w = images.shape
    if n < 1:
        raise InputError("--data: expected at least one image, got 0")
    if c > 4 and w in (1, 3, 4):
        raise InputError(f"--data: images of shape {tuple(images.shape)} look channels-last (N, H, W, C); expected (N, C, H, W): "
                         "transpose them with images.transpose(0, 3, 1, 2)")
    if not images.is_floating_point():
        raise InputError(f"--data: images have dtype {images.dtype}; expected float images already normalised for the classifier")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise InputError(f"--data: images hold {bad} NaN or infinite value(s); expected finite normalised pixels")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (n,):
        raise InputError(f"--data: expected labels (N,) = ({n},), got shape {tuple(getattr(labels, 'shape', ()))}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        if labels.dtype == torch.bool or not torch.equal(labels, labels.round()):
            raise InputError(f"--data: labels have dtype {labels.dtype}; expected integer class indices")
    if int(labels.min()) < 0:
        raise InputError(f"--data: labels must be class indices >= 0, got {int(labels.min())}")
    if masks is not None and tuple(masks.shape) != (n, h, w):
        raise InputError(f"--data: expected masks (N, H, W) = ({n}, {h}, {w}) matching the images, got {tuple(masks.shape)}")
    if teacher is not None and tuple(teacher.shape) != (n, h, w):
        raise InputError(f"--data: expected teacher masks (N, H, W) = ({n}, {h}, {w}), got {tuple(teacher.shape)}")


def check_source(src: Any, num_classes: int, *, channels: int | None = None, input_size: tuple[int, int] | None = None) -> None:
    """Check a data source against the classifier before training: label range, the source's
    class count (when it states one), channels and image size of its arrays.

    Raises:
        InputError: naming ``--data``, what the classifier expects and what the data holds.
    """
    labels = getattr(src, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.numel() and int(labels.max()) >= num_classes:
        raise InputError(f"--data: label {int(labels.max())} is out of range for a classifier with {num_classes} classes "
                         f"(expected 0..{num_classes - 1}); train on data labelled for this model")
    k = getattr(src, "num_classes", None)
    if k is not None and int(k) != int(num_classes):
        raise InputError(f"--data: {getattr(src, 'description', 'the data')} has {k} classes, the classifier outputs {num_classes}; "
                         "train on data of the model's own classes (e.g. --model demo:textures with --data textures)")
    images = getattr(src, "images", None)
    if isinstance(images, torch.Tensor) and channels is not None and images.shape[1] != channels:
        raise InputError(f"--data: images have {images.shape[1]} channel(s), the classifier takes {channels}")
    if isinstance(images, torch.Tensor) and input_size is not None and tuple(images.shape[-2:]) != tuple(input_size):
        raise InputError(f"--data: images are {images.shape[-2]}x{images.shape[-1]}, the requested input size is "
                         f"{input_size[0]}x{input_size[1]}")


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


def known_sources() -> list[str]:
    """Every ``--data`` form: the registered sources and the ground-truth families."""
    usage = {"shapes": "shapes[:SIZE]", "npz": "npz:FILE", "run": "run:DIR"}
    names = [usage.get(k, f"{k}[:ARG]") for k in DATA_SOURCES]
    try:
        from ..data import families

        names += [f"{k}[:SIZE]" for k in getattr(families, "FAMILIES", {}) if k not in DATA_SOURCES]
    except ImportError:
        pass
    return names


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
            classes = getattr(family, "classes", None)
            return GroundTruthSource(family.make, int(arg) if arg else 64, seed, getattr(family, "title", name),
                                     len(classes) if classes is not None else None)
        raise InputError(f"--data: unknown source {name!r}; expected one of {', '.join(known_sources())}")
    if name == "shapes" and arg and not arg.isdigit():
        raise InputError(f"--data: shapes takes an image size, e.g. shapes:64, got {spec!r}")
    return DATA_SOURCES[name](arg or None, seed=seed, preprocessing=preprocessing)
