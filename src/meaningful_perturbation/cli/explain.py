"""``mperturb explain``: explain images from files, folders or globs and write figures.

Per image ``<stem>`` (the file name without extension, made safe for a file name) the output
folder receives ``<stem>_overlay.png``, ``<stem>_panel.png``, ``<stem>.npz`` and
``<stem>_summary.json``; the folder also gets ``config.json``. Existing files are never
replaced without ``--overwrite``.

Every file is written atomically. A write that fails (disk full, permission denied,
read-only file system, a file where a folder should be) stops the command with one
``--out: cannot write '<file>': <reason>; <fix>`` error (:class:`InputError`), no temporary
file is left behind, and the files of the image in progress that did not exist before it are
removed, so an image's outputs are all there or none of the new ones are. File names are
printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..targets import clean_scores, target_from_option
from .options import RunSettings, add_method_options, add_model_options, build_run_settings, method_overrides
from .._atomic import atomic_write_text, error_files, on_path, os_error_text
from .._terminal import escape_text

__all__ = ["add_parser", "run", "safe_stem"]

OUTPUT_SUFFIXES = ("_overlay.png", "_panel.png", ".npz", "_summary.json")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="explain images and write overlays, panels, .npz and JSON summaries",
        description="Explain the model's prediction for each image and write the results to --out.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    add_model_options(p)
    add_method_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default="mperturb-out", metavar="DIR", help="output folder (default ./mperturb-out)")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-image lines")
    p.set_defaults(func=run)
    return p


def safe_stem(name: str) -> str:
    """A file-name-safe stem: letters, digits, ``._-`` only, no leading dot, never empty.

    Example:
        >>> safe_stem("../my cat (1)")
        'my_cat_1'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem[:120] or "image"


def _unique_stems(paths: list[Path]) -> list[str]:
    stems: list[str] = []
    used: set[str] = {"config"}
    for p in paths:
        base = safe_stem(p.stem)
        stem, k = base, 2
        while stem.lower() in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem.lower())
        stems.append(stem)
    return stems


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _perturbed_input(x: torch.Tensor, mask: torch.Tensor, config: dict[str, Any], *, seed: int = 0) -> torch.Tensor:
    """The panel's perturbed input: :func:`~meaningful_perturbation.methods.common.perturbed_input`.

    Args:
        x: ``(N, C, H, W)`` normalised images; ``mask``: ``(N, 1, H, W)`` keep-mask in [0, 1];
        config: the explanation's config; seed: the run's seed (``ex.extra["seed"]``).

    Returns:
        ``(N, C, H, W)``: exactly the optimiser's ``blend(levels, mask)``.
    """
    from ..methods.common import perturbed_input

    return perturbed_input(x, mask, config, seed=seed)[:, 0]


def _panel_tiles(ex: Any, x: torch.Tensor, k: int) -> tuple[torch.Tensor | None, torch.Tensor, str, str]:
    """The panel's third and fourth tiles for mask ``k`` of image 0: images and labels.

    Mask-learning presets: the perturbed input the optimiser scored (the primary game's
    keep-mask blended with its levels) and the input × keep-mask, labelled with what the game
    does to it. Baselines learn no keep-mask: no perturbed input, and the input × their
    normalised saliency.
    """
    from ..methods import get_method
    from ..methods.common import perturbed_input

    mask = ex.masks[:1, k : k + 1].float()
    if get_method(ex.method).perturbation_levels is None:
        return None, mask, "perturbed input\n(none: no learned mask)", "input × saliency\n(normalised)"
    img = perturbed_input(x, mask, ex.config, seed=int(ex.extra.get("seed", 0)), method=ex.method)[:, 0].cpu()
    kind, game = ex.config.get("perturbation", "?"), ex.config.get("game", "delete")
    area = ex.extra.get("areas")
    suffix = f", area {area[k]:g}" if isinstance(area, list) and k < len(area) else ""
    if game == "delete":
        labels = f"perturbed input\n(deletion game, {kind}{suffix})", "kept region\n(mask = 1: not deleted)"
    else:  # preserve; dual shows its primary, preservation game
        labels = f"perturbed input\n(preservation game, {kind}{suffix})", "preserved region\n(mask = 1)"
    return img, mask, *labels


def _to_hwc_uint8(img: torch.Tensor) -> np.ndarray:
    if img.shape[0] == 1:  # a grey input is shown as grey RGB
        img = img.expand(3, -1, -1)
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def run(args: argparse.Namespace) -> int:
    """``mperturb explain``; an ``OSError`` on a file under ``--out`` becomes one
    :class:`InputError` naming the file and the fix (see the module docstring)."""
    state: dict[str, list[Path]] = {"new": []}
    try:
        return _run(args, state)
    except OSError as e:
        for p in state["new"]:  # this image's files that did not exist before it
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        out = Path(args.out)
        files = error_files(e)
        if any(on_path(f, out) for f in files):
            creating = not out.is_dir() or any(f == out for f in files)
            raise InputError("--out: " + os_error_text(e, "cannot create folder" if creating else "cannot write",
                                                      "--out")) from e
        raise


