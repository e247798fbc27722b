"""Train and evaluate a demo :class:`ShapeNet` on a ground-truth family (DESIGN.md §4):
ShapeEvidence (``--family shapes``, the default) or TextureEvidence (``--family textures``).

Command line (see ``python -m meaningful_perturbation.demo train --help``)::

    python -m meaningful_perturbation.demo train --out shapes_cnn.safetensors
    python -m meaningful_perturbation.demo train --family textures   # textures_cnn.safetensors

Both families use the same recipe below; where it says "shape", read "evidence patch" for
textures. The only family-specific step is the dihedral augmentation: shape classes are
invariant to flips and 90° rotations, a texture's orientation class is permuted by them
(:data:`~meaningful_perturbation.data.textures.FLIP_PERMUTATION`), so the label is moved
with the image.

Recipe (everything seeded; same machine + thread count → the same weights):

* data: ``--n`` images of the ``"train"`` split at 64 px (train-split photos + procedural
  backgrounds), drawn once from ``--seed``;
* augmentation, all label-preserving: random flips and 90° rotations (every class is
  invariant to them), and — because the model will be explained by blurring / masking its
  input — on a random share of the images the *background* is perturbed under a random
  smooth mask (Gaussian blur, mean colour or noise) while the class shape and a small
  margin around it are kept, so the model learns that the evidence is the shape and that
  perturbation artefacts elsewhere are no evidence;
* *blank* images: a share of the images is replaced by its counterfactual (the same picture
  with the shape never drawn) with the **uniform** distribution as target, so that "no class
  shape" means "no evidence for any class" (near-uniform softmax, equal logits). Without
  this the model picks a default class for shape-free inputs (trained without blanks it
  answered "triangle" on 88% of the counterfactuals, with mean max-probability 0.45), and a
  preservation-game explanation of that class would not need the shape at all;
* AdamW, one-cycle learning rate, cross-entropy with light label smoothing;
* evaluation on a fresh draw of the ``"test"`` split (held-out photos) and on its
  counterfactuals (shape never drawn), which must fall to chance (1/6) if the label lives
  only in the shape, and on images whose shape alone is blurred (σ = 10 px at 224 px, the
  2017 paper's blur; what the deletion game does). Because the blanks above teach the
  model to be uncertain on shape-free images, the leakage test proper is the ablation
  ``--blank-prob 0`` (also reported in the model card): a model that never saw a
  counterfactual still scores chance on them.

This module is an edge of the package: it prints (tqdm) and writes files.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import get_family, normalize
from .model import ShapeNet

__all__ = ["TrainConfig", "train", "evaluate", "save_weights", "main_train"]

DEFAULT_OUT = Path(__file__).with_name("shapes_cnn.safetensors")
#: Shipped weights and metrics file of each family (the metrics JSON sits beside the weights).
FAMILY_FILES: dict[str, tuple[str, str]] = {
    "shapes": ("shapes_cnn.safetensors", "metrics.json"),
    "textures": ("textures_cnn.safetensors", "textures_metrics.json"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe; defaults are the ones the shipped weights were trained with."""

    n: int = 20000  # training images (train split)
    epochs: int = 6
    seed: int = 0
    size: int = 64  # DEMO_PREPROCESSING["input_size"]
    batch_size: int = 64
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    blank_prob: float = 0.15  # share of images replaced by their counterfactual, target uniform
    perturb_prob: float = 0.4  # share of images whose background is perturbed (after ramp-up)
    perturb_ramp: float = 0.4  # fraction of training over which perturb_prob ramps up from 0
    eval_n: int = 2000  # test-split images for the reported accuracy
    eval_seed: int = 1000
    threads: int = 1  # one thread: fastest on a shared 2-core machine (no oversubscription)
    family: str = "shapes"  # ground-truth family (meaningful_perturbation.data.FAMILIES)


