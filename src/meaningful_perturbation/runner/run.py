"""The batch runner behind ``mperturb run``: many images, resumable, shardable.

Output folder layout::

    DIR/settings.json            resolved settings (resume refuses different ones)
    DIR/items/<id>.npz           Explanation of one image (Explanation.load)
    DIR/items/<id>_overlay.png   saliency over the original image
    DIR/items/<id>_thumb.png     small copy of the original (for the report)
    DIR/results.jsonl            one JSON line per finished item
    DIR/failures.jsonl           one JSON line per item that could not be done
    DIR/report.html              with --report / `mperturb report DIR`
    DIR/.mperturb/               ownership marker, claimed item ids, lock (see .owner)

Only an empty (or new) folder or a run folder of this project is used; ``--force`` removes
only the files the folder's runs recorded as their own; one run at a time holds the folder's
lock (:mod:`.owner`).

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

from .._terminal import escape_text, naming_images, target_text
from ..demo import DEMO_NOTE
from ..core.head import HEADS
from ..errors import ConfigError, InputError, MeaningfulPerturbationError
from ..explanation import LOW_CONFIDENCE, low_confidence
from . import dist as distmod
from .merge import FAILURES, RESULTS, _collect, _parts, append_line, done_ids, merge_results, repair_tail
from .owner import ITEM_SUFFIXES, FolderLock, Ownership, inspect_out, owned_tmp, write_owned_text
from .sources import SOURCE_KINDS, Item, load_source

__all__ = ["RunOptions", "RunSummary", "run_directory", "validate_options", "read_settings", "METRIC_NAMES",
           "SETTINGS_FILE"]

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
    retry_failures: bool = False  # with --resume: retry the items of failures.jsonl
    # names of the output classes instead of the model's (mperturb evaluate: the data set's)
    class_names: tuple[str, ...] | None = None
    # called once every setting, the model, the target and the run folder are checked (the CLI
    # prints its --device auto note there, so that a refused command prints its error alone)
    on_checked: Any = None


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
    not_retried: int = 0  # items that failed in an earlier run, skipped (no --retry-failures)
    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


# ------------------------------------------------------------------------------------ helpers
def validate_options(opts: RunOptions) -> None:
    """Check every runner option before anything is loaded, explained or written.

    Raises:
        ConfigError: a value out of range (the message names the option).
    """
    def positive_int(name: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")

    positive_int("--batch-size", opts.batch_size)
    positive_int("thumb_size", opts.thumb_size)
    bad = [m for m in opts.metrics if m not in METRIC_NAMES]
    if bad:
        raise ConfigError(f"--metrics: unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRIC_NAMES)}")
    tol = opts.pointing_tolerance
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)
                            or tol < 0):
        raise ConfigError(f"--pointing-tolerance: expected a finite number of pixels >= 0, got {tol!r}")
    if opts.source_type not in SOURCE_KINDS:
        raise ConfigError(f"--source-type: expected one of {', '.join(SOURCE_KINDS)}, got {opts.source_type!r}")
    if opts.retry_failures and not opts.resume:
        raise ConfigError("--retry-failures: only with --resume (a new run has no failures to retry)")


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
    masker = settings.config.get("masker") if getattr(settings, "method", None) == "masker" else None
    if isinstance(masker, str):  # --resume compares the masker by content: a moved copy is the same masker
        compared = _replace_value(compared, masker, _masker_identity(masker))
    return {
        "format": _FORMAT,
        "version": 1,
        "compared": compared,
        "runtime": {"device": device, "batch_size": opts.batch_size, "source_info": source_info},
    }


def _masker_identity(path: str) -> str:
    """``"sha256:<hex>"`` of a masker file (the shipped one for ``"demo"``)."""
    import hashlib

    if path == "demo":
        from ..masker import DEMO_MASKER_PATH

        path = str(DEMO_MASKER_PATH)
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _replace_value(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, dict):
        return {k: _replace_value(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_value(v, old, new) for v in obj]
    return new if obj == old else obj


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def read_settings(path: Path) -> dict[str, Any]:
    """The ``settings.json`` of a run, checked (a JSON object of this format with ``compared``).

    Raises:
        InputError: unreadable, not JSON, or valid JSON of another shape; names the file.
    """
    fix = "restore it, or pass --force with --resume to continue with the current settings"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"--resume: cannot read {str(path)!r} ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(data, dict):
        raise InputError(f"--resume: {str(path)!r} is not a run's settings file (expected a JSON object, "
                         f"got {type(data).__name__}); {fix}")
    if data.get("format") != _FORMAT:
        raise InputError(f"--resume: {str(path)!r} is not a run's settings file (expected \"format\": "
                         f"{_FORMAT!r}, got {data.get('format')!r}); {fix}")
    if not isinstance(data.get("compared"), dict):
        raise InputError(f"--resume: {str(path)!r} is not a run's settings file (expected a \"compared\" "
                         f"object, got {type(data.get('compared')).__name__}); {fix}")
    return data


def _prepare_out(out: Path, record: dict[str, Any], opts: RunOptions, world_size: int = 1) -> tuple[Ownership, FolderLock]:
    """Rank 0: lock ``out``, refuse or clean (only the run's own files), write the marker and
    settings.json. Returns the ownership record and the held lock. Raises on refusal."""
    own = inspect_out(out)  # refuses a folder with foreign files before anything is written
    if own.kind == "missing":
        out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire()
    try:
        own = inspect_out(out)  # again, under the lock
        if own.is_run and not opts.resume:
            if not opts.force:
                raise InputError(
                    f"--out: {str(out)!r} holds an earlier run; pass --resume to continue it, --force to "
                    "start over (removes only that run's own files), or choose another --out"
                )
            for p in own.own_file_paths():
                p.unlink()
            own.files = []
        if own.is_run and opts.resume and (out / SETTINGS_FILE).exists():
            try:
                old = read_settings(out / SETTINGS_FILE)
            except InputError:
                if not opts.force:
                    raise
                old = {"compared": record["compared"]}
            changes = _diff(old["compared"], record["compared"])
            if changes and not opts.force:
                shown = "; ".join(changes[:5]) + (" ..." if len(changes) > 5 else "")
                raise ConfigError(
                    f"--resume: the settings differ from the run in {str(out)!r} ({shown}); "
                    "resume with the same settings, or pass --force to continue with the new ones"
                )
        if own.kind == "legacy-run":  # a run folder of an earlier version: adopt its files
            own.files = [p.name for p in own.own_file_paths() if p.parent == out]
        names = [SETTINGS_FILE, RESULTS, FAILURES]
        if world_size > 1:
            names += [f"{stem}.rank{r}.jsonl" for stem in ("results", "failures") for r in range(world_size)]
        if opts.report:
            if "report.html" not in own.files and (out / "report.html").exists():
                raise InputError(f"--report: {str(out / 'report.html')!r} exists and was not written by mperturb; "
                                 "move it away, or run without --report and use `mperturb report DIR --output FILE`")
            names.append("report.html")
        own.files = sorted(set(own.files) | set(names))
        own.write_marker()
        for p in own.stale_tmp():
            p.unlink()
        (out / "items").mkdir(exist_ok=True)
        write_owned_text(out / SETTINGS_FILE, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n",
                         own.tag)
    except BaseException:
        lock.release()
        raise
    return own, lock


def _warn_index_labels(info: dict[str, Any], class_names: Sequence[str] | None, target: Any) -> None:
    """An ImageFolder tree whose sub-folder names are not the model's class names is labelled
    by sorted sub-folder index (torchvision's rule): ``photos/cats`` becomes class 0 of an
    ImageNet model (tench). Say so, with the mapping, where the labels are used (no
    ``--target``) and the model names its classes."""
    import warnings

    from ..errors import MeaningfulPerturbationWarning

    if target is not None or not class_names or info.get("label_rule") != "sorted sub-folder index":
        return
    pairs = [f"{c} -> {i} ({class_names[i]})" if i < len(class_names) else f"{c} -> {i}"
             for c, i in list(info["mapping"].items())[:4]]
    more = ", ..." if len(info["mapping"]) > 4 else ""
    warnings.warn(
        f"SOURCE: the sub-folder names are not the model's class names, so each sub-folder's label is its index "
        f"in sorted order (torchvision's ImageFolder rule): {', '.join(pairs)}{more}; if the sub-folders are not "
        "this model's classes, pass --target top1 to explain each image's top class instead",
        MeaningfulPerturbationWarning,
        stacklevel=2,
    )


def _probe_model(model: Any, prep: Any, device: torch.device) -> int:
    """One forward pass on a mid-grey image before any output is written: a model whose output
    cannot be read at all (it raises, returns a tuple, no class columns) stops the run here
    with one error, instead of failing every item. Non-finite *values* are left to the items
    (a model may return NaN on some images only)."""
    from PIL import Image

    from ..core.head import model_output
    from ..io import preprocess
    from ..models import input_dtype
    from ..targets import call_model

    x, _ = preprocess(Image.new("RGB", (64, 64), (128, 128, 128)), prep)
    raw = call_model(model, x[None].to(device=device, dtype=input_dtype(model)))
    if isinstance(raw, torch.Tensor) and raw.is_floating_point():
        raw = torch.nan_to_num(raw)
    return int(model_output(raw, 1, where="on the clean images").shape[1])  # the model's output columns


def _message(e: BaseException) -> str:
    text = str(e) if isinstance(e, MeaningfulPerturbationError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())[:500]


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


def _item_metrics(
    sal: torch.Tensor, item: Item, gt_mask: np.ndarray | None, opts: RunOptions, original_size: tuple[int, int]
) -> dict[str, Any]:
    """Metrics of one item. ``sal`` lies on the original image, at its size or scaled down to
    at most ``io.OVERLAY_MAX_SIDE`` per side (bounded memory): boxes and the pointing tolerance,
    given in original pixels, are scaled with it, and ``gt_mask`` is at ``sal``'s size."""
    from ..metrics import energy_in_box, energy_in_mask, pointing_game, scaled_tolerance

    out: dict[str, Any] = {}
    h, w = sal.shape
    H, W = original_size
    sy, sx = h / H, w / W
    s = sal.float()[None]
    gt = gt_mask
    box = None if item.box is None else [item.box[0] * sx, item.box[1] * sy, item.box[2] * sx, item.box[3] * sy]
    if gt is None and box is not None:
        gt = _box_mask(box, (h, w))
    if "energy" in opts.metrics:
        if box is not None:
            out["energy_box"] = float(energy_in_box(s, torch.tensor([box], dtype=torch.float64))[0])
        if gt_mask is not None:
            out["energy_mask"] = float(energy_in_mask(s, torch.from_numpy(gt_mask)[None])[0])
    if "pointing" in opts.metrics and gt is not None:
        tol = opts.pointing_tolerance if opts.pointing_tolerance is not None else scaled_tolerance((H, W))
        # Any tolerance beyond the image diagonal hits wherever the maximum is: same result,
        # no overflow for huge values.
        used = min(float(tol) * min(sy, sx), math.hypot(h, w) + 1.0)
        res = pointing_game(s, torch.from_numpy(gt)[None], tolerance=used)
        out["pointing_hit"] = float(res.hits[0]) if bool(res.valid[0]) else None
        out["pointing_tolerance_px"] = round(float(tol), 3)
    return out


def _resolve_label(label: Any, n_classes: int, class_names: Sequence[str] | None) -> int | list[int] | None:
    """A manifest/folder label → a class index, or a list of them (a multi-label row)."""
    if label is None:
        return None
    if isinstance(label, list):
        row = [_resolve_label(v, n_classes, class_names) for v in label]
        if not row or len(set(row)) != len(row):
            raise InputError(f"target: expected distinct classes, got {label!r}")
        return row  # type: ignore[return-value]
    if isinstance(label, int):
        if not 0 <= label < n_classes:
            raise InputError(f"target {label} out of range for a model with {n_classes} classes")
        return label
    names = [n.lower() for n in class_names or ()]
    if str(label).lower() in names:
        return names.index(str(label).lower())
    if not class_names:
        raise InputError(f"target: {str(label)!r} is not a class index, and the model has no class names")
    raise InputError(f"unknown class name {str(label)!r} (the model's classes: {', '.join(list(class_names or ())[:10])})")


def _name(c: int, class_names: Sequence[str] | None) -> str:
    return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)


# ---------------------------------------------------------------------------------- the run
def run_directory(settings: Any, opts: RunOptions) -> RunSummary:
    """Explain every image of ``opts.source`` into ``opts.out`` (see the module docstring).

    Every option is checked, the model loaded and probed with one forward pass, and ``out``
    checked (only an empty folder or a run of this project) and locked, before any item is
    worked on. An item that cannot be done (bad row, unreadable image, NaN output, a model
    error on it alone, ...) is recorded in ``failures.jsonl`` with its stage and reason and the
    run goes on; a batch whose forward pass or ``explain`` fails is retried one item at a time
    so only the bad items are recorded. ``--resume`` skips recorded failures unless
    ``opts.retry_failures``.

    Under ``torchrun`` each rank does its shard; rank 0 merges. Returns this rank's summary
    (rank 0's has the merged results and failures).

    Raises:
        ConfigError / InputError: a bad option, a refused ``out`` (foreign files, an earlier
            run without ``--resume``/``--force``, held by another run, changed settings).
        ModelError: the model's output cannot be read at all (checked before any work).
    """
    from .. import explain as explain_fn
    from .. import figures
    from ..io import decode_size, load_image, map_to_original, overlay_base, preprocess
    from ..methods.common import input_stats_overrides
    from ..methods.registry import get_method, resolve_config
    from ..models import CLI_OPTION_NAMES, input_dtype, load_model, resolve_model_preprocessing
    from ..targets import clean_scores, target_from_option, top_classes

    validate_options(opts)
    out = Path(opts.out)
    inspect_out(out)  # read-only: a folder with foreign files is refused before the model loads
    ctx = distmod.detect()
    device_name = distmod.local_device(settings.device, ctx)
    distmod.init(ctx, device_name)
    lock: FolderLock | None = None
    try:
        loaded = load_model(settings.model, weights=settings.weights, trust_code=settings.trust_code,
                            device=device_name, offline=getattr(settings, "offline", False),
                            progress=not opts.quiet, given=tuple(settings.preprocessing))
        # The model's own preprocessing with the overrides; its channel count checked by one
        # forward pass, before any output is written.
        prep = resolve_model_preprocessing(
            loaded, settings.preprocessing, device=device_name, names=CLI_OPTION_NAMES
        )
        class_names = tuple(opts.class_names) if opts.class_names else prep.class_names
        device = torch.device(device_name)
        n_outputs = _probe_model(loaded.model, prep, device)
        layer = settings.config.get("layer")
        if isinstance(layer, str) and isinstance(loaded.model, torch.nn.Module):
            from ..methods.channels import resolve_layer_name

            resolve_layer_name(loaded.model, layer)  # a bad --layer: refused before any output
        from ..masker.model import check_masker_setting

        check_masker_setting(settings, loaded.model, prep)  # a bad or foreign masker: refused before any item
        from ..api import mirror_config

        settings.config = mirror_config(loaded.model, settings.config, settings.overrides)  # flip jitter off for a model that is not mirror-invariant
        if settings.target is not None and settings.target not in ("top1", "top5"):
            # a class index beyond the model's outputs or an unknown name: refused before any item
            target_from_option(settings.target, torch.zeros(1, n_outputs), class_names)
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.overrides.items()}
        overrides = input_stats_overrides(settings.config, overrides, prep.mean, prep.std)
        resolve_config(get_method(settings.method), overrides)  # bad settings: refused now, not per batch
        items, source_info = load_source(opts.source, opts.source_type, class_names, exclude=opts.out)
        _warn_index_labels(source_info, class_names, settings.target)
        record = _settings_record(settings, opts, source_info, prep)
        error = None
        if ctx.is_main:
            try:
                _, lock = _prepare_out(out, record, opts, ctx.world_size)
            except (InputError, ConfigError) as e:
                error = (type(e).__name__, str(e))
        error = ctx.broadcast(error)
        if error is not None:
            raise (ConfigError if error[0] == "ConfigError" else InputError)(error[1])
        if opts.on_checked is not None:
            opts.on_checked()
        if not ctx.is_main:
            lock = FolderLock(out, f"lock.rank{ctx.rank}").acquire()
        own = inspect_out(out)
        owned = own.owned_ids()

        summary = RunSummary(total=len(items), rank=ctx.rank, world_size=ctx.world_size)
        mine = distmod.shard(items, ctx)
        finished = done_ids(out)
        todo = [it for it in mine if it.id not in finished]
        summary.done_before = len(mine) - len(todo)
        if not opts.retry_failures:
            failed_before = set(_collect(_parts(out, "failures")))
            n_todo = len(todo)
            todo = [it for it in todo if it.id not in failed_before]
            summary.not_retried = n_todo - len(todo)
        suffix = f".rank{ctx.rank}" if ctx.enabled else ""
        results_path = out / f"results{suffix}.jsonl"
        failures_path = out / f"failures{suffix}.jsonl"
        repair_tail(results_path)
        repair_tail(failures_path)
        items_dir = out / "items"
        top_k = int(settings.config.get("top_k", 1) or 1)
        head_kind = getattr(settings, "head", "auto")
        if head_kind == "auto":
            # One head per run: a resumed run keeps the head its finished items were read with.
            recs = _collect(_parts(out, "results"))
            head_kind = next((recs[i]["head"] for i in recs if i in finished and recs[i].get("head") in HEADS
                              and recs[i]["head"] != "auto"), "auto")
        head_fixed = head_kind != "auto"  # read (or given) before this batch: a contradiction is the item's
        model_dtype = input_dtype(loaded.model)  # a .half() model gets float16 images

        from tqdm.auto import tqdm

        show = not opts.quiet and ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=len(todo), desc=f"run{' rank 0' if ctx.enabled else ''}", unit="img",
                   disable=not show, dynamic_ncols=True)
        t_start = time.perf_counter()
        my_failures = 0
        noted = {"demo": False}

        def fail(it: Item, stage: str, msg: str) -> None:
            nonlocal my_failures
            my_failures += 1
            append_line(failures_path, {"id": it.id, "path": it.rel, "file": str(it.path), "stage": stage,
                                        "error": " ".join(msg.split())[:500], "rank": ctx.rank})
            if not opts.quiet:
                tqdm.write(escape_text(f"mperturb: skipping {it.rel}: {' '.join(msg.split())}"), file=sys.stderr)
            bar.update(1)

        def split_or_fail(rs: list[dict[str, Any]], stage: str, e: Exception) -> None:
            """A batch failed: retry its items one at a time; a single item is recorded."""
            if len(rs) == 1:
                fail(rs[0]["item"], stage, _message(e))
                return
            for r in rs:
                run_batch([r])

        def run_batch(ready: list[dict[str, Any]]) -> None:
            nonlocal head_kind, head_fixed
            xb = torch.stack([r["x"] for r in ready]).to(device=device, dtype=model_dtype)
            try:
                # The head is read once, on the first batch that succeeds ("auto" then stays).
                logits, head = clean_scores(loaded.model, xb, head_kind)
            except ConfigError as e:
                if not (head_fixed and str(e).startswith("head:")):
                    raise  # settings that do not fit the model: not an item's fault
                # the outputs on these images contradict the run's head: theirs, not the run's
                how = "given with --head" if getattr(settings, "head", "auto") != "auto" else "read from the run's first images"
                split_or_fail(ready, "model", ConfigError(
                    f"--head: the model's output on this image contradicts the run's head {head_kind!r} ({how}): "
                    + str(e)[len("head:"):].strip()))
                return
            except Exception as e:
                split_or_fail(ready, "model", e)
                return
            head_kind = head.kind
            head_fixed = True
            logits = logits.cpu()
            n_classes = int(logits.shape[-1])
            keep: list[dict[str, Any]] = []
            targets: list[list[int]] = []
            for k, r in enumerate(ready):
                it = r["item"]
                try:
                    label = _resolve_label(it.label, n_classes, class_names)
                    if settings.target is not None:
                        tgt = target_from_option(settings.target, logits[k : k + 1], class_names, head=head)[0]
                    elif label is not None:
                        tgt = label if isinstance(label, list) else [label]
                    else:
                        tgt = top_classes(logits[k : k + 1], top_k, head)[0]
                except (InputError, ConfigError) as e:
                    fail(it, "target", str(e))
                    continue
                r["label"] = label
                r["pred"] = int(logits[k].argmax())
                r["target"] = [int(c) for c in tgt]
                keep.append(r)
                targets.append(r["target"])
            if not keep:
                return
            if len(keep) != len(ready):
                xb = torch.stack([r["x"] for r in keep]).to(device=device, dtype=model_dtype)
            t0 = time.perf_counter()
            try:
                with naming_images([r["item"].rel for r in keep]):  # "image i" of the batch -> its file
                    ex = explain_fn(loaded.model, xb, target=targets, method=settings.method, seed=settings.seed,
                                    head=head_kind, progress=False, **overrides)
            except ConfigError:
                raise
            except Exception as e:
                split_or_fail(keep, "explain", e)
                return
            per_item = (time.perf_counter() - t0) / len(keep)
            write_items(keep, ex, per_item)

        def write_items(keep: list[dict[str, Any]], ex: Any, per_item: float) -> None:
            # Ownership: an item's files are written only where none exist, or where this
            # folder's runs wrote them (claimed before writing).
            new_ids = []
            writable = []
            for k, r in enumerate(keep):
                it = r["item"]
                if it.id not in owned:
                    taken = [p.name for p in (items_dir / f"{it.id}{s}" for s in ITEM_SUFFIXES)
                             if p.exists() or p.is_symlink()]
                    if taken:
                        fail(it, "write", f"items/{taken[0]} exists and was not written by a run in this folder; "
                                          "move it away and --resume")
                        continue
                    new_ids.append(it.id)
                writable.append((k, r))
            own.claim(new_ids, suffix)
            owned.update(new_ids)
            for k, r in writable:
                it = r["item"]
                try:
                    one = ex[k]
                    original_size = tuple(r["geometry"].original_size)
                    sal_orig = map_to_original(one.saliency[0].float(), r["geometry"], size=r["shown"])
                    metrics = _item_metrics(sal_orig, it, r["gt_mask"], opts, original_size) if opts.metrics else {}
                    scores = {name: v[0].tolist() for name, v in one.scores.items()}
                except Exception as e:
                    fail(it, "metrics", _message(e))
                    continue
                t1 = time.perf_counter()
                try:
                    original = np.asarray(r["image"], dtype=np.uint8)
                    with owned_tmp(items_dir / f"{it.id}_overlay.png", own.tag) as tmp:
                        drawn, value_range, note = figures.drawn_saliency(one, 0, sal_orig)  # degenerate: flat
                        figures.save_overlay(tmp, original, drawn, value_range=value_range,
                                             note=note and f"degenerate explanation: {note}")
                    thumb = r["image"].copy()
                    thumb.thumbnail((opts.thumb_size, opts.thumb_size))
                    with owned_tmp(items_dir / f"{it.id}_thumb.png", own.tag) as tmp:
                        thumb.save(tmp, format="PNG")
                    with owned_tmp(items_dir / f"{it.id}.npz", own.tag) as tmp:
                        one.save(tmp)
                except OSError:
                    raise  # the output folder itself failed (full, read-only): stop the run
                except Exception as e:
                    for sfx in ITEM_SUFFIXES:
                        (items_dir / f"{it.id}{sfx}").unlink(missing_ok=True)
                    fail(it, "write", _message(e))
                    continue
                tgt = one.target[0]
                reason = one.degenerate_reason(0)
                rec = {
                    "id": it.id,
                    "path": it.rel,
                    "file": str(it.path),
                    "target": tgt,
                    "target_names": [_name(c, class_names) for c in tgt],
                    "class_name": target_text(tgt, [_name(c, class_names) for c in tgt]),
                    "label": r["label"],
                    "label_name": None if r["label"] is None else (
                        target_text(r["label"], [_name(c, class_names) for c in r["label"]]) if isinstance(r["label"], list)
                        else _name(r["label"], class_names)),
                    "predicted": r["pred"],
                    "predicted_name": _name(r["pred"], class_names),
                    "scores": scores,
                    "head": one.head,
                    "low_confidence": low_confidence(scores.get("clean")),
                    "degenerate": reason is not None,
                    "degenerate_reason": reason,
                    "metrics": metrics,
                    "box": list(it.box) if it.box is not None else None,
                    "mask": str(it.mask) if it.mask is not None else None,
                    "original_size": list(r["geometry"].original_size),
                    # Where the model input lies in the original image (io.Geometry): lets a
                    # later pass (mperturb evaluate) map the saved saliency back exactly.
                    "geometry": {"original_size": list(r["geometry"].original_size),
                                 "resized_size": list(r["geometry"].resized_size),
                                 "crop_box": list(r["geometry"].crop_box)},
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
                if rec["low_confidence"] and settings.model == "demo" and not noted["demo"] and not opts.quiet \
                        and ctx.is_main:
                    noted["demo"] = True
                    tqdm.write(DEMO_NOTE, file=sys.stderr)
                if not show and not opts.quiet:  # logs: one line per finished item, as it finishes
                    p = scores.get("clean")
                    print(escape_text(
                        f"mperturb run{f' rank {ctx.rank}' if ctx.enabled else ''}: "
                        f"[{summary.done_now + summary.done_before}/{len(mine)}] {it.rel}: "
                        f"target {rec['class_name']}" + (f", p clean {figures.format_p(p)}" if isinstance(p, float) else "")
                        + (f" (low confidence: p < {LOW_CONFIDENCE:g})" if rec["low_confidence"] else "")
                        + (f"; {reason}" if reason else "") + f" ({per_item:.1f}s)"), file=sys.stderr, flush=True)

        for start in range(0, len(todo), opts.batch_size):
            batch = todo[start : start + opts.batch_size]
            ready: list[dict[str, Any]] = []
            for it in batch:
                if it.error:
                    fail(it, "source", it.error)
                    continue
                try:
                    # Decoded at what the model input and a bounded overlay need (JPEG draft,
                    # early box reduction); figures and metrics at most OVERLAY_MAX_SIDE a side.
                    image = load_image(it.path, min_size=lambda hw: decode_size(hw, prep))
                    x, geometry = preprocess(image, prep)
                    image = overlay_base(image)
                    shown = (image.height, image.width)
                    gt_mask = None
                    if it.mask is not None and opts.metrics:
                        gt_mask = _load_mask(it.mask, shown)
                except (MeaningfulPerturbationError, OSError, ValueError) as e:
                    fail(it, "load", _message(e))
                    continue
                ready.append({"item": it, "image": image, "x": x, "geometry": geometry, "gt_mask": gt_mask,
                              "shown": shown})
            if ready:
                run_batch(ready)
        bar.close()
        summary.seconds = time.perf_counter() - t_start
        summary.failures = my_failures
        # All ranks done -> rank 0 merges (idempotent, dedupes by id).
        ctx.barrier()
        if ctx.is_main:
            results, failures = merge_results(out)
            summary.results, summary.failure_records = results, failures
            summary.failures = len(failures)
            if opts.report:
                from .report import write_report

                summary.report_path = write_report(out)
        summary.done_now = ctx.gather_sum(summary.done_now)
        summary.not_retried = ctx.gather_sum(summary.not_retried)
        ctx.barrier()
        return summary
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def summarise(summary: RunSummary) -> str:
    """A few lines for the end of a run: counts, throughput, mean scores and metrics."""
    lines = [
        f"mperturb run: {len(summary.results)} of {summary.total} item(s) done "
        f"({summary.done_now} now, {summary.done_before} already), {summary.failures} failure(s)"
        + (f", {summary.world_size} processes" if summary.world_size > 1 else "")
    ]
    if summary.not_retried:
        lines.append(f"  {summary.not_retried} item(s) failed in an earlier run and were not retried "
                     "(pass --retry-failures with --resume; see failures.jsonl)")
    low = sum(1 for r in summary.results if r.get("low_confidence"))
    flat = sum(1 for r in summary.results if r.get("degenerate"))
    if low or flat:
        lines.append(f"  {low} low-confidence prediction(s) (p clean < {LOW_CONFIDENCE:g}), {flat} degenerate "
                     "explanation(s) (no region found that changes the score); see results.jsonl")
    if summary.done_now and summary.seconds > 0:
        lines.append(f"  this run: {summary.seconds:.1f} s, {summary.done_now / summary.seconds:.2f} items/s")
    from .report import collect_columns

    for name, values in collect_columns(summary.results).items():
        vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if vals:
            lines.append(f"  mean {name}: {sum(vals) / len(vals):.4f} (n={len(vals)})")
    return "\n".join(lines)
