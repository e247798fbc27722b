"""PASCAL VOC 2007 test (the 2019 paper's pointing game, after Zhang et al. 2016).

Layout: ``VOCdevkit/VOC2007/{Annotations/*.xml, ImageSets/Main/test.txt, JPEGImages/*.jpg}``;
``data`` may be the ``VOC2007`` folder, ``VOCdevkit`` or the folder holding it. Classes are
the 20 VOC classes in their standard (alphabetical) order, the output order of VOC
multi-label classifiers. Boxes in the XML files are 1-based inclusive pixel indices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._common import find_image, image_size, read_xml, warn_counts

__all__ = ["VOC_CLASSES", "iter_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _root(data: Path) -> Path:
    for c in ("", "VOC2007", "VOCdevkit/VOC2007"):
        p = data / c if c else data
        if (p / "Annotations").is_dir() and (p / "ImageSets" / "Main").is_dir():
            return p
    if not data.is_dir():
        raise InputError(f"--data: expected the VOC 2007 folder, {str(data)!r} is not a folder")
    from .coco import COCO_ANNOTATIONS

    hint = ""
    if any((data / c).is_file() for c in COCO_ANNOTATIONS):
        hint = "; this looks like COCO 2014: pass --dataset coco14"
    raise InputError(f"--data: no VOC 2007 annotations in {str(data)!r} (expected Annotations/ and ImageSets/Main/ "
                     f"in it, in VOC2007/ or in VOCdevkit/VOC2007/){hint}")


def iter_voc(
    data: str | os.PathLike[str], *, split: str = "test", info: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """One record per (image of ``ImageSets/Main/<split>.txt``, class present in it).

    A class is present when the image has at least one object of it, ``difficult`` flag or
    not; all its boxes (difficult ones included) are its ground truth. Images in file order; an
    id listed twice is used once. Questionable annotations (duplicate ids, an XML ``<size>``
    that disagrees with the image file) are counted and reported as one warning per kind.

    Raises:
        InputError: a missing folder or split file, a malformed XML file, an unknown class name.
    """
    root = _root(Path(data))
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise InputError(f"--data: no image list {str(ids_file)!r} (the VOC 2007 {split} split)")
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    if info is not None:
        info.update({"root": str(root), "split": split, "classes": len(VOC_CLASSES), "class_names": list(VOC_CLASSES)})
    try:
        with open(ids_file, encoding="utf-8") as f:
            id_lines = f.read().splitlines()  # a list of ids: small
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--data: cannot read {str(ids_file)!r} ({e})") from None
    seen: set[str] = set()
    questionable = {"duplicate id(s) in the image list (each image used once)": 0,
                    "annotation(s) whose <size> disagrees with the image file (the file's size is used)": 0}
    for line in id_lines:
        stem = line.split()[0] if line.split() else ""
        if not stem:
            continue
        if stem in seen:
            questionable["duplicate id(s) in the image list (each image used once)"] += 1
            continue
        seen.add(stem)
        xml = root / "Annotations" / f"{stem}.xml"
        if not xml.is_file():
            raise InputError(f"--data: {ids_file.name} lists {stem!r} but {str(xml)!r} does not exist")
        rec = read_xml(xml, one_based=True)
        by_class: dict[str, list[list[float]]] = {}
        for o in rec["objects"]:
            if o["name"] not in index:
                raise InputError(f"--data: {str(xml)!r}: unknown VOC class {o['name']!r}")
            by_class.setdefault(o["name"], []).append(o["box"])
        path = str(find_image(root / "JPEGImages", stem, rec["filename"], ".jpg"))
        size = rec["size"]
        real = image_size(path) if size is not None else None
        if real is not None and list(real) != list(size):
            questionable["annotation(s) whose <size> disagrees with the image file (the file's size is used)"] += 1
            size = list(real)
        for c in sorted(by_class, key=index.__getitem__):
            yield {"path": path, "image": stem, "target": index[c], "class": c, "boxes": by_class[c],
                   "classes_in_image": len(by_class), "size": size}
    warn_counts(questionable, f"--data: {ids_file.name}")
