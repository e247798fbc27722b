"""COCO 2014 val (the 2019 paper's pointing game on COCO).

``data`` holds ``annotations/instances_val2014.json`` (or the file itself is passed with
``annotations=``) and the images in ``val2014/``. Classes: the 80 categories in increasing
category-id order (the output order of COCO multi-label classifiers). Every annotation of a
category counts as that category being present, crowd regions (``iscrowd = 1``) included;
its ground truth is the instance segmentations (polygons or RLE), see
:func:`meaningful_perturbation.evaluation.evaluate.segments_mask`.

The JSON is read whole (it is one object); the records are then produced one image at a
time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._common import find_image, first_existing, warn_counts
from ._rle import check_segmentation

__all__ = ["COCO_ANNOTATIONS", "iter_coco"]

COCO_ANNOTATIONS = ("annotations/instances_val2014.json", "instances_val2014.json")


def iter_coco(
    data: str | os.PathLike[str],
    *,
    annotations: str | None = None,
    images: str | None = None,
    info: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per (image, category present in it), images in increasing id order.

    Every annotation is checked before the first record is produced (bbox, category,
    segmentation: polygons or a valid RLE); questionable ones are counted and reported as one
    warning per kind: an ``image_id`` not in ``images`` (ignored), an empty segmentation (the
    bbox stands in for it).

    Raises:
        InputError: missing or malformed annotation file, a malformed annotation (naming it),
            missing image folder.
    """
    data = Path(data)
    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_file():
            raise InputError(f"--annotations: {str(ann)!r} is not a file")
    else:
        if not data.is_dir():
            raise InputError(f"--data: expected the COCO folder, {str(data)!r} is not a folder")
        found = first_existing(data, COCO_ANNOTATIONS, want="file")
        if found is None:
            raise InputError(f"--data: no COCO annotations in {str(data)!r} (looked for {', '.join(COCO_ANNOTATIONS)}); "
                             "pass --annotations FILE")
        ann = found
    img_dir = Path(images) if images is not None else first_existing(data, ("val2014", "images", ""), want="dir")
    if img_dir is None or not img_dir.is_dir():
        raise InputError(f"--images: no image folder (looked for {str(data / 'val2014')!r}); pass --images DIR")
    try:
        with open(ann, encoding="utf-8") as f:
            js = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"--annotations: cannot read {str(ann)!r} ({type(e).__name__}: {e})") from None
    where0 = f"--data: {ann.name}"
    try:
        cats = sorted(js["categories"], key=lambda c: int(c["id"]))
        index = {int(c["id"]): i for i, c in enumerate(cats)}
        names = [str(c["name"]) for c in cats]
        images_list = sorted(js["images"], key=lambda im: int(im["id"]))
        known = {int(im["id"]) for im in images_list}
        for im in images_list:
            if not isinstance(im.get("file_name", ""), str):
                raise TypeError(f"image {im['id']}: file_name is not a string")
            if "height" in im and "width" in im:
                hw = [int(im["height"]), int(im["width"])]
                if min(hw) < 1:
                    raise ValueError(f"image {im['id']}: height and width must be >= 1, got {hw}")
        names = [str(c["name"]) for c in cats]  # every category an object with an id and a name
        anns = js["annotations"]
        if not isinstance(anns, list):
            raise TypeError(f"annotations is a {type(anns).__name__}, not a list")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InputError(f"--annotations: {str(ann)!r} is not a COCO instances file "
                         f"(expected images, annotations and categories; {type(e).__name__}: {e})") from None
    del js
    if len(index) != len(cats):
        ids = [int(c["id"]) for c in cats]
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"--annotations: {str(ann)!r}: category id {dup} is listed {ids.count(dup)} times in "
                         "categories; each category needs its own id")
    # Every annotation is checked here, while the manifest is streamed, before anything is
    # explained: a malformed one stops the evaluation with one line naming it.
    by_image: dict[int, list[dict[str, Any]]] = {}
    questionable = {"annotation(s) whose image_id is not in images (ignored)": 0,
                    "annotation(s) with an empty segmentation (their bbox is used)": 0}
    for k, a in enumerate(anns):
        aid = a.get("id", f"#{k}") if isinstance(a, dict) else f"#{k}"
        where = f"{where0}: annotation {aid}"
        if not isinstance(a, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(a).__name__}")
        try:
            iid, cid = int(a["image_id"]), int(a["category_id"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{where}: expected integer image_id and category_id ({type(e).__name__}: {e})") from None
        if cid not in index:
            raise InputError(f"{where} of image {iid} has unknown category {cid}")
        bbox = a.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise InputError(f"{where}: expected bbox [x, y, width, height] of 4 finite numbers, width and height "
                             f">= 0, got {str(bbox)[:60]}")
        if not check_segmentation(a.get("segmentation"), f"{where}: segmentation"):
            questionable["annotation(s) with an empty segmentation (their bbox is used)"] += 1
        if iid not in known:
            questionable["annotation(s) whose image_id is not in images (ignored)"] += 1
            continue
        by_image.setdefault(iid, []).append(a)
    del anns
    if info is not None:
        info.update({"annotations": str(ann), "images": str(img_dir), "classes": len(names), "class_names": names})
    warn_counts(questionable, f"--data: {ann.name}")
    for im in images_list:
        iid = int(im["id"])
        per: dict[int, dict[str, list[Any]]] = {}
        for a in by_image.get(iid, []):
            x, y, w, h = (float(v) for v in a["bbox"])
            slot = per.setdefault(index[int(a["category_id"])], {"boxes": [], "segments": [], "crowd": []})
            slot["boxes"].append([x, y, x + w, y + h])  # COCO boxes: [x, y, width, height], pixel edges
            slot["segments"].append(a.get("segmentation"))
            slot["crowd"].append(1 if a.get("iscrowd") in (1, True, "1") else 0)
        path = str(find_image(img_dir, Path(str(im.get("file_name", iid))).stem, im.get("file_name"), ".jpg"))
        size = [int(im["height"]), int(im["width"])] if "height" in im and "width" in im else None
        for c in sorted(per):
            yield {"path": path, "image": str(iid), "target": c, "class": names[c], "boxes": per[c]["boxes"],
                   "segments": per[c]["segments"], "crowd": per[c]["crowd"], "classes_in_image": len(per),
                   "size": size}
