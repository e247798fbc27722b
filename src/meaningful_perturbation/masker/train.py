"""Training a masker (Dabkowski & Gal, "Real Time Image Saliency for Black Box
Classifiers", NeurIPS 2017, §3-4) against a frozen classifier.

For an image ``x``, a selected class ``c`` and the masker's keep-mask ``m = M(x, c)`` (1 =
keep), the objective is the paper's (§4)::

    L(m) = λ_tv·TV(m) + λ_area·AR(m)^p_area − log f_c(Φ(x, m)) + λ_del·f_c(Φ(x, 1 − m))^λ4

* ``Φ(x, m)`` is the project's perturbation (:mod:`~meaningful_perturbation.core.perturbation`):
  ``blend(levels, m)`` with the 2017 blur (σ0 = 10 px at 224) by default, so ``Φ(x, 1 − m)``
  deletes the region the masker selects and ``Φ(x, m)`` keeps only it;
* ``f_c`` is the class probability read through the classifier's head
  (:func:`~meaningful_perturbation.core.objective.class_probability`); the preservation term
  is ``−log f_c`` (paper §4) and the deletion term ``f_c^λ4`` with ``λ4 < 1`` (paper §4: a
  power below one keeps pushing small probabilities down);
* ``AR(m)`` is the mean of the mask (the preserved area) and ``TV`` the smoothness term,
  :func:`~meaningful_perturbation.core.objective.tv_term` (squared differences, paper §4);
* with ``score_floor`` the deletion score is floored at the probability of the fully
  perturbed image, as in the ``paper`` preset (see its ``score_floor`` note): deleting more
  than the evidence cannot go below that level, so it is not rewarded;
* *fake labels* (paper §4): with probability ``fake_rate`` the class fed to the masker is a
  random other class and only the area and smoothness terms apply, so the mask is empty for
  classes absent from the image (the class selector matters);
* optional distillation: ``distil · mean((m − t)²)`` towards teacher masks ``t`` of another
  method (a ``run:DIR`` data source).

The classifier is frozen (eval mode, ``requires_grad`` off; restored as found afterwards);
only the decoder learns. One step costs one feature pass (no gradients), one pass of the
fully perturbed images (no gradients, for the floor) and a forward+backward of the 2B kept
and deleted images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._atomic import atomic_path, atomic_write_text
from ..core.frozen import frozen
from ..core.head import LOGITS, Head, check_head_option, model_output, resolve_head, unwrap_output
from ..core.objective import Targets, class_probability, tv_term
from ..core.perturbation import blend
import warnings

from ..errors import ConfigError, InputError, MeaningfulPerturbationError, MeaningfulPerturbationWarning, ModelError
from ..methods.common import check_range, check_choice, perturbation_levels
from .data import _step_generator, check_source, data_source
from .model import Masker, MaskerSpec, plain_file_mode, read_safetensors
from .net import FeatureTap, MaskerNet, classifier_fingerprint

__all__ = ["TrainConfig", "train_masker", "masker_loss", "evaluate_masker", "TrainResult"]

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "masker.safetensors"
CARD = "MASKER_CARD.md"


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of masker training. Pixel lengths are given at ``reference_size``."""

    layers: tuple[str, ...] = ("features", "features.13", "features.9")  # the demo ShapeNet: 8, 16, 32 px maps at 64 px (paper §3: several encoder scales)
    width: int = 32  # decoder channels (small: the demo's decoder is ~40k parameters)
    steps: int = 1500  # optimiser steps (project choice: minutes on 2 CPU cores for the demo)
    batch_size: int = 32  # images per step (project choice)
    lr: float = 1e-3  # Adam learning rate (common default for a freshly initialised decoder)
    perturbation: str = "blur"  # Φ: paper §4 uses a blurred (or noise / constant) reference
    blur_sigma: float = 10.0  # σ0 = 10 px at 224, as the 2017 preset (Fong & Vedaldi §4.1)
    levels: int = 2  # Φ(x, m) = x·m + A·(1−m) (Dabkowski & Gal §4, a 2-level blend)
    mask_blur: float = 5.0  # σm = 5 px at 224 of the upsampled mask, as the 2017 preset (authors' code blur_mask=5)
    area: float = 2.0  # λ_area on mean(m) (project choice, see docs/masker.md; the paper tunes it per dataset)
    area_power: float = 1.0  # AR(m)^p (paper §4 allows a power; 1 = plain mean)
    tv: float = 2.0  # λ_tv on the mean squared differences of the mask grid (project choice)
    preserve: float = 1.0  # weight of −log f_c(Φ(x, m)) (paper §4: 1)
    delete: float = 2.0  # λ_del (paper §4 names it λ3; project choice)
    delete_power: float = 0.3  # λ4 = 0.3 (paper §4: a power below 1)
    score_floor: bool = True  # deletion floored at the fully perturbed score (as the paper preset, §4.3 of 2017)
    fake_rate: float = 0.2  # share of fake classes (paper §4 "fake labels"; project choice of the rate)
    distil: float = 0.0  # weight of mean((m − teacher)²) when the data gives teacher masks
    reference_size: int = 224  # pixel defaults above are for 224×224 inputs
    seed: int = 0  # every random draw (data, fake labels, init) derives from it
    checkpoint_every: int = 100  # steps between checkpoints

    def validate(self) -> None:
        if not isinstance(self.layers, tuple) or not self.layers or not all(isinstance(s, str) and s for s in self.layers):
            raise ConfigError(f"layers: expected one or more module names, deepest first, got {self.layers!r}")
        dup = sorted({s for s in self.layers if self.layers.count(s) > 1})
        if dup:
            raise ConfigError(f"layers: each module may be tapped once, got {', '.join(map(repr, dup))} more than once in {list(self.layers)}")
        check_range("width", self.width, 1, 1024, integer=True)
        check_range("steps", self.steps, 1, 10_000_000, integer=True)
        check_range("batch_size", self.batch_size, 1, 65536, integer=True)
        check_range("lr", self.lr, 0, low_open=True)
        check_choice("perturbation", self.perturbation, ("blur", "constant", "fade"))
        check_range("blur_sigma", self.blur_sigma, 0, low_open=True)
        check_range("levels", self.levels, 2, integer=True)
        check_range("mask_blur", self.mask_blur, 0)
        for name in ("area", "tv", "preserve", "delete", "distil"):
            check_range(name, getattr(self, name), 0)
        check_range("area_power", self.area_power, 0, low_open=True)
        check_range("delete_power", self.delete_power, 0, low_open=True)
        check_range("fake_rate", self.fake_rate, 0, 1)
        check_range("reference_size", self.reference_size, 1, integer=True)
        check_range("seed", self.seed, -(2**62), 2**62, integer=True)  # negative seeds as explain's --seed
        check_range("checkpoint_every", self.checkpoint_every, 1, integer=True)
        if not isinstance(self.score_floor, bool):
            raise ConfigError(f"score_floor: expected True or False, got {self.score_floor!r}")


