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

Each explained image gets one line on stderr: ``<file>: target <classes>, p clean <p>, masked
<p> ... (<seconds>) -> <out>/<stem>_*``. Classes are joined with `` + `` (the separator of the
panel's ``p(a + b)``), never with a comma: WordNet-style names hold commas (``tabby, tabby
cat``) and ``--target`` splits on commas, so when a shown name has one the line adds the
classes' ``--target`` spelling, e.g. ``target tabby, tabby cat + Egyptian cat (--target
281,285)``. Probabilities print with three decimals, or two significant digits below 0.0005
(``4.5e-04``; :func:`~meaningful_perturbation.figures.format_p`), never as ``0.000``.
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

from ..errors import ConfigError, InputError, MeaningfulPerturbationError, ModelError
from ..demo import DEMO_NOTE
from ..explanation import LOW_CONFIDENCE, low_confidence
from ..targets import clean_scores, target_from_option
from .options import (RunSettings, add_method_options, add_model_options, build_run_settings, check_masker_setting,
                      flush_device_note, method_overrides)
from .._atomic import atomic_write_text, error_files, on_path, os_error_text
from .._terminal import escape_text, naming_images, target_text
from ..figures import format_p

__all__ = ["add_parser", "run", "safe_stem", "target_text"]

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


def sweep_readout(scores: dict[str, Any]) -> str:
    """The readout of an ``extremal-sweep`` for one image (``scores`` of that image, lists and
    floats): its sufficient area and the curve's first and last rung, e.g. ``sufficient area
    7.1% (curve 0.168 -> 0.977 over 12 areas)``; ``none`` for a NaN (degenerate) area."""
    suff, curve = scores.get("sufficient_area"), scores.get("masked")
    if isinstance(suff, list):
        suff = suff[0] if suff else None
    text = "sufficient area " + ("none" if suff is None or suff != suff else f"{float(suff):.1%}")
    if isinstance(curve, list) and curve:
        text += f" (curve {format_p(curve[0])} -> {format_p(curve[-1])} over {len(curve)} areas)"
    return text


def masked_readout(masked: list, extra: dict[str, Any]) -> str:
    """The perturbed input's probability: one value, or one per area (``0.871 / 0.902 at 5% /
    10%``) when a call optimised several (``extremal``, ``extremal-channels``); each as
    :func:`~meaningful_perturbation.figures.format_p`."""
    values = masked[0] if masked and isinstance(masked[0], list) else masked
    areas = extra.get("areas")
    if isinstance(areas, list) and len(areas) == len(values) > 1:
        return " / ".join(format_p(v) for v in values) + " at " + " / ".join(f"{100 * a:g}%" for a in areas)
    return format_p(values[0])


def area_summary(extra: dict[str, Any]) -> dict[str, Any]:
    """Areas asked for and reached, per mask, of a one-image explanation (``extremal``,
    ``extremal-sweep``): ``areas``, ``achieved_area``, ``area_missed`` and, for a sweep,
    ``mask_area``, ``start`` and ``probe_passes``."""
    out = {}
    for key in ("areas", "achieved_area", "area_missed", "mask_area", "start", "probe_passes"):
        if key in extra:
            v = extra[key]
            out[key] = v[0] if key in ("achieved_area", "area_missed") and isinstance(v, list) and v else v
    return out


def _finite(v: Any) -> Any:
    """``v`` with every NaN float replaced by ``None`` (nested lists and dicts)."""
    if isinstance(v, float):
        return None if v != v else v
    if isinstance(v, list):
        return [_finite(e) for e in v]
    if isinstance(v, dict):
        return {k: _finite(e) for k, e in v.items()}
    return v


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


#: What each perturbation does to the region it removes, for the panel's titles.
_VERB = {"blur": "blurred", "fade": "faded out", "noise": "replaced by noise", "constant": "set to the mean colour"}


def _verb(kind: str) -> str:
    return _VERB.get(kind, f"perturbed ({kind})")