# ---------------------------------------------------------------------- augmentation
def _gauss_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (σ in pixels, one per image), reflect padding."""
    n, c, h, w = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # (n, K)
    kk = k.repeat_interleave(c, 0)  # one kernel per (image, channel)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kk[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _augment(
    x: torch.Tensor,
    masks: torch.Tensor,
    perturb_prob: float,
    g: torch.Generator,
    labels: torch.Tensor | None = None,
    flip_perm: tuple[int, ...] | None = None,
    rot_perm: tuple[int, ...] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augmentation of a batch of *unnormalised* images in [0, 1].

    Args:
        x: ``(B, 3, S, S)`` images.
        masks: ``(B, S, S)`` class-shape masks (kept intact by the perturbation).
        perturb_prob: probability that an image's background is perturbed.
        g: the training generator (all randomness comes from it).
        labels: ``(B,)`` labels; when given, ``(images, labels)`` is returned with each label
            moved by ``flip_perm`` / ``rot_perm`` (``None``: the classes are invariant).

    The random draws are the same whether or not ``labels`` is given.
    """
    b, _, s, _ = x.shape
    # Background perturbation under a random smooth mask; the shape (dilated by 2 px) is kept.
    do = torch.rand(b, generator=g) < perturb_prob
    if do.any():
        idx = do.nonzero().squeeze(1)
        xi, mi = x[idx], masks[idx].float()[:, None]
        k = len(idx)
        cells = int(torch.randint(2, 7, (1,), generator=g))
        low = torch.rand(k, 1, cells, cells, generator=g)
        smooth = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
        level = torch.rand(k, 1, 1, 1, generator=g)  # share of the background perturbed
        keep = torch.sigmoid((smooth - level) * 12.0)
        keep = torch.maximum(keep, F.max_pool2d(mi, 5, stride=1, padding=2))
        kind = torch.randint(0, 3, (k,), generator=g)
        sigma = 1.0 + 5.0 * torch.rand(k, generator=g)
        blurred = _gauss_blur(xi, sigma)
        mean = xi.mean(dim=(2, 3), keepdim=True).expand_as(xi)
        noisy = (xi + 0.25 * torch.randn(xi.shape, generator=g)).clamp(0, 1)
        pert = torch.where((kind == 0).view(-1, 1, 1, 1), blurred, torch.where((kind == 1).view(-1, 1, 1, 1), mean, noisy))
        x = x.clone()
        x[idx] = keep * xi + (1 - keep) * pert
    # Random flips and 90° rotations: shape classes are invariant to the dihedral group,
    # texture classes are permuted by it (the label follows the image).
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    rot = torch.randint(0, 4, (b,), generator=g)
    out = x.clone()
    for r in range(1, 4):
        sel = rot == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    if labels is None:
        return out
    y = labels
    if flip_perm is not None:
        y = torch.where(flip, torch.tensor(flip_perm)[y], y)
    if rot_perm is not None:
        y = torch.where(rot % 2 == 1, torch.tensor(rot_perm)[y], y)
    return out, y