def _run(args: argparse.Namespace, state: dict[str, list[Path]]) -> int:
    from .. import explain as explain_fn
    from .. import figures
    from ..io import decode_size, denormalize, expand_images, load_image, map_to_original, overlay_base, preprocess
    from ..methods.common import input_stats_overrides
    from ..models import CLI_OPTION_NAMES, load_model, resolve_model_preprocessing

    settings: RunSettings = build_run_settings(args)
    paths = expand_images(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} exists and is not a folder")
    stems = _unique_stems(paths)
    planned = [out / "config.json"] + [out / f"{s}{suf}" for s in stems for suf in OUTPUT_SUFFIXES]
    existing = [p for p in planned if p.exists()]
    if existing and not args.overwrite:
        names = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise InputError(
            f"--out: {len(existing)} output file(s) already exist in {str(out)!r} ({names}); "
            "pass --overwrite to replace them or choose another --out"
        )
    loaded = load_model(
        settings.model, weights=settings.weights, trust_code=settings.trust_code, device=settings.device,
        offline=settings.offline, progress=not args.quiet,
    )
    # The model's own preprocessing with the overrides; its channel count checked by one pass.
    prep = resolve_model_preprocessing(
        loaded, settings.preprocessing, device=settings.device, names=CLI_OPTION_NAMES
    )
    class_names = prep.class_names
    device = torch.device(settings.device)
    if isinstance(settings.target, str) and settings.target not in ("top1", "top5"):
        # Check a class name before anything is written (indices need the model's output size).
        target_from_option(settings.target, torch.zeros(1, len(class_names or ()) or 1), class_names)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "config.json",
        {"method": settings.method, "config": settings.config, "settings": settings.to_dict(),
         "preprocessing": prep.to_dict(), "model": settings.model},
    )
    interactive = not args.quiet and sys.stderr.isatty()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    failures = 0
    overrides = input_stats_overrides(settings.config, method_overrides(settings), prep.mean, prep.std)
    from tqdm.auto import tqdm

    bar = tqdm(list(zip(paths, stems)), desc="images", unit="img", disable=not interactive)
    for path, stem in bar:
        try:
            image = load_image(path, min_size=lambda hw: decode_size(hw, prep))
        except InputError as e:
            failures += 1
            msg = " ".join(str(e).split()) or type(e).__name__
            line = f"mperturb: skipping {path}: {msg}" if str(path) not in msg else f"mperturb: skipping: {msg}"
            print(escape_text(line), file=sys.stderr)
            continue
        x, geometry = preprocess(image, prep)
        # Overlays at a bounded resolution (OVERLAY_MAX_SIDE): keep a small uint8 copy and drop
        # the full image, so a 12000 x 12000 input never gets a full-size float map or blend.
        image = overlay_base(image)
        xb = x.unsqueeze(0).to(device)
        logits, head = clean_scores(loaded.model, xb, settings.head)
        target = target_from_option(settings.target, logits.cpu(), class_names)
        t0 = time.perf_counter()
        ex = explain_fn(
            loaded.model, xb, target=target, method=settings.method, seed=settings.seed,
            head=head.kind, progress=interactive, **overrides,
        )
        seconds = time.perf_counter() - t0
        sal = ex.saliency[0].float()
        # Files (on a write error, run() removes those of this image that are new).
        state["new"] = [p for p in (out / f"{stem}{suf}" for suf in OUTPUT_SUFFIXES) if not p.exists()]
        ex.save(out / f"{stem}.npz")
        original = np.asarray(image, dtype=np.uint8)
        sal_orig = map_to_original(sal, geometry, size=original.shape[:2])
        figures.save_overlay(out / f"{stem}_overlay.png", original, sal_orig)
        shown = denormalize(x, prep)
        areas, pick = ex.extra.get("areas"), ex.config.get("saliency_area")
        drawn = areas.index(pick) if isinstance(areas, list) and pick in areas else 0  # extremal: the area of the saliency
        perturbed, keep, perturbed_label, kept_label = _panel_tiles(ex, xb, drawn)  # on the device the optimiser ran on
        perturbed = None if perturbed is None else _to_hwc_uint8(denormalize(perturbed[0], prep))
        preserved = shown * keep[0].clamp(0, 1)
        history = {k: v[:, 0, drawn] for k, v in ex.history.items() if v.dim() == 3 and v.shape[0] > 0}
        targets = ex.target[0]
        names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in targets]
        figures.save_panel(
            out / f"{stem}_panel.png",
            original=_to_hwc_uint8(shown), saliency=sal.numpy(), perturbed=perturbed,
            preserved=_to_hwc_uint8(preserved), history=history, labels=(perturbed_label, kept_label),
            title=escape_text(f"{path.name}: {settings.method}, target {', '.join(names)}"),
        )
        scores = {k: v[0].tolist() for k, v in ex.scores.items()}
        _write_json(out / f"{stem}_summary.json", {
            "image": str(path),
            "stem": stem,
            "target": targets,
            "target_names": names if class_names else None,
            "scores": scores,
            "head": ex.head,
            "method": settings.method,
            "settings": settings.to_dict(),
            "config": ex.config,
            "preprocessing": prep.to_dict(),
            "model": loaded.spec,
            "seconds": round(seconds, 4),
            "original_size": list(geometry.original_size),
        })
        clean = scores.get("clean")
        masked = scores.get("masked")
        say(escape_text(f"{path}: target {', '.join(names)}"
            + (f", p clean {clean:.3f}" if isinstance(clean, float) else "")
            + (f", masked {masked[0]:.3f}" if isinstance(masked, list) and masked else "")
            + f" ({seconds:.1f}s) -> {out / stem}_*"))
        state["new"] = []
    bar.close()
    if failures:
        print(f"mperturb: {failures} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0