def _panel_tiles(ex: Any, x: torch.Tensor, k: int) -> tuple[torch.Tensor | None, torch.Tensor, str, str]:
    """The panel's third and fourth tiles for mask ``k`` of image 0: images and labels.

    Mask-learning presets: the perturbed input the optimiser scored (the primary game's
    keep-mask blended with its levels) and the region the game is about, as a mask to
    multiply the input with: the deletion game shows the *deleted* region (``1 − keep``),
    the preservation game (and ``dual``, whose primary game it is) the *kept* region
    (``keep``). Baselines learn no keep-mask: no perturbed input, and the input × their
    normalised saliency.

    Returns:
        ``(perturbed (1, C, H, W) or None, region (1, 1, H, W), perturbed label, region label)``.
    """
    from ..methods import get_method
    from ..methods.common import perturbed_input

    mask = ex.masks[:1, k : k + 1].float()
    if get_method(ex.method).perturbation_levels is None:
        return None, mask, "perturbed input\n(none: no learned mask)", "input × saliency\n(normalised)"
    img = perturbed_input(x, mask, ex.config, seed=int(ex.extra.get("seed", 0)), method=ex.method)[:, 0].cpu()
    verb = _verb(ex.config.get("perturbation", "?"))
    if ex.config.get("game", "delete") == "delete":
        return img, 1 - mask, f"perturbed input\n(deletion game: deleted region {verb})", \
            "deleted region\n(what the mask removed)"
    return img, mask, f"perturbed input\n(preservation game: all but the kept region {verb})", \
        "kept region\n(what the mask kept)"


def _p_label(names: list[str], head: str) -> str:
    """``p(cat)``; several classes: ``p(cat + dog)`` (softmax: the probability of any of them),
    ``score(cat + dog)`` for a sigmoid head (a sum of independent probabilities)."""
    what = " + ".join(names)
    return f"score({what})" if len(names) > 1 and head.startswith("sigmoid") else f"p({what})"


def _panel_columns(ex: Any, x: torch.Tensor, names: list[str], to_image: Any) -> list[tuple[str, Any]]:
    """The panel's image columns after original and saliency, for image 0: ``(title, image)``.

    Extremal presets: one column per area (an area sweep of more than 5 areas: 4 of them,
    evenly spaced along the ladder, :func:`_shown_areas`), the perturbed input scored for that
    area, titled with the region's game ("kept region" / "deleted region"), its area in % of
    the image, the target area and the target's probability on it. The area is the one the
    summary (``area``) and the :class:`~meaningful_perturbation.AreaWarning` report:
    ``extra["achieved_area"]`` (the share of pixels where the optimised mask's region exceeds
    ½); an area sweep draws its nested masks, whose exact area is ``extra["mask_area"]``, and
    names the optimised mask's ``achieved_area`` beside it. Other mask-learning
    presets: the perturbed input (with that probability) and the deleted / kept region
    (:func:`_panel_tiles`). Baselines: an empty tile and input × saliency.

    Args:
        ex: the explanation; x: ``(1, C, H, W)`` normalised input on the optimiser's device;
        names: the target's class names; to_image: ``(C, H, W)`` normalised tensor → the
            ``(H, W, 3)`` uint8 image shown.
    """
    p = _p_label(names, ex.head)
    masked = ex.scores.get("masked")
    areas = ex.extra.get("areas")
    if getattr(ex, "channel_masks", None) is not None:
        return _channel_columns(ex, x, p, to_image)
    if isinstance(areas, list) and len(areas) > 0 and masked is not None:
        region_word = "deleted" if ex.config.get("game", "delete") == "delete" else "kept"
        achieved, mask_area = ex.extra.get("achieved_area"), ex.extra.get("mask_area")
        cols = []
        for k in _shown_areas(len(areas)):
            a = areas[k]
            img, region, _, _ = _panel_tiles(ex, x, k)
            verb = _verb(ex.config.get("perturbation", "?"))
            rest = "region" if region_word == "deleted" else "rest"
            # The region's area as the summary and the area warning give it (pixels above ½).
            reached = float(achieved[0][k]) if isinstance(achieved, list) and achieved else float((region > 0.5).float().mean())
            if ex.method == "extremal-sweep" and isinstance(mask_area, list) and len(mask_area) == len(areas):
                head = (f"{region_word} region: {float(mask_area[k]):.1%} of image\n"
                        f"(optimised mask reached {reached:.1%}; {rest} {verb})")
            else:
                head = f"{region_word} region: {reached:.1%} of image\n(target {float(a):.1%}; {rest} {verb})"
            cols.append((f"{head}\n{p} = {format_p(masked[0, k])}", to_image(img[0])))
        return cols
    img, region, perturbed_label, region_label = _panel_tiles(ex, x, 0)
    if img is not None and masked is not None:
        perturbed_label += f"\n{p} = {format_p(masked[0, 0])}"
    shown = to_image(x[0].cpu(), region[0].cpu().clamp(0, 1))
    return [(perturbed_label, None if img is None else to_image(img[0])), (region_label, shown)]


