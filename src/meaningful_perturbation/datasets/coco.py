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
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._common import find_image, first_existing

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

    Raises:
        InputError: missing or malformed annotation file, missing image folder.
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
    try:
        cats = sorted(js["categories"], key=lambda c: int(c["id"]))
        index = {int(c["id"]): i for i, c in enumerate(cats)}
        names = [str(c["name"]) for c in cats]
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in js["annotations"]:
            by_image.setdefault(int(a["image_id"]), []).append(a)
        images_list = sorted(js["images"], key=lambda im: int(im["id"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"--annotations: {str(ann)!r} is not a COCO instances file "
                         f"(expected images, annotations and categories; {type(e).__name__}: {e})") from None
    del js
    if info is not None:
        info.update({"annotations": str(ann), "images": str(img_dir), "classes": len(names)})
    for im in images_list:
        iid = int(im["id"])
        anns = by_image.get(iid, [])
        per: dict[int, dict[str, list[Any]]] = {}
        for a in anns:
            cid = int(a["category_id"])
            if cid not in index:
                raise InputError(f"--annotations: annotation {a.get('id')} of image {iid} has unknown category {cid}")
            x, y, w, h = (float(v) for v in a["bbox"])
            slot = per.setdefault(index[cid], {"boxes": [], "segments": [], "crowd": []})
            slot["boxes"].append([x, y, x + w, y + h])  # COCO boxes: [x, y, width, height], pixel edges
            slot["segments"].append(a.get("segmentation"))
            slot["crowd"].append(int(a.get("iscrowd", 0)))
        path = str(find_image(img_dir, Path(str(im.get("file_name", iid))).stem, im.get("file_name")))
        size = [int(im["height"]), int(im["width"])] if "height" in im and "width" in im else None
        for c in sorted(per):
            yield {"path": path, "image": str(iid), "target": c, "class": names[c], "boxes": per[c]["boxes"],
                   "segments": per[c]["segments"], "crowd": per[c]["crowd"], "classes_in_image": len(per),
                   "size": size}
