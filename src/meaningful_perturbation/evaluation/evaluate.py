"""``mperturb evaluate``: the papers' evaluations over their data sets, on top of the runner.

Output folder ``OUT``::

    OUT/evaluate.json    what was asked (protocol, data set, parameters): resume checks it
    OUT/manifest.jsonl   one line per (image, class) pair, streamed from the annotations
    OUT/run/             the runner's folder (items/<id>.npz, results.jsonl, ...; docs/runner.md)
    OUT/scores.jsonl     the protocol's score of every pair (one JSON line each)
    OUT/score_failures.jsonl  pairs explained but not scorable (e.g. a damaged saved .npz), with
                         the reason; ``--resume`` explains them again
    OUT/results.json     the final numbers; OUT/results.md the same as a Markdown table
    OUT/protocol.json    the resolved protocol parameters, each with its source

Steps: (1) the data set's annotations are streamed into ``manifest.jsonl`` (no image is
decoded; where an XML gives the size, the image file's header is read to check it); (2) :func:`~meaningful_perturbation.runner.run_directory` explains every pair
(resumable, torchrun-sharded, progress bar); (3) rank 0 scores each saved explanation — the
saliency mapped back onto the original image (:func:`~meaningful_perturbation.io.map_to_original`,
boxes are in original pixels) — appending one line per pair to ``scores.jsonl`` (so an
interrupted scoring pass resumes too), then writes the results. Per-pair scores are
deterministic, so a resumed evaluation gives the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .._atomic import atomic_open, atomic_write_text
from .._terminal import escape_text
from ..errors import ConfigError, InputError, MeaningfulPerturbationError
from ..datasets._rle import rle_decode, rle_string
from .protocols import DATASETS, PROTOCOLS, resolve_protocol

__all__ = ["EvaluateOptions", "EvaluateSummary", "evaluate", "write_manifest", "segments_mask", "aggregate",
           "dataset_records", "boxes_per_alpha"]

STATE_FILE = "evaluate.json"
MANIFEST = "manifest.jsonl"
RUN_DIR = "run"
SCORES = "scores.jsonl"
SCORE_FAILURES = "score_failures.jsonl"
OWN_FILES = (STATE_FILE, MANIFEST, SCORES, "results.json", "results.md", "protocol.json", SCORE_FAILURES)
_FORMAT = "meaningful-perturbation/evaluate"


@dataclass
class EvaluateOptions:
    """What ``mperturb evaluate`` was asked to do besides the explain settings."""

    protocol: str
    data: str
    out: str
    dataset: str | None = None  # default: the protocol's first data set
    images: str | None = None
    annotations: str | None = None
    synsets: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None  # only the first N pairs (a quick look; not the papers' numbers)
    batch_size: int = 8
    resume: bool = False
    force: bool = False
    quiet: bool = False


@dataclass
class EvaluateSummary:
    results: dict[str, Any]
    markdown: str
    out: Path
    rank: int = 0
    world_size: int = 1
    failures: int = 0


# ------------------------------------------------------------------------------- the data
def dataset_records(dataset: str, opts: EvaluateOptions, proto: dict[str, Any], info: dict[str, Any]) -> Iterator[dict]:
    """The data set's records (see :mod:`meaningful_perturbation.datasets`), streamed."""
    from ..datasets import iter_coco, iter_imagenet, iter_voc

    # Options the data set's layout does not use are refused, not silently ignored.
    unused = {"voc07": ("synsets", "images", "annotations"), "coco14": ("synsets",)}.get(dataset, ())
    for name in unused:
        if getattr(opts, name) is not None:
            raise ConfigError(f"--{name}: the {DATASETS.get(dataset, dataset)} layout does not use it (protocol "
                              f"{opts.protocol}); got {getattr(opts, name)!r}; leave it out")
    if dataset == "imagenet":
        return iter_imagenet(opts.data, images=opts.images, annotations=opts.annotations, synsets=opts.synsets,
                             info=info)
    if dataset == "voc07":
        return iter_voc(opts.data, split=proto["params"].get("voc_split", "test"), info=info)
    return iter_coco(opts.data, annotations=opts.annotations, images=opts.images, info=info)


def write_manifest(records: Iterable[dict[str, Any]], path: str | os.PathLike[str], limit: int | None = None,
                   check_images: bool = True) -> int:
    """Write one runner manifest line per record (``path``, ``target`` and the annotations under
    ``eval``), atomically, consuming ``records`` one at a time. Returns the number of lines.

    With ``check_images``, the image files are looked up until one exists (one ``stat`` when the
    folder is right): a missing image only fails its own pairs later (``failures.jsonl``), but a
    folder holding none of them is refused here, before anything is explained.

    Raises:
        InputError: no record at all; or (``check_images``) none of the images exists.
    """
    n = 0
    found = not check_images
    first_missing = last = None
    with atomic_open(path, "w") as f:
        for rec in records:
            if limit is not None and n >= limit:
                break
            row = {"path": rec["path"], "target": int(rec["target"]),
                   "eval": {k: v for k, v in rec.items() if k not in ("path", "target")}}
            f.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
            n += 1
            if not found and rec["path"] != last:
                last = rec["path"]
                found = os.path.isfile(str(last))
                if not found and first_missing is None:
                    first_missing = last
        if n == 0:
            raise InputError("--data: the annotations hold no (image, class) pair to evaluate")
        if not found:
            raise InputError(f"--images: none of the image files the annotations name exists (the first: "
                             f"{first_missing}); point --data (or --images) at the folder that holds them")
    return n