#: Channel indices named in a channel column's title (the largest-mask ones first).
CHANNELS_LISTED = 5


def _channel_columns(ex: Any, x: torch.Tensor, p: str, to_image: Any) -> list[tuple[str, Any]]:
    """Channel attribution (``extremal-channels``): one column per channel fraction, the input
    times the normalised activation of the salient channels (kept by preservation, removed by
    deletion), titled with their count, the layer and the target's probability with the
    primary game's channel mask."""
    word = "removed" if ex.config.get("game") == "delete" else "kept"
    layer, total = ex.extra.get("layer", "?"), ex.extra.get("channels", ex.channel_masks.shape[-1])
    masked = ex.scores.get("masked")
    cols = []
    for k, a in enumerate(ex.extra.get("areas", [None] * ex.masks.shape[1])):
        count = len(ex.extra.get("salient_channels", [[[]]])[0][k])
        target = f" (target {float(a):.1%})" if a is not None else ""
        score = f"\n{p} = {format_p(masked[0, k])}" if masked is not None else ""
        chans = ex.extra.get("salient_channels", [[[]]])[0][k]
        listed = ", ".join(map(str, chans[:CHANNELS_LISTED])) + (", ..." if len(chans) > CHANNELS_LISTED else "")
        title = f"{word}: {count} of {total} channels{target}\n[{listed}] of {layer}{score}"
        cols.append((title, to_image(x[0].cpu(), ex.masks[0, k : k + 1].cpu().clamp(0, 1))))
    return cols
#: An area sweep draws this many of its masks (evenly spaced along the ladder, first and last
#: included); the curve beside them shows every area.
MAX_AREA_COLUMNS = 4


def _shown_areas(k: int) -> list[int]:
    """Indices of the areas drawn as columns: all up to 5, else :data:`MAX_AREA_COLUMNS` evenly spaced."""
    if k <= MAX_AREA_COLUMNS + 1:
        return list(range(k))
    return sorted({round(j * (k - 1) / (MAX_AREA_COLUMNS - 1)) for j in range(MAX_AREA_COLUMNS)})


def _sweep_curve(ex: Any, label: str) -> dict[str, Any] | None:
    """Image 0's area–score curve for the panel (``extremal-sweep``), else ``None``."""
    if ex.method != "extremal-sweep":
        return None
    from ..methods.sweep import area_curve

    c = area_curve(ex)
    one = {k: (v[0] if hasattr(v, "shape") else v) for k, v in c.items() if k != "best"}
    one["label"] = label
    return one


def _colorbar_label(ex: Any) -> str:
    if getattr(ex, "channel_masks", None) is not None:
        return "salient channels' activation (sum of maps)"
    if "perturbed" not in ex.scores:
        return "saliency (arbitrary units)"
    if ex.method == "extremal-sweep":
        return "how early the pixel is kept\n(log scale of the area at entry; 1 = first)"
    if isinstance(ex.extra.get("areas"), list) and ex.config.get("saliency_area") is None:
        return "number of area masks covering the pixel"
    return "deleted (1 − mask)" if ex.config.get("game", "delete") == "delete" else "kept (mask)"