@dataclass
class TrainResult:
    masker: Masker
    history: list[dict[str, float]]
    steps_run: int
    seconds: float
    quality: dict[str, float] | None
    out: Path | None
    new_steps: int = 0  # steps run by this call (0: a resumed training that was already complete)


def _levels(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return perturbation_levels(x, {"perturbation": cfg.perturbation, "blur_sigma": cfg.blur_sigma, "levels": cfg.levels,
                                   "reference_size": cfg.reference_size})


def masker_loss(model: Callable, masker: Masker, x: torch.Tensor, classes: torch.Tensor, fake: torch.Tensor, cfg: TrainConfig,
                feats: list[torch.Tensor], *, head: Head = LOGITS, teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective of one batch (module docstring), averaged over the batch.

    Args:
        x: ``(B, C, H, W)`` normalised images; ``classes``: ``(B,)`` long, the class fed to
            the masker; ``fake``: ``(B,)`` bool, True where that class is a fake label;
            ``feats``: the tapped features of ``x``; ``teacher``: ``(B, H, W)`` or None.

    Returns:
        ``(loss, terms)``: the scalar loss and each term's batch mean (floats, for logs).
    """
    b = x.shape[0]
    grid, full = masker.masks(feats, classes)  # (B,1,1,h,w), (B,1,1,H,W)
    levels = _levels(x, cfg)
    both = torch.cat([blend(levels, full), blend(levels, 1 - full)], dim=0).reshape(2 * b, *x.shape[1:])
    targets = Targets([[int(c)] for c in classes.tolist()] * 2, device=x.device)
    p = class_probability(unwrap_output(model(both)), targets, head)
    p_keep, p_del = p[:b], p[b:]
    real = (~fake).to(p.dtype)
    if cfg.score_floor:
        with torch.no_grad():
            floor = class_probability(unwrap_output(model(levels[:, 0])), Targets([[int(c)] for c in classes.tolist()], device=x.device), head)
        p_del = torch.maximum(p_del, floor)
    keep_term = -torch.log(p_keep.clamp_min(1e-6))
    del_term = p_del.clamp_min(1e-6) ** cfg.delete_power
    area = full.mean(dim=(1, 2, 3, 4)).clamp_min(1e-6) ** cfg.area_power
    tv = tv_term(grid, 2.0, isotropic=False)[:, 0]
    loss = cfg.area * area + cfg.tv * tv + real * (cfg.preserve * keep_term + cfg.delete * del_term)
    area_, tv_, keep_, del_, real_ = (t.detach() for t in (area, tv, keep_term, del_term, real))
    terms = {"area": float(area_.mean()), "tv": float(tv_.mean()), "preserve": float((keep_ * real_).sum() / real_.sum().clamp_min(1)),
             "delete": float((del_ * real_).sum() / real_.sum().clamp_min(1))}
    if teacher is not None and cfg.distil > 0:
        d = ((full[:, 0, 0] - teacher.to(full)) ** 2).mean(dim=(1, 2))
        loss = loss + cfg.distil * d * real
        terms["distil"] = float(d.detach().mean())
    loss = loss.mean()
    terms["loss"] = float(loss.detach())
    return loss, terms


def _draw_classes(labels: torch.Tensor, num_classes: int, rate: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    b = labels.shape[0]
    fake = (torch.rand(b, generator=g) < rate) if (rate > 0 and num_classes > 1) else torch.zeros(b, dtype=torch.bool)
    shift = torch.randint(1, max(num_classes, 2), (b,), generator=g)
    other = (labels + shift) % num_classes
    return torch.where(fake, other, labels), fake


def _save_checkpoint(path: Path, masker: Masker, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, history: list[dict[str, float]],
                     meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in masker.net.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for key, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"optim.{pid}.{key}"] = t.detach().cpu().contiguous()
    # The per-step terms as one float64 tensor (exact for Python floats; a JSON header would
    # grow past safetensors' header limit on long runs), their names in the header.
    names = list(history[0]) if history else []
    tensors["history"] = torch.tensor([[h.get(k, float("nan")) for k in names] for h in history], dtype=torch.float64).reshape(len(history), len(names))
    header = {"format": "mperturb-masker-checkpoint", "step": str(step), "config": json.dumps(_cfg_json(cfg), sort_keys=True),
              "param_groups": json.dumps(sd["param_groups"]), "history_terms": json.dumps(names), "spec": masker.spec.to_json(),
              "fingerprint": json.dumps(masker.fingerprint, sort_keys=True), "meta": json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        plain_file_mode(tmp)


def _cfg_json(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _load_checkpoint(path: Path, masker: Masker, opt: torch.optim.Optimizer, cfg: TrainConfig, data_desc: str) -> tuple[int, list[dict[str, float]], float]:
    tensors, meta = read_safetensors(path, what="masker training checkpoint", option="--resume")
    if meta.get("format") != "mperturb-masker-checkpoint":
        raise InputError(f"--resume: {str(path)!r} is not a masker training checkpoint (format {meta.get('format')!r})")
    saved = json.loads(meta["config"])
    now = _cfg_json(cfg)
    differ = [k for k in now if k not in ("steps", "checkpoint_every") and saved.get(k) != now[k]]
    if differ:
        raise ConfigError(f"--resume: the checkpoint was trained with other settings ({', '.join(f'{k}={saved.get(k)!r} vs {now[k]!r}' for k in differ)}); "
                          "resume with the same settings (only --steps may change) or start a new --out")
    old_meta = json.loads(meta.get("meta", "{}"))
    if old_meta.get("data") != data_desc:
        raise InputError(f"--resume: the checkpoint was trained on other data ({old_meta.get('data')!r}, now {data_desc!r}); "
                         "resume with the same --data (and file content), or start a new --out")
    if MaskerSpec.from_json(meta["spec"]) != masker.spec:
        raise InputError(f"--resume: the checkpoint's masker differs ({meta['spec']} vs {masker.spec.to_json()}: image size, "
                         "layers or classes); resume with the same --data size, --layers and --model, or start a new --out")
    if json.loads(meta["fingerprint"]) != masker.fingerprint:
        raise ModelError(f"--resume: {str(path)!r} was trained for another classifier (fingerprint differs)")
    masker.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    names = json.loads(meta["history_terms"])
    history = [dict(zip(names, row)) for row in tensors["history"].tolist()]
    return int(meta["step"]), history, float(old_meta.get("seconds", 0.0))


def evaluate_masker(masker: Masker, model: Callable, x: torch.Tensor, labels: torch.Tensor, gt: torch.Tensor, *, batch_size: int = 64) -> dict[str, float]:
    """Pointing game (15 px at 224, scaled) and rank accuracy of the masker's keep-masks on
    images with ground-truth masks, the mean mask area, and the classifier's accuracy on the
    same images (the quality lines of the model card)."""
    from ..metrics import pointing_game, rank_accuracy, scaled_tolerance

    sal = torch.cat([masker.predict(model, x[i : i + batch_size], labels[i : i + batch_size], check=False)[:, 0]
                     for i in range(0, x.shape[0], batch_size)])
    with torch.no_grad():
        pred = torch.cat([unwrap_output(model(x[i : i + batch_size])).argmax(-1) for i in range(0, x.shape[0], batch_size)])
    accuracy = float((pred.cpu() == labels.cpu()).double().mean())
    tol = scaled_tolerance(tuple(x.shape[-2:]))
    return {
        "n": int(x.shape[0]),
        "pointing_tol": float(pointing_game(sal, gt, tolerance=tol).accuracy),
        "pointing_exact": float(pointing_game(sal, gt, tolerance=0).accuracy),
        "rank_accuracy": float(rank_accuracy(sal, gt).mean()),
        "mean_mask_area": float(sal.mean()),
        "classifier_accuracy": accuracy,
    }


def train_masker(
    model: nn.Module,
    data: Any = "shapes",
    *,
    out: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = False,
    input_size: tuple[int, int] | None = None,
    eval_n: int = 64,
    classifier_name: str = "<module>",
    stop_after: int | None = None,
    device: str | torch.device = "cpu",
    head: str = "auto",
    overwrite: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train a masker for ``model`` (module docstring) and write it to ``out``.

    Args:
        model: the classifier (``nn.Module``, ``(N, C, H, W)`` → ``(N, classes)`` logits);
            frozen during training and left exactly as found.
        data: a data source (:mod:`.data`): ``"shapes"``, ``"npz:FILE"``, ``"run:DIR"``, a
            registered name, or an object with ``batch(step, size)``.
        out: folder for ``masker.safetensors``, ``checkpoint.safetensors`` (every
            ``checkpoint_every`` steps) and ``MASKER_CARD.md``; ``None`` writes nothing.
        config / overrides: :class:`TrainConfig` and field overrides.
        resume: continue from ``out/checkpoint.safetensors`` (same settings; ``steps`` may
            grow). A deterministic run resumed gives the masker an uninterrupted one gives.
        progress: tqdm bar over the steps.
        eval_n: held-out images for the card's quality line (when the data has ground truth).
        stop_after: stop after this many steps of this call (checkpoint written; for tests
            and time-boxed runs).
        head: how the classifier's output is read (as in :func:`~meaningful_perturbation.explain`;
            ``"auto"`` decides from the output on the first batch).
        overwrite: replace an earlier training in ``out`` (its ``masker.safetensors``,
            ``MASKER_CARD.md`` and ``checkpoint.safetensors`` are removed before the first step).

    The data is checked against the classifier before the first step (label range, the
    source's class count, channels, image size; see :func:`~.data.check_source`);
    ``layers`` not deepest first (by their maps' size) are sorted, with a warning, so the
    stored settings say what was trained. ``out`` is locked for the training (a second
    training into it is refused). Ctrl-C writes a checkpoint of the last finished step.
    ``--resume`` compares every setting but ``steps`` (and ``checkpoint_every``), the data
    (description, including an npz file's SHA-256) and the classifier; fewer steps than
    done are refused, as many returns the saved masker (``new_steps == 0``) untouched.

    Returns:
        :class:`TrainResult` (the masker, per-step term history, steps, seconds, quality).

    Raises:
        ConfigError: bad settings, distillation without teacher masks; InputError: bad data,
        ``--resume`` without a checkpoint or with other settings / data, a used ``out``;
        ModelError: a layer name not in the model.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    if isinstance(cfg.layers, list):
        cfg = dataclasses.replace(cfg, layers=tuple(cfg.layers))
    cfg.validate()
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module (its layers feed the masker), got {type(model).__name__}")
    device = torch.device(device)
    if classifier_name == "<module>":
        classifier_name = f"{type(model).__name__} (a Python module passed to train_masker)"
    src = data_source(data, seed=cfg.seed)
    has_teacher = getattr(src, "teacher", None) is not None
    if cfg.distil > 0 and not has_teacher:
        raise ConfigError(f"distil: {cfg.distil} needs teacher masks, and the data ({getattr(src, 'description', data)}) has "
                          "none; train on --data run:DIR (the folder of a `mperturb run --method paper|extremal`) or drop distil")
    if has_teacher and cfg.distil == 0:
        warnings.warn("distil: the data gives teacher masks but distil is 0, so they are ignored; pass --set distil=1 "
                      "(or another weight) to distil them", MeaningfulPerturbationWarning, stacklevel=2)
    outdir = Path(out) if out is not None else None
    lock = None
    if outdir is not None:
        if outdir.exists() and not outdir.is_dir():
            raise InputError(f"--out: {str(outdir)!r} exists and is not a folder; pass a folder path")
        existed = outdir.exists()
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out: cannot create folder {str(outdir)!r} ({e.strerror}); choose a writable --out") from None
        if not os.access(outdir, os.W_OK):
            raise InputError(f"--out: folder {str(outdir)!r} is not writable; choose a writable --out")
        from ..runner.owner import CONTROL, FolderLock

        made = [outdir / CONTROL] if not (outdir / CONTROL).exists() else []
        made += [] if existed else [outdir]  # only what this call creates is removed on a refusal
        lock = FolderLock(outdir, "train-masker.lock").acquire()
    try:
        return _train(model, src, data, cfg, outdir, resume, progress, input_size, eval_n, classifier_name, stop_after, device, head,
                      overwrite)
    except MeaningfulPerturbationError:
        if lock is not None and made:  # refused before writing: leave no empty folder or lock behind
            lock.release()
            lock = None
            with contextlib.suppress(OSError):
                (outdir / CONTROL / "train-masker.lock").unlink()
                for p in made:
                    p.rmdir()
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(model, src, data, cfg, outdir, resume, progress, input_size, eval_n, classifier_name, stop_after, device, head, overwrite):
    if resume and (outdir is None or not (outdir / CHECKPOINT).is_file()):
        raise InputError(f"--resume: no {CHECKPOINT} in {str(outdir)!r}; start without --resume")
    if not resume and not overwrite and outdir is not None and (outdir / CHECKPOINT).exists():
        raise InputError(f"--out: {str(outdir)!r} holds the {CHECKPOINT} of an earlier training; pass --resume to "
                         "continue it, --overwrite to replace it, or choose another --out")
    if not resume and not overwrite and outdir is not None:
        old = [n for n in (WEIGHTS, CARD) if (outdir / n).exists()]
        if old:
            raise InputError(f"--out: {str(outdir)!r} already holds {', '.join(old)} of an earlier training; pass --overwrite "
                             "to replace them, or choose another --out")
    t0 = time.perf_counter()
    with frozen(model):
        x0, y0, _ = src.batch(0, 2)
        x0 = x0.to(device)
        if input_size is not None and tuple(input_size) != tuple(x0.shape[-2:]):
            raise InputError(f"--input-size: the data gives {x0.shape[-2]}x{x0.shape[-1]} images, got {input_size[0]}x{input_size[1]}; "
                             f"train at that size with the data's own size option (e.g. --data shapes:{input_size[0]})")
        tap = FeatureTap(model, cfg.layers)
        try:
            logits0, feats0 = tap(x0)
        except RuntimeError as e:  # e.g. a conv refusing the channel count
            raise InputError(f"--data: the classifier cannot take the data's images of shape {tuple(x0.shape[1:])} "
                             f"({' '.join(str(e).split())[:160]})") from None
        out0 = model_output(logits0, x0.shape[0], where="model")
        num_classes = int(out0.shape[-1])
        check_source(src, num_classes)
        order = sorted(range(len(feats0)), key=lambda i: feats0[i].shape[-2] * feats0[i].shape[-1])
        if order != list(range(len(feats0))):  # deepest (smallest map) first, as MaskerNet needs
            layers = tuple(cfg.layers[i] for i in order)
            if not resume:
                warnings.warn(f"layers: expected deepest first (smallest feature map first); using {list(layers)}",
                              MeaningfulPerturbationWarning, stacklevel=3)
            cfg = dataclasses.replace(cfg, layers=layers)
            tap = FeatureTap(model, cfg.layers)
            feats0 = [feats0[i] for i in order]
        model_head = resolve_head(check_head_option(head), out0)
        size = tuple(input_size or x0.shape[-2:])
        scale = min(size) / cfg.reference_size
        spec = MaskerSpec(layers=cfg.layers, channels=tuple(int(f.shape[1]) for f in feats0), num_classes=num_classes,
                          input_size=(int(size[0]), int(size[1])), width=cfg.width, mask_blur=cfg.mask_blur * scale)
        with torch.random.fork_rng(devices=[]):  # the decoder's initial weights, without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            net = MaskerNet(spec.channels, num_classes, cfg.width).to(device)
        fingerprint = classifier_fingerprint(model, cfg.layers, num_classes, size)
        masker = Masker(spec, net, fingerprint, source=str(outdir / WEIGHTS) if outdir else "<module>")
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        history: list[dict[str, float]] = []
        start = 0
        earlier_seconds = 0.0
        data_desc = getattr(src, "description", str(data))
        if resume:
            start, history, earlier_seconds = _load_checkpoint(outdir / CHECKPOINT, masker, opt, cfg, data_desc)
            if start > cfg.steps:
                raise InputError(f"--steps: the checkpoint in {str(outdir)!r} already has {start} steps, got --steps {cfg.steps}; "
                                 f"pass --steps {start} or more")
            if start == cfg.steps and (outdir / WEIGHTS).is_file():
                from .model import load_masker

                done_masker = load_masker(outdir / WEIGHTS, option="--out")
                return TrainResult(done_masker, history, start, earlier_seconds, done_masker.info.get("quality"), outdir, new_steps=0)
        if overwrite and not resume and outdir is not None:
            # --overwrite: the earlier training's own files go once everything is checked, so that
            # its checkpoint can never be mistaken for this training's.
            for n in (WEIGHTS, CARD, CHECKPOINT):
                (outdir / n).unlink(missing_ok=True)
        end = cfg.steps if stop_after is None else min(cfg.steps, start + int(stop_after))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train-masker", unit="step", dynamic_ncols=True)
        net.train()
        done = start
        buffers: list[torch.Tensor] = []  # the masker's buffers (BatchNorm statistics) before the step in progress
        base_history = len(history)  # records of the steps before `start` (a resumed training)
        step = start
        try:
            for step in range(start, end):
                # A step interrupted after its forward pass has already moved the BatchNorm
                # statistics; the checkpoint must hold them as they were after step `done`.
                buffers = [b.detach().clone() for b in net.buffers()]
                g = _step_generator(cfg.seed + 1, step)
                x, labels, teacher = src.batch(step, cfg.batch_size)
                x, labels = x.to(device), labels.to(device)
                if tuple(x.shape[-2:]) != spec.input_size:
                    raise InputError(f"data: step {step} gave images of {tuple(x.shape[-2:])}, the masker's input size is {spec.input_size}")
                classes, fake = _draw_classes(labels.cpu(), num_classes, cfg.fake_rate, g)
                _, feats = tap(x)
                loss, terms = masker_loss(model, masker, x, classes.to(device), fake.to(device), cfg, feats, head=model_head,
                                          teacher=teacher.to(device) if teacher is not None else None)
                if not math.isfinite(float(loss.detach())):
                    raise ModelError(
                        f"train-masker: the loss became {float(loss.detach())} at step {step}; lower the learning rate "
                        f"(now {cfg.lr:g}: --set lr=...)"
                        + (" or check the teacher masks (non-finite or outside [0, 1]?)" if teacher is not None else "")
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = step + 1
                history.append({k: round(v, 6) for k, v in terms.items()})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", area=f"{terms['area']:.3f}")
                if outdir is not None and (done % cfg.checkpoint_every == 0 or done == end):
                    _save_checkpoint(outdir / CHECKPOINT, masker, opt, done, cfg, history,
                                     {"data": data_desc, "seconds": earlier_seconds + time.perf_counter() - t0})
        except KeyboardInterrupt:
            if buffers and done == step:  # interrupted before its update: undo its forward pass (resume redoes it)
                with torch.no_grad():
                    for b, saved in zip(net.buffers(), buffers):
                        b.copy_(saved)
            if len(history) < base_history + done - start:  # interrupted between the update and its record
                history.append({k: round(v, 6) for k, v in terms.items()})
            if outdir is not None and done > start:  # keep the finished steps
                _save_checkpoint(outdir / CHECKPOINT, masker, opt, done, cfg, history,
                                 {"data": data_desc, "seconds": earlier_seconds + time.perf_counter() - t0})
                import sys

                print(f"mperturb train-masker: interrupted after step {done} of {cfg.steps}; checkpoint written to "
                      f"{outdir / CHECKPOINT}; resume with --resume", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        net.eval()
        steps_run = len(history)
        quality = None
        ev = src.evaluation(eval_n) if (hasattr(src, "evaluation") and eval_n > 0 and steps_run == cfg.steps) else None
        if ev is not None:
            quality = evaluate_masker(masker, model, ev[0].to(device), ev[1].to(device), ev[2].to(device))
    seconds = earlier_seconds + time.perf_counter() - t0  # summed over the sessions of a resumed training
    masker.info = {"classifier": classifier_name, "head": model_head.kind, "data": data_desc, "config": _cfg_json(cfg),
                   "steps": steps_run, "final_terms": history[-1] if history else {}, "quality": quality, "seconds": round(seconds, 3)}
    if outdir is not None and steps_run == cfg.steps:
        masker.save(outdir / WEIGHTS)
        atomic_write_text(outdir / CARD, model_card(masker, seconds=seconds, history=history))
    return TrainResult(masker, history, steps_run, seconds, quality, outdir, new_steps=steps_run - start)


def quality_warnings(q: dict[str, float] | None) -> list[str]:
    """What is wrong with a measured quality (empty masks, no pointing, a mostly wrong classifier)."""
    if not q:
        return []
    out = []
    if q.get("mean_mask_area", 1.0) < 0.01:
        out.append(f"the masks are (almost) empty (mean area {q['mean_mask_area']:.4f}); lower --set area=... or train longer")
    if q.get("pointing_tol", 1.0) < 0.05 and q.get("rank_accuracy", 1.0) < 0.05:
        out.append("the masks miss the ground truth (pointing and rank accuracy ~0); the masker did not learn the evidence")
    if q.get("classifier_accuracy", 1.0) < 0.5:
        out.append(f"the classifier is right on only {q['classifier_accuracy']:.0%} of the data; the masks explain a mostly wrong "
                   "model (is --data the model's own kind of data?)")
    return out


def model_card(masker: Masker, *, seconds: float | None = None, history: list[dict[str, float]] | None = None, command: str | None = None) -> str:
    """MASKER_CARD.md text: classifier, data, objective weights, steps, measured quality."""
    info, spec, fp = masker.info, masker.spec, masker.fingerprint
    cfg = info.get("config", {})
    n_params = sum(p.numel() for p in masker.net.parameters())
    lines = [
        "# Masker card",
        "",
        "A real-time masking model (Dabkowski & Gal, NeurIPS 2017) trained by `meaningful-perturbation`:",
        "one forward pass gives a keep-mask (1 = evidence for the class) for the classifier below.",
        "Use: `explain(model, x, target, method=\"masker\", masker=PATH)` or",
        "`mperturb explain --method masker --masker PATH`.",
        "",
        "## Classifier",
        "",
        f"- spec: `{info.get('classifier', '<module>')}`",
        f"- classes: {fp['classes']}; input size: {fp['input_size'][0]}x{fp['input_size'][1]}",
        f"- tapped layers (deepest first): {', '.join(f'`{s}`' for s in fp['layers'])}",
        f"- SHA-256 of the tapped layers' weights: `{fp['params_sha256']}` (checked at every use)",
        *([f"- SHA-256 of the head `{fp.get('head')}` (the last layer with weights): `{fp['head_sha256']}` (checked too)"]
          if fp.get("head_sha256") else []),
        "",
        "## Data",
        "",
        f"- {info.get('data', '?')}",
        "",
        "## Objective (weights)",
        "",
        "`λ_area·AR(m)^p + λ_tv·TV(m) + preserve·(−log f_c(Φ(x,m))) + λ_del·max(f_c(Φ(x,1−m)), floor)^λ4`",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v!r} |" for k, v in cfg.items()]
    lines += ["", "## Training", "", f"- steps: {info.get('steps')} of batch {cfg.get('batch_size')}",
              f"- decoder parameters: {n_params:,}; mask grid: the resolution of `{spec.layers[-1]}`, upsampled "
              f"with σm = {spec.mask_blur:.2f} px"]
    if seconds is not None:
        lines.append(f"- wall time: {seconds / 60:.1f} min")
    if history:
        first, last = history[0], history[-1]
        lines.append(f"- loss: {first['loss']:.4f} at step 1 -> {last['loss']:.4f} at the last step "
                     f"(area {last['area']:.3f}, preserve {last['preserve']:.3f}, delete {last['delete']:.3f})")
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    q = info.get("quality")
    lines += ["", "## Measured quality", ""]
    if q:
        lines += [f"On {q['n']} held-out images with ground-truth masks (target = true class):", "",
                  "| pointing@tol | exact pointing | rank accuracy | mean mask area |", "|---|---|---|---|",
                  f"| {q['pointing_tol']:.3f} | {q['pointing_exact']:.3f} | {q['rank_accuracy']:.3f} | {q['mean_mask_area']:.3f} |"]
        if "classifier_accuracy" in q:
            lines += ["", f"The classifier classifies {q['classifier_accuracy']:.1%} of these images correctly."]
        lines += [f"\n**Warning:** {w}" for w in quality_warnings(q)]
    else:
        lines.append("Not measured (the data source has no held-out ground truth).")
    return "\n".join(lines) + "\n"