def _manifest_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# --------------------------------------------------------------------- ground-truth masks
def _rle_string(s: str) -> list[int]:
    """COCO's compressed RLE string → run lengths (see :func:`meaningful_perturbation.datasets._rle.rle_string`)."""
    return rle_string(s)


def segments_mask(segments: list[Any], boxes: list[list[float]], original: tuple[int, int],
                  shape: tuple[int, int]) -> np.ndarray:
    """Union of COCO instance segmentations at ``shape`` ``(h, w)`` of an ``original`` ``(H, W)``
    image: polygons (``[[x0, y0, x1, y1, ...], ...]``, pixel-edge coordinates), uncompressed
    RLE (``{"counts": [...], "size": [H, W]}``, crowd regions) or compressed RLE strings. An
    instance without a segmentation counts with its box.

    Raises:
        InputError: a malformed segmentation (the loader checks them all before anything is
            explained, :func:`meaningful_perturbation.datasets._rle.check_segmentation`)."""
    from PIL import Image, ImageDraw

    h, w = shape
    H, W = original
    sy, sx = h / H, w / W
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    out = np.zeros((h, w), dtype=bool)
    for seg, box in zip(segments, boxes):
        if isinstance(seg, list) and seg:
            for poly in seg:
                pts = [(float(poly[k]) * sx, float(poly[k + 1]) * sy) for k in range(0, len(poly) - 1, 2)]
                if len(pts) >= 3:
                    draw.polygon(pts, fill=1, outline=1)
        elif isinstance(seg, dict):
            m = rle_decode(seg)
            rh, rw = m.shape
            if (rh, rw) != (h, w):
                m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))
            out |= m
        else:
            x0, y0, x1, y1 = box
            out[max(0, int(math.floor(y0 * sy))) : max(0, int(math.ceil(y1 * sy))),
                max(0, int(math.floor(x0 * sx))) : max(0, int(math.ceil(x1 * sx)))] = True
    return out | np.asarray(canvas, dtype=bool)