def _panel_title(name: str, method: str, ex: Any, names: list[str], scores: dict[str, Any],
                 low: bool, model: str) -> tuple[str, ...]:
    """Two lines: file, method, game and target; the target's probability clean → perturbed."""
    game = ex.config.get("game")
    head = f"{name}: {method}" + (f" ({'deletion' if game == 'delete' else 'preservation' if game == 'preserve' else game} game)" if game else "")
    head += f", model {model}, target {target_text(ex.target[0], names)}"
    clean, masked, whole = scores.get("clean"), scores.get("masked"), scores.get("perturbed")
    p = _p_label(names, ex.head)
    line = f"{p}: clean {format_p(clean)}" if isinstance(clean, float) else ""
    if isinstance(masked, list) and masked and not isinstance(ex.extra.get("areas"), list):
        line += f" → with the mask {format_p(masked[0])}"
    if isinstance(whole, float):
        line += f"; {'every channel removed' if ex.channel_masks is not None else 'whole image perturbed'} {format_p(whole)}"
    if ex.method == "extremal-sweep":
        line += f"; {sweep_readout(scores)}"
    if low:
        line += f"  [low confidence: p < {LOW_CONFIDENCE:g}]"
    return (head, line) if line else (head,)


def _to_hwc_uint8(img: torch.Tensor) -> np.ndarray:
    if img.shape[0] == 1:  # a grey input is shown as grey RGB
        img = img.expand(3, -1, -1)
    return (img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def _check_out_apart(args: list[str], paths: list[Path], planned: list[Path], out: Path) -> None:
    """``--out`` must not be an input folder (the next ``mperturb explain`` of that folder
    would explain these outputs: overlays of overlays), and no output file may be an input
    image (``cat_overlay.png`` beside ``cat.png``: ``--overwrite`` would replace the photo).

    Raises:
        InputError: naming ``--out`` and the folder or file.
    """
    target = out.resolve()
    for a in args:
        if Path(a).is_dir() and Path(a).resolve() == target:
            raise InputError(f"--out: {str(out)!r} is the input folder {a!r}; its overlays and panels would be "
                             "explained as images by the next run on that folder: choose another --out")
    inputs = {p.resolve() for p in paths}
    clash = next((p for p in planned if p.resolve() in inputs), None)
    if clash is not None:
        raise InputError(f"--out: the output file {str(clash)!r} would replace an input image of the same name; "
                         "choose another --out")


def _remove_created(created: list[Path]) -> None:
    """Remove the config.json (and folder) this command created, nothing else; a folder that
    is not empty is kept."""
    for p in created:
        try:
            p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
        except OSError:
            pass


def run(args: argparse.Namespace) -> int:
    """``mperturb explain``; an ``OSError`` on a file under ``--out`` becomes one
    :class:`InputError` naming the file and the fix (see the module docstring)."""
    state: dict[str, list[Path]] = {"new": [], "created": []}
    try:
        return _run(args, state)
    except MeaningfulPerturbationError:
        # A user error before any image's files were written (e.g. --target 9 on a 6-class
        # model): remove the config.json (and folder) this run created, nothing else.
        _remove_created(state["created"])
        raise
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
    from ..models import CLI_OPTION_NAMES, input_dtype, load_model, resolve_model_preprocessing

    settings: RunSettings = build_run_settings(args)
    paths = expand_images(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} exists and is not a folder")
    stems = _unique_stems(paths)
    planned = [out / "config.json"] + [out / f"{s}{suf}" for s in stems for suf in OUTPUT_SUFFIXES]
    _check_out_apart(args.images, paths, planned, out)
    existing = [p for p in planned if p.exists()]
    if existing and not args.overwrite:
        names = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise InputError(
            f"--out: {len(existing)} output file(s) already exist in {str(out)!r} ({names}); "
            "pass --overwrite to replace them or choose another --out"
        )
    loaded = load_model(
        settings.model, weights=settings.weights, trust_code=settings.trust_code, device=settings.device,
        offline=settings.offline, progress=not args.quiet, given=tuple(settings.preprocessing),
    )
    # The model's own preprocessing with the overrides; its channel count checked by one pass.
    prep = resolve_model_preprocessing(
        loaded, settings.preprocessing, device=settings.device, names=CLI_OPTION_NAMES
    )
    class_names = prep.class_names
    layer = settings.config.get("layer")
    if isinstance(layer, str) and isinstance(loaded.model, torch.nn.Module):
        from ..methods.channels import resolve_layer_name

        resolve_layer_name(loaded.model, layer)  # a bad --layer fails before anything is written
    check_masker_setting(settings, loaded.model, prep)  # a masker for another classifier: refused before any write
    flush_device_note()  # every setting, the layer and the masker checked: an error above is the only line
    from ..api import mirror_config

    settings.config = mirror_config(loaded.model, settings.config, settings.overrides)  # flip jitter off for a model that is not mirror-invariant
    device = torch.device(settings.device)
    if isinstance(settings.target, str) and settings.target not in ("top1", "top5"):
        # Check a class name before anything is written (indices need the model's output size).
        target_from_option(settings.target, torch.zeros(1, len(class_names or ()) or 1), class_names)
    # config.json, then the folder, in the order they are removed on a user error (see run()).
    state["created"] = [p for p in (out / "config.json", out) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "config.json",
        {"method": settings.method, "config": settings.config, "settings": settings.to_dict(),
         "preprocessing": prep.to_dict(), "model": settings.model},
    )
    interactive = not args.quiet and sys.stderr.isatty()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    failures = 0
    explained = 0
    head_kind = settings.head
    model_dtype = input_dtype(loaded.model)  # a .half() model gets float16 images
    noted = {"demo": False}
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
        xb = x.unsqueeze(0).to(device=device, dtype=model_dtype)
        # One head for the whole command: read (or checked) on the first image explained and
        # kept. Before any image is done a setting the model contradicts is the user's error
        # (exit 2), and so is the model failing on the first image's clean pass (a wrong input
        # size, a broken model: every image would fail alike); after that an image the model
        # fails on, or whose output contradicts the head, is skipped like an unreadable one
        # (exit 1), as `mperturb run` records a failure.
        clean_pass = True
        try:
            logits, head = clean_scores(loaded.model, xb, head_kind)
            target = target_from_option(settings.target, logits.cpu(), class_names)
            clean_pass = False
            t0 = time.perf_counter()
            with naming_images([path]):  # one image per call: its "image 0" is this file
                ex = explain_fn(
                    loaded.model, xb, target=target, method=settings.method, seed=settings.seed,
                    head=head.kind, progress=interactive, **overrides,
                )
        except (ModelError, ConfigError) as e:
            if clean_pass and isinstance(e, ModelError) and settings.preprocessing.get("input_size") is not None:
                h, w = xb.shape[-2:]
                e = ModelError(f"{e}; the images are fed at {h}x{w} (--input-size): too small, or not the size "
                               "this model takes?")  # the option the user set is the likely cause
                if len(paths) == 1 or not explained:
                    raise e from None
            if len(paths) == 1 or (not explained and (clean_pass or isinstance(e, ConfigError))):
                raise
            failures += 1
            msg = " ".join(str(e).split())
            if isinstance(e, ConfigError) and msg.startswith("head:"):
                how = "given with --head" if settings.head != "auto" else "read from the first image"
                msg = f"--head: its output contradicts the head {head_kind!r} {how} ({msg[len('head:'):].strip()})"
            print(escape_text(f"mperturb: skipping {path}: {msg}"), file=sys.stderr)
            continue
        explained += 1
        head_kind = head.kind
        seconds = time.perf_counter() - t0
        sal = ex.saliency[0].float()
        # Files (on a write error, run() removes those of this image that are new).
        state["new"] = [p for p in (out / f"{stem}{suf}" for suf in OUTPUT_SUFFIXES) if not p.exists()]
        state["created"] = []  # an image's files follow: config.json describes them and stays
        ex.save(out / f"{stem}.npz")
        original = np.asarray(image, dtype=np.uint8)
        areas, pick = ex.extra.get("areas"), ex.config.get("saliency_area")
        drawn = areas.index(pick) if isinstance(areas, list) and pick in areas else 0  # extremal: the area of the saliency
        if ex.method == "extremal-sweep" and isinstance(areas, list):
            drawn = len(areas) // 2  # a middle rung: the smallest collapses by design on small images (docs/sweep.md)
        sal_orig = map_to_original(sal, geometry, size=original.shape[:2])
        reason = ex.degenerate_reason(0)
        # A degenerate explanation is drawn flat, with its reason, in the overlay and the panel.
        shown_orig, value_range, note = figures.drawn_saliency(ex, 0, sal_orig)
        figures.save_overlay(out / f"{stem}_overlay.png", original, shown_orig, value_range=value_range,
                             note=None if note is None else f"degenerate explanation: {note}")
        targets = ex.target[0]
        names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in targets]
        scores = {k: v[0].tolist() for k, v in ex.scores.items()}
        clean = scores.get("clean")
        masked = scores.get("masked")
        low = low_confidence(clean)

        def to_image(t: torch.Tensor, region: torch.Tensor | None = None) -> np.ndarray:
            shown = denormalize(t, prep)
            return _to_hwc_uint8(shown if region is None else shown * region)

        columns = _panel_columns(ex, xb, names, to_image)  # on the device the optimiser ran on
        history = {k: v[:, 0, drawn] for k, v in ex.history.items() if v.dim() == 3 and v.shape[0] > 0}
        p = _p_label(names, ex.head)
        figures.save_panel(
            out / f"{stem}_panel.png",
            original=to_image(x), saliency=figures.drawn_saliency(ex, 0)[0], columns=columns, history=history,
            original_label="original" + (f"\n{p} = {format_p(clean)}" if isinstance(clean, float) else "")
            + (" (low confidence)" if low else ""),
            value_range=value_range, note=reason,
            colorbar_label=_colorbar_label(ex),
            history_title="optimisation" + (f" (area {areas[drawn]:.1%})" if isinstance(areas, list) else ""),
            curve=_sweep_curve(ex, p),
            score_kind=ex.config.get("score") if ex.config.get("score") in figures.SCORE_AXIS_LABELS else None,
            title="\n".join(escape_text(t) for t in
                             _panel_title(path.name, settings.method, ex, names, scores, low, settings.model)),
        )
        _write_json(out / f"{stem}_summary.json", {
            "image": str(path),
            "stem": stem,
            "target": targets,
            "target_names": names if class_names else None,
            "scores": _finite(scores),  # strict JSON: a NaN (degenerate sufficient area) is null
            "head": ex.head,
            "low_confidence": low,
            "degenerate": reason is not None,
            "degenerate_reason": reason,
            "method": settings.method,
            "settings": settings.to_dict(),
            "config": ex.config,
            "preprocessing": prep.to_dict(),
            "model": loaded.spec,
            "seconds": round(seconds, 4),
            "original_size": list(geometry.original_size),
            **({"channels": {key: ex.extra.get(key) for key in ("layer", "channels", "areas", "salient_channels")}
                | {"channel_masks": ex.channel_masks[0].tolist()}} if ex.channel_masks is not None else {}),
            **({"area": area_summary(ex.extra)} if "achieved_area" in ex.extra else {}),
        })
        if low and settings.model == "demo" and not noted["demo"]:
            noted["demo"] = True
            say(DEMO_NOTE)
        say(escape_text(f"{path}: target {target_text(targets, names)}"
            + (f", p clean {format_p(clean)}" if isinstance(clean, float) else "")
            + (f" (low confidence: p < {LOW_CONFIDENCE:g})" if low else "")
            + (f", {sweep_readout(scores)}" if ex.method == "extremal-sweep"
               else f", masked {masked_readout(masked, ex.extra)}" if isinstance(masked, list) and masked else "")
            + (f"; {reason}" if reason else "")
            + f" ({seconds:.1f}s) -> {out / stem}_*"))
        state["new"] = []
    bar.close()
    if not explained:
        _remove_created(state["created"])  # nothing explained: no config.json describing nothing
    if failures:
        print(f"mperturb: {failures} of {len(paths)} image(s) could not be read or explained", file=sys.stderr)
        return 1
    return 0