# ------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(
    model: torch.nn.Module, n: int = 2000, seed: int = 1000, size: int = 64, batch_size: int = 250, family: str = "shapes"
) -> dict[str, Any]:
    """Accuracy of ``model`` on a fresh test-split draw of ``family``, on its
    counterfactuals (evidence never drawn: the evidence region shows the background) and
    with the evidence blurred.

    Returns:
        A dict with ``family``, ``test_accuracy``, ``counterfactual_accuracy`` (chance is
        1 / number of classes),
        ``counterfactual_mean_max_prob``, ``counterfactual_prediction_histogram``,
        ``shape_blurred_accuracy`` / ``shape_blurred_mean_true_prob`` (only the mask pixels
        replaced by a Gaussian blur of σ = 10·size/224 px), ``test_mean_true_prob``,
        ``per_class_accuracy``, ``confusion`` (rows: truth) and the draw's ``n``, ``seed``,
        ``size``.
    """
    fam = get_family(family)
    classes = fam.classes
    ds = fam.make(n, size=size, split="test", seed=seed)
    was_training = model.training
    model.eval()
    try:
        preds, cf_preds, cf_maxp, true_p, bl_preds, bl_true_p = [], [], [], [], [], []
        sigma = 10.0 * size / 224.0  # the paper's σ0 = 10 px at 224 px (DESIGN.md §3)
        for i in range(0, n, batch_size):
            raw = torch.from_numpy(ds.images[i : i + batch_size])
            m = torch.from_numpy(ds.masks[i : i + batch_size])[:, None]
            x = normalize(raw)
            xc = normalize(torch.from_numpy(ds.counterfactuals[i : i + batch_size]))
            xb = normalize(torch.where(m, _gauss_blur(raw, torch.full((len(raw),), sigma)), raw))
            y = torch.from_numpy(ds.labels[i : i + batch_size])
            p = model(x).softmax(1)
            pc = model(xc).softmax(1)
            pb = model(xb).softmax(1)
            preds.append(p.argmax(1))
            true_p.append(p.gather(1, y[:, None])[:, 0])
            cf_preds.append(pc.argmax(1))
            cf_maxp.append(pc.max(1).values)
            bl_preds.append(pb.argmax(1))
            bl_true_p.append(pb.gather(1, y[:, None])[:, 0])
    finally:
        model.train(was_training)
    pred = torch.cat(preds).numpy()
    cf_pred = torch.cat(cf_preds).numpy()
    bl_pred = torch.cat(bl_preds).numpy()
    labels = ds.labels
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {c: float(confusion[k, k] / max(confusion[k].sum(), 1)) for k, c in enumerate(classes)}
    out = {
        "n": int(n),
        "seed": int(seed),
        "size": int(size),
        "split": "test",
        "test_accuracy": float((pred == labels).mean()),
        "counterfactual_accuracy": float((cf_pred == labels).mean()),
        "counterfactual_mean_max_prob": float(torch.cat(cf_maxp).mean()),
        "counterfactual_prediction_histogram": np.bincount(cf_pred, minlength=len(classes)).tolist(),
        "shape_blurred_accuracy": float((bl_pred == labels).mean()),
        "shape_blurred_mean_true_prob": float(torch.cat(bl_true_p).mean()),
        "test_mean_true_prob": float(torch.cat(true_p).mean()),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }
    if family != "shapes":  # the shapes keys are kept as they were for its metrics.json
        out = {"family": family, **out}
    return out