def _boxes_mask(boxes: list[list[float]], original: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Union of half-open boxes (original pixels) as an ``(h, w)`` mask of ``shape``: a pixel is
    in when its centre lies in a box."""
    h, w = shape
    H, W = original
    ys = (np.arange(h) + 0.5) * (H / h)
    xs = (np.arange(w) + 0.5) * (W / w)
    out = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        out |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return out


# ----------------------------------------------------------------------------- scoring
def _saliency_on_original(run_dir: Path, rec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor,
                                                                          tuple[int, int]]:
    """``(saliency at the model input, saliency on the original image, original (H, W))``; the
    latter at most ``OVERLAY_MAX_SIDE`` a side (boxes and tolerances are scaled with it)."""
    from ..explanation import Explanation
    from ..io import map_to_original
    from ..io.preprocessing import OVERLAY_MAX_SIDE, Geometry, bounded_size

    ex = Explanation.load(run_dir / "items" / f"{rec['id']}.npz")
    sal = ex.saliency[0].float()
    g = rec.get("geometry")
    if not isinstance(g, dict):
        raise InputError(f"{run_dir / 'results.jsonl'}: item {rec['id']} has no geometry (written by an older "
                         "mperturb run); start the evaluation again with --force")
    geom = Geometry(tuple(g["original_size"]), tuple(g["resized_size"]), tuple(g["crop_box"]))
    original = (int(geom.original_size[0]), int(geom.original_size[1]))
    # The border a centre crop cut off was not looked at: it gets the map's minimum, so it can
    # neither hold the maximum (pointing) nor pass a threshold the map itself does not.
    on = map_to_original(sal, geom, fill=float(sal.min()), size=bounded_size(original, OVERLAY_MAX_SIDE))
    return sal, on, original


def boxes_per_alpha(saliency: torch.Tensor, rule: str, alphas: list[float]) -> torch.Tensor:
    """The box :func:`~meaningful_perturbation.metrics.saliency_to_box` gives for every α, at once.

    The tight box around ``{u : s(u) ≥ t}`` spans the rows whose maximum reaches ``t`` and the
    columns whose maximum does, so one pass over the map (row and column maxima, and for the
    energy rule one sort) serves every α: ``O(HW log HW + A(H + W))`` instead of ``A`` passes.
    Same thresholds as :func:`~meaningful_perturbation.metrics.threshold_saliency` (``component="all"``).

    Args:
        saliency: ``(H, W)`` float.
        rule: ``"value"``, ``"energy"`` or ``"mean"``.
        alphas: the α values.

    Returns:
        ``(A, 4)`` long half-open boxes ``(x0, y0, x1, y1)``; ``(0, 0, 0, 0)`` where nothing survives.

    Example:
        >>> s = torch.zeros(4, 5); s[1:3, 2:4] = 1.0; s[0, 0] = 0.4
        >>> boxes_per_alpha(s, "value", [0.5, 0.3]).tolist()
        [[2, 1, 4, 3], [0, 0, 4, 3]]
    """
    s = saliency.double()
    h, w = s.shape
    a = torch.tensor([float(v) for v in alphas], dtype=torch.float64)
    if rule == "energy":
        s = s.clamp_min(0)
        v = torch.sort(s.reshape(-1), descending=True).values
        cum = v.cumsum(0)
        total = cum[-1]
        k = torch.searchsorted(cum, a * total)  # first position whose cumulative energy reaches α·total
        cut = v[k.clamp_max(v.numel() - 1)]
        t = torch.where(total > 0, cut, torch.full_like(cut, -math.inf))
    elif rule == "value":
        t = a * s.max()
    else:
        t = a * s.mean()
    rows = s.amax(dim=1)[None, :] >= t[:, None]  # (A, H)
    cols = s.amax(dim=0)[None, :] >= t[:, None]  # (A, W)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


class _Scorer:
    """Scores one (image, class) pair under a protocol; holds the model for the deletion game."""

    def __init__(self, proto: dict[str, Any], run_dir: Path, settings: Any, model: Any = None, prep: Any = None,
                 device: Any = None, head: str = "auto") -> None:
        self.proto, self.p, self.run_dir = proto, proto["params"], run_dir
        self.settings, self.model, self.prep, self.device, self.head = settings, model, prep, device, head

    def __call__(self, row: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
        ev = row["eval"]
        out: dict[str, Any] = {"id": rec["id"], "image": ev.get("image"), "target": row["target"],
                               "class": ev.get("class"), "degenerate": bool(rec.get("degenerate"))}
        name = self.proto["name"]
        policy = self.p.get("degenerate", "score")
        if out["degenerate"] and policy == "skip":
            out["skipped"] = True  # counted, not scored (--param degenerate=skip)
            return out
        miss = out["degenerate"] and policy == "miss"
        if name == "deletion-game":
            out.update(self._deletion(row, rec))
            if miss:
                out["areas"] = {k: ("not reached" if v is not None else None) for k, v in out["areas"].items()}
            return out
        sal, on, original = _saliency_on_original(self.run_dir, rec)
        h, w = on.shape
        sy, sx = h / original[0], w / original[1]
        if name == "imagenet-loc":
            from ..metrics import box_iou, saliency_to_box

            H, W = original  # boxes clipped to the image (as the VOC masks are), then scaled
            gt = torch.tensor([[min(max(b[0], 0.0), W) * sx, min(max(b[1], 0.0), H) * sy,
                                min(max(b[2], 0.0), W) * sx, min(max(b[3], 0.0), H) * sy] for b in ev["boxes"]],
                              dtype=torch.float64)
            correct = {}
            for rule in self.p["rules"]:
                alphas = self.p["alphas"][rule]
                if self.p["component"] == "all":
                    boxes = boxes_per_alpha(on, rule, alphas)
                else:  # the largest connected component: one labelling per α
                    boxes = torch.cat([saliency_to_box(on[None], rule, float(a), component=self.p["component"])
                                       for a in alphas])
                iou = box_iou(boxes.double()[:, None], gt[None]).amax(dim=1)  # (A,) best IoU over GT boxes
                correct[rule] = [0 if miss else int(v) for v in (iou >= self.p["iou_threshold"]).tolist()]
            out["heldout"] = bool(row["_index"] % self.p["heldout_every"] == 0)
            out["correct"] = correct
            return out
        # pointing
        from ..metrics import pointing_game

        if ev.get("segments") is not None:
            gt = segments_mask(ev["segments"], ev["boxes"], original, (h, w))
        else:
            gt = _boxes_mask(ev["boxes"], original, (h, w))
        tol = min(float(self.p["tolerance_px"]) * min(sy, sx), math.hypot(h, w) + 1.0)
        res = pointing_game(on[None], torch.from_numpy(gt)[None], tolerance=tol)
        out["hit"] = (False if miss else bool(res.hits[0])) if bool(res.valid[0]) else None
        out["point_yx"] = [round(float(v) / s, 2) for v, s in zip(res.points[0].tolist(), (sy, sx))]
        out["gt_fraction"] = round(float(gt.mean()), 6)
        out["difficult"] = bool(gt.mean() < self.p["difficult_area_fraction"]
                                and int(ev.get("classes_in_image", 1)) >= self.p["difficult_min_classes"])
        return out

    def _deletion(self, row: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
        from ..explanation import Explanation
        from ..io import load_image, preprocess
        from ..metrics import deletion_game_box

        sal = Explanation.load(self.run_dir / "items" / f"{rec['id']}.npz").saliency[0].float()
        x, _ = preprocess(load_image(row["path"]), self.prep)
        th = [i / (self.p["thresholds"] - 1) for i in range(self.p["thresholds"])]
        res, p_clean, p_blur = deletion_game_box(
            self.model, x[None].to(self.device), sal[None].to(self.device), int(row["target"]),
            levels=self.p["levels"], thresholds=th, blur_sigma=self.p["blur_sigma"], head=self.head,
            suppression=self.p.get("suppression", "probability"), return_probabilities=True)
        areas: dict[str, Any] = {}
        for level, v in res.items():
            a = float(v[0])
            # a number (px² at the model input), "not reached" (no box suppresses enough), or
            # None (not scorable: nothing to suppress)
            areas[f"{level:g}"] = None if math.isnan(a) else ("not reached" if math.isinf(a) else a)
        return {"areas": areas, "p_clean": round(float(p_clean[0]), 8),
                "p_fully_perturbed": round(float(p_blur[0]), 8), "input_size": list(x.shape[-2:])}


# ------------------------------------------------------------------------- aggregation
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _not_reached(v: Any) -> bool:
    return v in ("not reached", "inf")  # "inf": scores.jsonl of an earlier version


def aggregate(proto: dict[str, Any], scores: list[dict[str, Any]], failures: int = 0,
              classes: list[str] | None = None) -> dict[str, Any]:
    """The protocol's final numbers from the per-pair ``scores`` (see the module docstring).

    Args:
        proto: the resolved protocol (:func:`~meaningful_perturbation.evaluation.protocols.resolve_protocol`).
        scores: the ``scores.jsonl`` lines (pairs with ``"skipped": true``, degenerate explanations
            under ``degenerate=skip``, are counted but not scored).
        failures: pairs that could not be explained or scored.
        classes: (pointing) every class of the manifest; those without a scored pair are listed
            under ``classes_without_scores`` (they drop out of the mean over classes).

    Returns:
        A JSON-ready dict: ``pairs_scored``, ``pairs_failed``, ``pairs_degenerate``,
        ``pairs_skipped`` and the protocol's numbers (fractions in [0, 1]; areas in px²).
    """
    name, p = proto["name"], proto["params"]
    skipped = [s for s in scores if s.get("skipped")]
    scores = [s for s in scores if not s.get("skipped")]
    out: dict[str, Any] = {"protocol": name, "pairs_scored": len(scores), "pairs_failed": failures,
                           "pairs_degenerate": sum(1 for s in scores + skipped if s.get("degenerate")),
                           "pairs_skipped": len(skipped), "degenerate_policy": p.get("degenerate", "score")}
    if name == "imagenet-loc":
        held = [s for s in scores if s["heldout"]]
        test = [s for s in scores if not s["heldout"]]
        out["heldout_pairs"], out["test_pairs"] = len(held), len(test)
        rules = {}
        for rule in p["rules"]:
            grid = p["alphas"][rule]
            if held:
                acc = [sum(s["correct"][rule][k] for s in held) / len(held) for k in range(len(grid))]
                k_best = max(range(len(grid)), key=lambda k: (acc[k], -k))  # ties: the first alpha
            else:
                acc, k_best = None, None
            err = None
            if test and k_best is not None:
                err = 1.0 - sum(s["correct"][rule][k_best] for s in test) / len(test)
            rules[rule] = {"alpha": None if k_best is None else grid[k_best],
                           "heldout_error": None if acc is None else 1.0 - acc[k_best],
                           "error": err}
        out["rules"] = rules
    elif name == "pointing":
        def per_class(rows: list[dict[str, Any]]) -> dict[str, list[bool]]:
            by: dict[str, list[bool]] = {}
            for s in rows:
                if s.get("hit") is not None:
                    by.setdefault(str(s["class"]), []).append(bool(s["hit"]))
            return dict(sorted(by.items()))

        allc = per_class(scores)
        diffc = per_class([s for s in scores if s.get("difficult")])
        out["all"] = _mean([sum(v) / len(v) for v in allc.values()])
        out["difficult"] = _mean([sum(v) / len(v) for v in diffc.values()])
        out["pairs_all"] = sum(len(v) for v in allc.values())
        out["pairs_difficult"] = sum(len(v) for v in diffc.values())
        out["per_class"] = {c: {"all": sum(v) / len(v), "pairs": len(v),
                                "difficult": (sum(diffc[c]) / len(diffc[c])) if c in diffc else None,
                                "pairs_difficult": len(diffc.get(c, []))} for c, v in allc.items()}
        out["classes_without_scores"] = sorted({str(c) for c in (classes or [])} - set(allc))
    else:
        levels = {}
        for level in p["levels"]:
            key = f"{level:g}"
            vals = [s["areas"][key] for s in scores]
            finite = [v for v in vals if isinstance(v, (int, float))]
            levels[key] = {"mean_area_px2": _mean(finite), "images": len(finite),
                           "not_reached": sum(1 for v in vals if _not_reached(v)),
                           "not_scorable": sum(1 for v in vals if v is None)}
        out["levels"] = levels
        out["suppression"] = p.get("suppression", "relative-to-blur")
    return out


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if pct else (f"{v:g}" if isinstance(v, (int, float)) else str(v))


_LEGEND = {
    "imagenet-loc": [
        "- **alpha**: the threshold chosen on the held-out pairs (lowest held-out error; ties: the first).",
        "- **localisation error**: share of the other pairs whose box from the thresholded saliency has "
        "IoU < {iou} with every ground-truth box of the class (IoU >= {iou} counts as correct).",
    ],
    "pointing": [
        "- **hit**: the saliency maximum lies within {tol:g} px (original image pixels) of an object of the class; "
        "accuracy = hits / pairs per class, then the mean over classes.",
        "- **difficult**: pairs whose objects of the class cover less than {frac:g} of the image and whose image "
        "holds at least {minc} classes (Zhang et al. 2016 §5.1).",
    ],
    "deletion-game": [
        "- **suppression s**: {supp}; the column gives the mean area (px² at the model input) of the smallest "
        "saliency-derived box that reaches it, over the pairs that reach it (lower is better).",
        "- **not reached**: no box (not even the whole image) suppresses that much; **not scorable**: the "
        "class probability of the clean image is 0 (or, relative-to-blur, a whole-image blur does not lower it).",
    ],
}


def to_markdown(res: dict[str, Any], head: dict[str, Any]) -> str:
    """``results.md``: the numbers as a Markdown table, with what produced them and what the
    columns mean. ``head``: ``model``, ``method``, ``dataset``, ``data`` and optionally
    ``params`` (the resolved protocol parameters), ``changed`` (those differing from the
    protocol's defaults), ``limit`` and ``head`` (the model output head and its origin)."""
    failed = f"{res['pairs_failed']}"
    if res.get("pairs_unscored"):
        failed += (f" ({res.get('pairs_not_explained', 0)} not explained, {res['pairs_unscored']} explained but "
                   "not scorable)")
    lines = [f"# mperturb evaluate {res['protocol']}", "",
             f"model `{head['model']}`, method `{head['method']}`, data set {head['dataset']} (`{head['data']}`); "
             f"{_pairs(res['pairs_scored'])} scored, {failed} failed.", ""]
    changed = head.get("changed") or {}
    setup = ["- parameters differing from the protocol defaults: "
             + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in changed.items()) if changed else "none")]
    if head.get("limit") is not None:
        setup.append(f"- `--limit {head['limit']}`: only the first {_pairs(int(head['limit']))} (a quick look, "
                     "not the papers' numbers)")
    if head.get("head"):
        setup.append(f"- model output head: {head['head']}")
    deg = res.get("pairs_degenerate", 0)
    setup.append(f"- degenerate explanations (no region found that changes the score): {_pairs(deg)}, "
                 f"policy `degenerate={res.get('degenerate_policy', 'score')}`"
                 + (f" ({_pairs(res['pairs_skipped'])} left out)" if res.get("pairs_skipped") else ""))
    lines += setup + [""]
    p = head.get("params") or {}
    if res["protocol"] == "imagenet-loc":
        lines += [f"alpha chosen on {_pairs(res['heldout_pairs'])} held out, error on the other "
                  f"{_pairs(res['test_pairs'])}.",
                  "", "| rule | alpha | held-out error | localisation error |", "|---|---|---|---|"]
        for rule, r in res["rules"].items():
            lines.append(f"| {rule} | {_fmt(r['alpha'])} | {_fmt(r['heldout_error'], True)} | {_fmt(r['error'], True)} |")
        legend = [x.format(iou=p.get("iou_threshold", 0.5)) for x in _LEGEND["imagenet-loc"]]
    elif res["protocol"] == "pointing":
        lines += ["| subset | mean accuracy over classes | pairs |", "|---|---|---|",
                  f"| all | {_fmt(res['all'], True)} | {_pairs(res.get('pairs_all', 0))} |",
                  f"| difficult | {_fmt(res['difficult'], True)} | {_pairs(res['pairs_difficult'])} |", "",
                  "| class | all | pairs | difficult | difficult pairs |", "|---|---|---|---|---|"]
        for c, r in res["per_class"].items():
            lines.append(f"| {c} | {_fmt(r['all'], True)} | {_pairs(r.get('pairs', 0))} | "
                         f"{_fmt(r['difficult'], True)} | {_pairs(r.get('pairs_difficult', 0))} |")
        dropped = res.get("classes_without_scores") or []
        if dropped:
            lines += ["", f"Classes left out of the means (all their pairs failed or were skipped): "
                          f"{', '.join(dropped)}."]
        legend = [x.format(tol=float(p.get("tolerance_px", 15)), frac=float(p.get("difficult_area_fraction", 0.25)),
                           minc=p.get("difficult_min_classes", 2)) for x in _LEGEND["pointing"]]
    else:
        lines += ["| suppression | mean box area (px² at the model input) | pairs reached | not reached | "
                  "not scorable |", "|---|---|---|---|---|"]
        for lv, r in res["levels"].items():
            area = "n/a" if r["mean_area_px2"] is None else f"{r['mean_area_px2']:.0f}"
            lines.append(f"| {float(lv) * 100:g} % | {area} | {_pairs(r['images'])} | {_pairs(r['not_reached'])} | "
                         f"{_pairs(r['not_scorable'])} |")
        supp = ("the box's blur lowers the class probability to (1 - s) x p_clean or below (2017 §5.3)"
                if res.get("suppression") == "probability" else
                "the box's blur removes the share s of the drop a whole-image blur gives (relative-to-blur, "
                "not the paper's definition)")
        legend = [x.format(supp=supp) for x in _LEGEND["deletion-game"]]
    lines += ["", "Columns:", *legend, "- **n/a**: no pair to compute the number from.",
              "- **failed**: pairs that could not be explained or scored (see run/failures.jsonl and "
              "score_failures.jsonl)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the run
def _prepare_out(out: Path, state: dict[str, Any], opts: EvaluateOptions) -> None:
    """Refuse a folder holding files of other programs or an earlier evaluation (without
    ``--resume``/``--force``); with ``--resume``, refuse a different evaluation unless
    ``--force``, and then drop the scores (they are recomputed from the saved explanations)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a file; choose a folder")
    names = sorted(n for n in (os.listdir(out) if out.is_dir() else ()) if not n.startswith("."))
    foreign = [n for n in names if n not in OWN_FILES and n != RUN_DIR]
    if foreign or (names and STATE_FILE not in names):
        raise InputError(f"--out: {str(out)!r} holds files mperturb evaluate did not write "
                         f"({', '.join((foreign or names)[:3])}); choose an empty or new folder")
    if names:
        try:
            old = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            old = {}
        if not opts.resume and not opts.force:
            raise InputError(f"--out: {str(out)!r} holds an earlier evaluation; pass --resume to continue it, "
                             "--force to start over, or choose another --out")
        from ..runner.run import _diff

        a = old.get("compared") if isinstance(old, dict) and isinstance(old.get("compared"), dict) else None
        changed = a != state["compared"]
        if opts.resume and changed and not opts.force:
            diff = _diff(a, state["compared"]) if a is not None else ["unreadable evaluate.json"]
            shown = "; ".join(_shown(d, old, state) for d in diff[:5]) + (" ..." if len(diff) > 5 else "")
            scoring_only = a is not None and all(d.split(":")[0].startswith(_SCORING_ONLY) for d in diff)
            if any(d.startswith("explain.") for d in diff):
                hint = ("resume with the same settings, or choose a new --out (the saved explanations were made "
                        "with the old ones; --resume --force refuses explain changes, --force alone starts over)")
            elif any(d.startswith("data:") for d in diff):
                hint = ("if the data set only moved, pass --resume --force: the pairs whose image paths are "
                        "unchanged keep their explanations, the others are explained again")
            elif scoring_only:
                hint = ("these are scoring-only settings: pass --resume --force to re-score the saved "
                        "explanations without explaining again")
            else:
                hint = "resume with the same settings, or pass --resume --force to continue with the new ones"
            raise ConfigError(f"--resume: the evaluation in {str(out)!r} was made with other settings "
                              f"({shown}); {hint}")
        if opts.resume and opts.force and changed and a is not None:
            explain = [d for d in _diff(a, state["compared"]) if d.startswith("explain.")]
            if explain:  # the saved explanations were made otherwise: never label them with new settings
                shown = "; ".join(_shown(d, old, state) for d in explain[:5]) + (" ..." if len(explain) > 5 else "")
                raise ConfigError(f"--resume --force: the explanations saved in {str(out)!r} were made with other "
                                  f"explain settings ({shown}); --resume --force only re-scores them after "
                                  "scoring-only or data-location changes; choose a new --out (or pass --force "
                                  "without --resume to explain everything again)")
        drop = OWN_FILES if not opts.resume else ((SCORES, "results.json", "results.md") if changed else ())
        for n in drop:  # only this program's own files
            (out / n).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    except OSError as e:  # e.g. a file where a folder of the path should be
        from .._atomic import os_error_text

        raise InputError("--out: " + os_error_text(e, "cannot create folder" if not out.is_dir() else "cannot write",
                                                   "--out")) from None


def _shown(change: str, old: Any, state: dict[str, Any]) -> str:
    """One change for a message; a masker compared by content is named by its files."""
    key = change.split(":", 1)[0]
    if key.endswith(".masker") and "sha256:" in change:
        was = old.get("masker_file", "?") if isinstance(old, dict) else "?"
        return f"{key}: another masker file content ({was!r} -> {state.get('masker_file', '?')!r})"
    return change


# Settings that change only the scoring: a resume with --force re-scores the saved explanations.
_SCORING_ONLY = ("params.iou_threshold", "params.tolerance_px", "params.difficult_", "params.alphas",
                 "params.rules", "params.heldout_every", "params.component", "params.degenerate", "params.levels",
                 "params.thresholds", "params.blur_sigma", "params.suppression")


def _explain_record(settings: Any) -> dict[str, Any]:
    """The explain settings as compared on ``--resume``: JSON values, no device, and a masker
    file named by its content (a moved copy is the same masker; an edited file is not)."""
    from ..runner.run import _masker_identity, _replace_value

    rec = json.loads(json.dumps({k: v for k, v in settings.to_dict().items() if k != "device"}, default=str))
    masker = (getattr(settings, "config", None) or {}).get("masker")
    if getattr(settings, "method", None) == "masker" and isinstance(masker, str):
        try:
            rec = _replace_value(rec, masker, _masker_identity(masker))
        except OSError:  # unreadable: the masker check names it later
            pass
    return rec


def _model_classes(settings: Any) -> tuple[Any, Any, Any, int, str]:
    """Load the model once to read its class count (and keep it for the deletion game)."""
    from PIL import Image

    from ..io import preprocess
    from ..models import CLI_OPTION_NAMES, load_model, resolve_model_preprocessing
    from ..runner import dist as distmod
    from ..targets import clean_scores

    ctx = distmod.detect()
    device = distmod.local_device(settings.device, ctx)
    loaded = load_model(settings.model, weights=settings.weights, trust_code=settings.trust_code, device=device,
                        offline=getattr(settings, "offline", False), progress=False)
    prep = resolve_model_preprocessing(loaded, settings.preprocessing, device=device, names=CLI_OPTION_NAMES)
    x, _ = preprocess(Image.new("RGB", (64, 64), (128, 128, 128)), prep)
    out, head = clean_scores(loaded.model, x[None].to(device), settings.head)
    return loaded.model, prep, torch.device(device), int(out.shape[-1]), head.kind


def evaluate(settings: Any, opts: EvaluateOptions) -> EvaluateSummary:
    """Run a protocol end to end into ``opts.out`` (see the module docstring).

    Args:
        settings: the explain settings (:class:`~meaningful_perturbation.cli.options.RunSettings`).
        opts: protocol, data set and output options.

    Returns:
        :class:`EvaluateSummary` (on ranks other than 0 under torchrun: empty results).

    Raises:
        ConfigError: unknown protocol / data set / parameter, a model whose class count does not
            match the data set, a resume with other settings.
        InputError: missing or malformed annotations, a refused ``--out``.
    """
    from ..runner import RunOptions, run_directory
    from ..runner.run import validate_options
    from ..runner.merge import append_line, repair_tail
    from ..runner.sources import load_source

    proto = resolve_protocol(opts.protocol, opts.params)
    dataset = opts.dataset or proto["datasets"][0]
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset not in proto["datasets"]:
        raise ConfigError(f"--dataset: protocol {opts.protocol!r} runs on {', '.join(proto['datasets'])}, "
                          f"got {dataset!r}")
    if opts.limit is not None and (isinstance(opts.limit, bool) or not isinstance(opts.limit, int) or opts.limit < 1):
        raise ConfigError(f"--limit: expected an integer >= 1, got {opts.limit!r}")
    user_head = settings.head
    if settings.head == "auto" and proto["params"].get("head", "auto") != "auto":
        settings = dataclasses.replace(settings, head=proto["params"]["head"])
    if settings.target is not None and not (opts.protocol == "imagenet-loc" and settings.target in ("top1", "top5")):
        raise ConfigError(f"--target: expected nothing (each pair's class comes from the annotations), or top1 / "
                          f"top5 with imagenet-loc (explain the predicted classes, score the boxes of the true "
                          f"one), got {settings.target!r}")
    if proto["params"]["crop"] == "none":
        settings = dataclasses.replace(settings, preprocessing={**settings.preprocessing, "crop": "none"})
    out = Path(opts.out)
    rank = int(os.environ.get("RANK", "0") or 0)
    compared = {"protocol": opts.protocol, "dataset": dataset, "data": str(Path(opts.data).resolve()),
                "images": opts.images, "annotations": opts.annotations, "synsets": opts.synsets,
                "params": proto["params"], "limit": opts.limit,
                "explain": _explain_record(settings)}
    state = {"format": _FORMAT, "version": 1, "compared": compared}
    masker = (settings.overrides or {}).get("masker") if settings.method == "masker" else None
    if isinstance(masker, str):  # compared by content; the path only for the messages
        state["masker_file"] = str(Path(masker).resolve()) if masker != "demo" else masker

    run_dir = out / RUN_DIR
    ropts = RunOptions(source=str(out / MANIFEST), out=str(run_dir), source_type="jsonl",
                       batch_size=opts.batch_size, resume=opts.resume and run_dir.exists(), force=opts.force,
                       quiet=opts.quiet)
    validate_options(ropts)  # a bad --batch-size is refused before the model loads
    model, prep, device, n_classes, head = _model_classes(settings)
    info: dict[str, Any] = {}
    records = dataset_records(dataset, opts, proto, info)
    first = next(records, None)  # locations resolved and checked before anything is written
    if first is None:
        raise InputError(f"--data: the annotations in {opts.data!r} hold no (image, class) pair to evaluate")
    if info.get("classes") != n_classes and dataset == "imagenet":
        raise InputError(f"--synsets: {info.get('synsets')} lists {info.get('classes')} WordNet ids (one a line) but "
                         f"the model has {n_classes} output classes; give a synset file with one line per output "
                         "class, in the model's class order")
    if info.get("classes") != n_classes:
        raise ConfigError(f"--model: the model has {n_classes} output classes but the {DATASETS[dataset]} has "
                          f"{info.get('classes')} (protocol {opts.protocol}); use a model trained on this data set")
    if info.get("class_names"):  # progress lines and results.jsonl name the data set's classes
        ropts = dataclasses.replace(ropts, class_names=tuple(str(c) for c in info["class_names"]))
    from ..masker.model import check_masker_setting

    check_masker_setting(settings, model, prep)  # a bad or foreign masker: refused before --out is written

    def chained() -> Iterator[dict[str, Any]]:
        yield first
        yield from records

    manifest = out / MANIFEST
    if rank == 0:
        # The annotations are streamed into the manifest, so a malformed one further down is
        # found only while it is written: a fresh --out is then left as it was found.
        made_dir = not out.exists()
        fresh = made_dir or (out.is_dir() and not any(not n.startswith(".") for n in os.listdir(out)))
        try:
            _prepare_out(out, state, opts)
            if opts.resume:
                _resume_fixups(out)
            # Under torchrun the other ranks read the manifest only inside run_directory, after
            # the process-group rendezvous, which rank 0 joins once the manifest is written.
            write_manifest(chained(), manifest, opts.limit)
        except MeaningfulPerturbationError:
            if fresh:
                _remove_created(out, made_dir)
            raise
    summary = run_directory(settings, ropts)
    if summary.rank != 0:
        return EvaluateSummary({}, "", out, summary.rank, summary.world_size)

    # ---- scoring (rank 0): one line per pair, appended, resumable
    by_id = {r["id"]: r for r in summary.results}
    scores_path = out / SCORES
    repair_tail(scores_path)
    done: dict[str, dict[str, Any]] = {}
    if scores_path.is_file():
        with open(scores_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    s = json.loads(line)
                    done[s["id"]] = s
    scorer = _Scorer(proto, run_dir, settings, model, prep, device, head)
    items, _ = load_source(manifest, "jsonl")
    ordered: list[dict[str, Any]] = []
    unscored: list[dict[str, Any]] = []
    classes: list[str] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc="score", unit="pair", disable=opts.quiet or not sys.stderr.isatty())
    for k, (row, item) in enumerate(zip(_manifest_rows(manifest), items)):
        bar.update(1)
        classes.append(str(row["eval"].get("class", row["target"])))
        rec = by_id.get(item.id)
        if rec is None:
            continue
        s = done.get(item.id)
        if s is None:
            row["_index"] = k
            try:
                s = scorer(row, rec)
            except (MeaningfulPerturbationError, OSError, ValueError) as e:
                # A damaged saved item or an image that cannot be read again: this pair only
                # (not written, so --resume tries it again).
                reason = " ".join(str(e).split())
                unscored.append({"id": item.id, "path": row["path"], "image": row["eval"].get("image"),
                                 "class": row["eval"].get("class"), "stage": "score",
                                 "error": type(e).__name__, "reason": reason})
                tqdm.write(escape_text(f"mperturb: cannot score {item.rel} (class {row['eval'].get('class')}): "
                                       f"{reason}; --resume explains it again"), file=sys.stderr)
                continue
            append_line(scores_path, s)
        ordered.append(s)
    bar.close()
    with atomic_open(scores_path, "w") as f:  # final form: one line per scored pair, manifest order
        for s in ordered:
            f.write(json.dumps(s, separators=(",", ":"), allow_nan=False) + "\n")
    if unscored or (out / SCORE_FAILURES).exists():
        with atomic_open(out / SCORE_FAILURES, "w") as f:
            for u in unscored:
                f.write(json.dumps(u, separators=(",", ":"), default=str) + "\n")
    not_explained = len(items) - len(ordered) - len(unscored)
    results = aggregate(proto, ordered, failures=not_explained + len(unscored), classes=classes)
    results["pairs_not_explained"] = not_explained  # listed in run/failures.jsonl
    results["pairs_unscored"] = len(unscored)  # explained, but not scorable: score_failures.jsonl
    defaults = PROTOCOLS[proto["name"]]["params"]
    changed = {k: v for k, v in proto["params"].items() if defaults.get(k) != v}
    head_origin = _head_origin(user_head, proto, head)
    proto["run"] = {"head": head, "head_origin": head_origin, "limit": opts.limit, "changed_params": changed,
                    "dataset": dataset, "target": settings.target or "the annotated class"}
    if user_head != "auto" and user_head != PROTOCOLS[proto["name"]]["params"]["head"]:
        proto["params"]["head"] = user_head
        proto["sources"]["head"] = (f"set by --head {user_head} (protocol default: "
                                    f"{PROTOCOLS[proto['name']]['params']['head']}: {proto['sources']['head']})")
        changed["head"] = user_head
    head_info = {"model": settings.model, "method": settings.method, "dataset": dataset, "data": opts.data,
                 "params": proto["params"], "changed": changed, "limit": opts.limit,
                 "head": f"{head} ({head_origin})"}
    results["setup"] = {"model": settings.model, "method": settings.method, "dataset": dataset, "data": opts.data,
                        "head": head, "head_origin": head_origin, "config": settings.config,
                        "dataset_info": {k: v for k, v in info.items() if k != "class_names"},
                        "limit": opts.limit, "changed_params": changed}
    if results.get("classes_without_scores"):
        print(escape_text(f"mperturb: warning: {len(results['classes_without_scores'])} class(es) left out of the "
                          f"mean (all their pairs failed): {', '.join(results['classes_without_scores'])}"),
              file=sys.stderr)
    md = to_markdown(results, head_info)
    atomic_write_text(out / "protocol.json", json.dumps(proto, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(out / "results.md", md)
    return EvaluateSummary(results, md, out, 0, summary.world_size, not_explained + len(unscored))


def _head_origin(user_head: str, proto: dict[str, Any], kind: str) -> str:
    """Where the model output head came from: ``--head``, the protocol, or auto-detection."""
    if user_head != "auto":
        return "--head"
    if proto["params"].get("head", "auto") != "auto":
        return f"protocol parameter head={proto['params']['head']}"
    return "auto-detected"


def _remove_created(out: Path, made_dir: bool) -> None:
    """After a user error in a fresh ``--out``: remove what this invocation wrote there (the
    state and the manifest; the folder itself when it created it and it is empty again)."""
    for n in (STATE_FILE, MANIFEST):
        try:
            (out / n).unlink(missing_ok=True)
        except OSError:
            pass
    if made_dir:
        try:
            out.rmdir()  # only when empty
        except OSError:
            pass


def _resume_fixups(out: Path) -> None:
    """Before ``--resume`` hands over to the runner: (1) the pairs of ``score_failures.jsonl``
    (a damaged saved ``.npz``...) lose their saved item, so the runner explains them again;
    (2) an output folder that was copied or moved: the runner's settings name the manifest by
    its absolute path, which is rewritten to the folder's new place."""
    fails = out / SCORE_FAILURES
    items = out / RUN_DIR / "items"
    if fails.is_file() and items.is_dir() and not items.is_symlink() and not (out / RUN_DIR).is_symlink():
        for line in fails.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rid = json.loads(line).get("id")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(rid, str) and rid and "/" not in rid and "\\" not in rid and not rid.startswith("."):
                (items / f"{rid}.npz").unlink(missing_ok=True)
    settings_file = out / RUN_DIR / "settings.json"
    try:
        rec = json.loads(settings_file.read_text(encoding="utf-8"))
        src = rec["compared"]["source"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return
    here = str((out / MANIFEST).resolve())
    if isinstance(src, str) and src != here and Path(src).name == MANIFEST:
        rec["compared"]["source"] = here  # the folder moved: same manifest, new place
        atomic_write_text(settings_file, json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")
