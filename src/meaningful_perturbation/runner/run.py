"""The batch runner behind ``mperturb run``: many images, resumable, shardable.

Output folder layout::

    DIR/settings.json            resolved settings (resume refuses different ones)
    DIR/items/<id>.npz           Explanation of one image (Explanation.load)
    DIR/items/<id>_overlay.png   saliency over the original image
    DIR/items/<id>_thumb.png     small copy of the original (for the report)
    DIR/results.jsonl            one JSON line per finished item
    DIR/failures.jsonl           one JSON line per item that could not be done
    DIR/report.html              with --report / `mperturb report DIR`

Each file is written to a temporary name and renamed; each results line is appended with a
single ``write`` + ``fsync``. An item is *done* iff its ``.npz`` and its results line both
exist, so a run killed at any moment and resumed with ``--resume`` redoes at most the items
in flight, and the final merge keeps one line per id.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from . import dist as distmod
from .merge import FAILURES, RESULTS, append_line, clean_stale_tmp, done_ids, merge_results, repair_tail
from .sources import Item, load_source
from .._atomic import atomic_write_text

__all__ = ["RunOptions", "RunSummary", "run_directory", "METRIC_NAMES", "SETTINGS_FILE"]

SETTINGS_FILE = "settings.json"
METRIC_NAMES = ("pointing", "energy")
_FORMAT = "meaningful-perturbation/run"


@dataclass
class RunOptions:
    """Runner options besides the explain settings (:class:`~..cli.options.RunSettings`)."""

    source: str
    out: str
    source_type: str = "auto"
    batch_size: int = 8
    resume: bool = False
    force: bool = False
    metrics: tuple[str, ...] = ()
    pointing_tolerance: float | None = None  # pixels of the original image; None = 15 px at 224
    report: bool = False
    quiet: bool = False
    thumb_size: int = 160


@dataclass
class RunSummary:
    total: int = 0
    done_before: int = 0
    done_now: int = 0
    failures: int = 0
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)
    failure_records: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


# ------------------------------------------------------------------------------------ helpers
def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _our_files(out: Path) -> list[Path]:
    """Files a previous run wrote (removed by ``--force`` without ``--resume``)."""
    found = [out / SETTINGS_FILE, out / "report.html"]
    found += list(out.glob("results*.jsonl")) + list(out.glob("failures*.jsonl"))
    items = out / "items"
    if items.is_dir():
        found += [p for p in items.iterdir() if p.is_file() and (p.suffix in (".npz", ".png") or ".tmp" in p.name)]
    return [p for p in found if p.exists()]


def _settings_record(settings: Any, opts: RunOptions, source_info: dict[str, Any], prep: Any) -> dict[str, Any]:
    s = settings.to_dict()
    device = s.pop("device", None)
    compared = {
        "settings": s,
        "config": settings.config,
        "source": str(Path(opts.source).resolve()),
        "source_type": source_info.get("kind"),
        "metrics": sorted(opts.metrics),
        "pointing_tolerance": opts.pointing_tolerance,
        "preprocessing": prep.to_dict() if hasattr(prep, "to_dict") else None,
    }
    compared = json.loads(json.dumps(compared, default=str))
    return {
        "format": _FORMAT,
        "version": 1,
        "compared": compared,
        "runtime": {"device": device, "batch_size": opts.batch_size, "source_info": source_info},
    }


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _prepare_out(out: Path, record: dict[str, Any], opts: RunOptions) -> None:
    """Rank 0: refuse or clean, then write settings.json. Raises on refusal."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} exists and is not a folder")
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and not opts.resume:
        if not opts.force:
            raise InputError(
                f"--out: {str(out)!r} is not empty; pass --resume to continue a run there, "
                "--force to start over (removes the previous run's outputs), or choose another --out"
            )
        for p in _our_files(out):
            p.unlink()
    if opts.resume and (out / SETTINGS_FILE).exists():
        try:
            old = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            if not opts.force:
                raise InputError(f"--resume: cannot read {str(out / SETTINGS_FILE)!r} ({e}); pass --force") from None
            old = {}
        changes = _diff(old.get("compared"), record["compared"])
        if changes and not opts.force:
            shown = "; ".join(changes[:5]) + (" ..." if len(changes) > 5 else "")
            raise ConfigError(
                f"--resume: the settings differ from the run in {str(out)!r} ({shown}); "
                "resume with the same settings, or pass --force to continue with the new ones"
            )
    (out / "items").mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)
    _write_json(out / SETTINGS_FILE, record)