# -------------------------------------------------------------------------- training
def _seed_everything(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def train(cfg: TrainConfig, progress: bool = True) -> tuple[ShapeNet, dict[str, Any]]:
    """Train a :class:`ShapeNet` on ``cfg.family`` with ``cfg``; returns the model (eval
    mode) and a log.

    Torch's global thread count and deterministic-algorithms flag are set for the run and
    restored afterwards (the global RNG is reseeded with ``cfg.seed``).
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _train(cfg: TrainConfig, progress: bool) -> tuple[ShapeNet, dict[str, Any]]:
    from tqdm.auto import tqdm

    fam = get_family(cfg.family, "family")
    g = _seed_everything(cfg.seed, cfg.threads)
    t0 = time.perf_counter()
    # Draw the training set in chunks, stored as uint8 to keep memory small.
    chunk = 2000
    images = np.empty((cfg.n, 3, cfg.size, cfg.size), dtype=np.uint8)
    blanks = np.empty((cfg.n, 3, cfg.size, cfg.size), dtype=np.uint8)
    masks = np.empty((cfg.n, cfg.size, cfg.size), dtype=bool)
    labels = np.empty((cfg.n,), dtype=np.int64)
    for start in tqdm(range(0, cfg.n, chunk), desc="data", disable=not progress):
        stop = min(start + chunk, cfg.n)
        # Seeds seed*1000 + k, k < 1000, never coincide between chunks of one run.
        ds = fam.make(stop - start, size=cfg.size, split="train", seed=cfg.seed * 1000 + start // chunk)
        images[start:stop] = np.round(ds.images * 255).astype(np.uint8)
        blanks[start:stop] = np.round(ds.counterfactuals * 255).astype(np.uint8)
        masks[start:stop], labels[start:stop] = ds.masks, ds.labels
    t_data = time.perf_counter() - t0

    model = ShapeNet(num_classes=len(fam.classes)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = cfg.n // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    imgs_t, blanks_t = torch.from_numpy(images), torch.from_numpy(blanks)
    masks_t, labels_t = torch.from_numpy(masks), torch.from_numpy(labels)
    k = len(fam.classes)
    history = []
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(cfg.n, generator=g)
        run_loss, run_acc, seen, seen_shapes = 0.0, 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            # Blank images (shape never drawn) get the uniform distribution as target.
            blank = torch.rand(len(idx), generator=g) < cfg.blank_prob
            x = torch.where(blank.view(-1, 1, 1, 1), blanks_t[idx], imgs_t[idx]).float() / 255.0
            # The background perturbation ramps up: the shape is learnt first on clean images.
            done = (epoch * steps_per_epoch + step) / (cfg.epochs * steps_per_epoch)
            p = cfg.perturb_prob * min(1.0, done / cfg.perturb_ramp) if cfg.perturb_ramp > 0 else cfg.perturb_prob
            x, y = _augment(x, masks_t[idx], p, g, labels_t[idx], fam.flip, fam.rot90)
            x = normalize(x).contiguous(memory_format=torch.channels_last)
            target = F.one_hot(y, k).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / k
            target[blank] = 1.0 / k
            logits = model(x)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item() * len(idx)
            run_acc += float(((logits.argmax(1) == y) & ~blank).float().sum())
            seen += len(idx)
            seen_shapes += int((~blank).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{run_loss / seen:.3f}", acc=f"{run_acc / max(seen_shapes, 1):.3f}")
        history.append({"epoch": epoch + 1, "loss": run_loss / seen, "train_accuracy": run_acc / max(seen_shapes, 1)})
    model.eval()
    model = model.to(memory_format=torch.contiguous_format)
    log = {
        "config": asdict(cfg),
        "history": history,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(time.perf_counter() - t0 - t_data, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    return model, log


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write ``model``'s state dict with safetensors (no pickle)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes a multi-key header in hash order, which would
    # make the bytes of two identical trainings differ.
    save_file(state, str(path), metadata={"format": "pt"})


def main_train(args: Any) -> dict[str, Any]:
    """``train`` subcommand: train, evaluate, write weights + metrics JSON, print metrics.

    ``args.out`` / ``args.metrics`` default (``None``) to the family's shipped files
    (:data:`FAMILY_FILES`) beside this module.
    """
    family = getattr(args, "family", None) or "shapes"
    get_family(family, "--family")
    cfg = TrainConfig(
        n=args.n, epochs=args.epochs, seed=args.seed, blank_prob=args.blank_prob, eval_n=args.eval_n,
        eval_seed=args.eval_seed, family=family,
    )
    model, log = train(cfg, progress=not args.quiet)
    t_eval = time.perf_counter()
    metrics = evaluate(model, n=cfg.eval_n, seed=cfg.eval_seed, size=cfg.size, family=family)
    log["eval_seconds"] = round(time.perf_counter() - t_eval, 1)
    log["parameters"] = sum(p.numel() for p in model.parameters())
    log["evaluation"] = metrics
    weights_name, metrics_name = FAMILY_FILES[family]
    out = Path(args.out) if args.out else DEFAULT_OUT.with_name(weights_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out)
    metrics_path = Path(args.metrics) if args.metrics else out.with_name(metrics_name)
    metrics_path.write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "counterfactual_accuracy", "counterfactual_mean_max_prob", "shape_blurred_accuracy", "per_class_accuracy")}, indent=2))
    print(f"parameters: {log['parameters']}, data {log['data_seconds']} s, training {log['train_seconds']} s")
    print(f"weights -> {out}\nmetrics -> {metrics_path}")
    return log