def _load_mask(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    from ..io import load_image

    img = load_image(path).convert("L")
    if (img.size[1], img.size[0]) != tuple(size_hw):
        img = img.resize((size_hw[1], size_hw[0]), Image.NEAREST)
    return np.asarray(img) > 127


def _box_mask(box: Sequence[float], size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m = np.zeros((h, w), dtype=bool)
    m[max(0, y0) : max(0, min(h, y1)), max(0, x0) : max(0, min(w, x1))] = True
    return m


def _item_metrics(sal: torch.Tensor, item: Item, gt_mask: np.ndarray | None, opts: RunOptions) -> dict[str, Any]:
    from ..metrics import energy_in_box, energy_in_mask, pointing_game, scaled_tolerance

    out: dict[str, Any] = {}
    h, w = sal.shape
    s = sal.float()[None]
    gt = gt_mask
    if gt is None and item.box is not None:
        gt = _box_mask(item.box, (h, w))
    if "energy" in opts.metrics:
        if item.box is not None:
            out["energy_box"] = float(energy_in_box(s, torch.tensor([item.box], dtype=torch.float64))[0])
        if gt_mask is not None:
            out["energy_mask"] = float(energy_in_mask(s, torch.from_numpy(gt_mask)[None])[0])
    if "pointing" in opts.metrics and gt is not None:
        tol = opts.pointing_tolerance if opts.pointing_tolerance is not None else scaled_tolerance((h, w))
        res = pointing_game(s, torch.from_numpy(gt)[None], tolerance=float(tol))
        out["pointing_hit"] = float(res.hits[0]) if bool(res.valid[0]) else None
        out["pointing_tolerance_px"] = round(float(tol), 3)
    return out


def _resolve_label(label: Any, n_classes: int, class_names: Sequence[str] | None) -> int | None:
    if label is None:
        return None
    if isinstance(label, int):
        if not 0 <= label < n_classes:
            raise InputError(f"target {label} out of range for a model with {n_classes} classes")
        return label
    names = [n.lower() for n in class_names or ()]
    if str(label).lower() in names:
        return names.index(str(label).lower())
    raise InputError(f"unknown class name {str(label)!r} (the model's classes: {', '.join(list(class_names or ())[:10])})")


def _name(c: int, class_names: Sequence[str] | None) -> str:
    return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)


# ---------------------------------------------------------------------------------- the run
def run_directory(settings: Any, opts: RunOptions) -> RunSummary:
    """Explain every image of ``opts.source`` into ``opts.out`` (see the module docstring).

    Under ``torchrun`` each rank does its shard; rank 0 merges. Returns this rank's summary
    (rank 0's has the merged results and failures).
    """
    from .. import explain as explain_fn
    from .. import figures
    from ..io import load_image, map_to_original, preprocess
    from ..methods.common import input_stats_overrides
    from ..models import CLI_OPTION_NAMES, load_model, resolve_model_preprocessing
    from ..targets import clean_scores, target_from_option

    if opts.batch_size < 1:
        raise ConfigError(f"--batch-size: expected >= 1, got {opts.batch_size}")
    bad = [m for m in opts.metrics if m not in METRIC_NAMES]
    if bad:
        raise ConfigError(f"--metrics: unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRIC_NAMES)}")
    ctx = distmod.detect()
    device_name = distmod.local_device(settings.device, ctx)
    distmod.init(ctx, device_name)
    try:
        out = Path(opts.out)
        loaded = load_model(settings.model, weights=settings.weights, trust_code=settings.trust_code,
                            device=device_name)
        # The model's own preprocessing with the overrides; its channel count checked by one
        # forward pass, before any output is written.
        prep = resolve_model_preprocessing(
            loaded, settings.preprocessing, device=device_name, names=CLI_OPTION_NAMES
        )
        class_names = prep.class_names
        if isinstance(settings.target, str) and settings.target not in ("top1", "top5"):
            target_from_option(settings.target, torch.zeros(1, len(class_names or ()) or 1), class_names)
        items, source_info = load_source(opts.source, opts.source_type, class_names)
        record = _settings_record(settings, opts, source_info, prep)
        error = None
        if ctx.is_main:
            try:
                _prepare_out(out, record, opts)
            except (InputError, ConfigError) as e:
                error = (type(e).__name__, str(e))
        error = ctx.broadcast(error)
        if error is not None:
            raise (ConfigError if error[0] == "ConfigError" else InputError)(error[1])

        summary = RunSummary(total=len(items), rank=ctx.rank, world_size=ctx.world_size)
        mine = distmod.shard(items, ctx)
        finished = done_ids(out)
        todo = [it for it in mine if it.id not in finished]
        summary.done_before = len(mine) - len(todo)
        suffix = f".rank{ctx.rank}" if ctx.enabled else ""
        results_path = out / f"results{suffix}.jsonl"
        failures_path = out / f"failures{suffix}.jsonl"
        repair_tail(results_path)
        repair_tail(failures_path)
        items_dir = out / "items"
        device = torch.device(device_name)
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.overrides.items()}
        overrides = input_stats_overrides(settings.config, overrides, prep.mean, prep.std)
        top_k = int(settings.config.get("top_k", 1) or 1)
        head_kind = getattr(settings, "head", "auto")

        from tqdm.auto import tqdm

        show = not opts.quiet and ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=len(todo), desc=f"run{' rank 0' if ctx.enabled else ''}", unit="img",
                   disable=not show, dynamic_ncols=True)
        t_start = time.perf_counter()
        my_failures = 0

        def fail(it: Item, stage: str, msg: str) -> None:
            nonlocal my_failures
            my_failures += 1
            append_line(failures_path, {"id": it.id, "path": it.rel, "file": str(it.path), "stage": stage,
                                        "error": " ".join(msg.split())[:500], "rank": ctx.rank})
            if not opts.quiet:
                tqdm.write(f"mperturb: skipping {it.rel}: {' '.join(msg.split())}", file=sys.stderr)
            bar.update(1)

        for start in range(0, len(todo), opts.batch_size):
            batch = todo[start : start + opts.batch_size]
            ready: list[dict[str, Any]] = []
            for it in batch:
                if it.error:
                    fail(it, "source", it.error)
                    continue
                try:
                    image = load_image(it.path)
                    x, geometry = preprocess(image, prep)
                    gt_mask = None
                    if it.mask is not None and opts.metrics:
                        gt_mask = _load_mask(it.mask, tuple(geometry.original_size))
                except InputError as e:
                    fail(it, "load", str(e))
                    continue
                ready.append({"item": it, "image": image, "x": x, "geometry": geometry, "gt_mask": gt_mask})
            if not ready:
                continue
            xb = torch.stack([r["x"] for r in ready]).to(device)
            # The head is read once, on the first batch ("auto" then stays what it found).
            logits, head = clean_scores(loaded.model, xb, head_kind)
            head_kind = head.kind
            logits = logits.cpu()
            n_classes = int(logits.shape[-1])
            keep: list[dict[str, Any]] = []
            targets: list[list[int]] = []
            for k, r in enumerate(ready):
                it = r["item"]
                try:
                    label = _resolve_label(it.label, n_classes, class_names)
                    if settings.target is not None:
                        tgt = target_from_option(settings.target, logits[k : k + 1], class_names)[0]
                    elif label is not None:
                        tgt = [label]
                    else:
                        tgt = logits[k].topk(min(top_k, n_classes)).indices.tolist()
                except (InputError, ConfigError) as e:
                    fail(it, "target", str(e))
                    continue
                r["label"] = label
                r["pred"] = int(logits[k].argmax())
                keep.append(r)
                targets.append([int(c) for c in tgt])
            if not keep:
                continue
            if len(keep) != len(ready):
                xb = torch.stack([r["x"] for r in keep]).to(device)
            t0 = time.perf_counter()
            ex = explain_fn(loaded.model, xb, target=targets, method=settings.method, seed=settings.seed,
                            head=head_kind, progress=False, **overrides)
            batch_seconds = time.perf_counter() - t0
            per_item = batch_seconds / len(keep)
            for k, r in enumerate(keep):
                it = r["item"]
                one = ex[k]
                t1 = time.perf_counter()
                sal_orig = map_to_original(one.saliency[0].float(), r["geometry"])
                original = np.asarray(r["image"], dtype=np.uint8)
                figures.save_overlay(items_dir / f"{it.id}_overlay.png", original, sal_orig)
                thumb = r["image"].copy()
                thumb.thumbnail((opts.thumb_size, opts.thumb_size))
                with figures.atomic_path(items_dir / f"{it.id}_thumb.png") as tmp:
                    thumb.save(tmp, format="PNG")
                one.save(items_dir / f"{it.id}.npz")
                metrics = _item_metrics(sal_orig, it, r["gt_mask"], opts) if opts.metrics else {}
                scores = {name: v[0].tolist() for name, v in one.scores.items()}
                tgt = one.target[0]
                rec = {
                    "id": it.id,
                    "path": it.rel,
                    "file": str(it.path),
                    "target": tgt,
                    "target_names": [_name(c, class_names) for c in tgt],
                    "class_name": ", ".join(_name(c, class_names) for c in tgt),
                    "label": r["label"],
                    "label_name": None if r["label"] is None else _name(r["label"], class_names),
                    "predicted": r["pred"],
                    "predicted_name": _name(r["pred"], class_names),
                    "scores": scores,
                    "head": one.head,
                    "metrics": metrics,
                    "box": list(it.box) if it.box is not None else None,
                    "mask": str(it.mask) if it.mask is not None else None,
                    "original_size": list(r["geometry"].original_size),
                    "seconds": round(per_item, 5),
                    "write_seconds": round(time.perf_counter() - t1, 5),
                    "batch_size": len(keep),
                    "rank": ctx.rank,
                    "method": settings.method,
                    "files": {"npz": f"items/{it.id}.npz", "overlay": f"items/{it.id}_overlay.png",
                              "thumb": f"items/{it.id}_thumb.png"},
                }
                append_line(results_path, rec)
                summary.done_now += 1
                bar.update(1)
        bar.close()
        summary.seconds = time.perf_counter() - t_start
        summary.failures = my_failures
        # All ranks done -> rank 0 merges (idempotent, dedupes by id).
        ctx.barrier()
        if ctx.is_main:
            results, failures = merge_results(out)
            summary.results, summary.failure_records = results, failures
            summary.failures = len(failures)
        summary.done_now = ctx.gather_sum(summary.done_now)
        ctx.barrier()
        return summary
    finally:
        ctx.close()


def summarise(summary: RunSummary) -> str:
    """A few lines for the end of a run: counts, throughput, mean scores and metrics."""
    lines = [
        f"mperturb run: {len(summary.results)} of {summary.total} item(s) done "
        f"({summary.done_now} now, {summary.done_before} already), {summary.failures} failure(s)"
        + (f", {summary.world_size} processes" if summary.world_size > 1 else "")
    ]
    if summary.done_now and summary.seconds > 0:
        lines.append(f"  this run: {summary.seconds:.1f} s, {summary.done_now / summary.seconds:.2f} items/s")
    from .report import collect_columns

    for name, values in collect_columns(summary.results).items():
        vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if vals:
            lines.append(f"  mean {name}: {sum(vals) / len(vals):.4f} (n={len(vals)})")
    return "\n".join(lines)
