"""ILSVRC2012 validation images with their boxes (the 2017 paper's weak-localisation data).

Annotations in either standard form:

* one PASCAL-style XML file per image (``ILSVRC2012_bbox_val_v3.tgz``; Kaggle's
  ``ILSVRC/Annotations/CLS-LOC/val/``), inclusive 0-based pixel indices;
* the one-CSV form ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, each row
  ``ILSVRC2012_val_00000001,n01751748 x1 y1 x2 y2 n01751748 x1 y1 x2 y2 ...`` (the same
  coordinates as the XML files).

Class index ↔ WordNet id: a synset file whose lines start with the WordNet id, in the
model's class order (``LOC_synset_mapping.txt``, ``n01440764 tench, Tinca tinca``; the
standard 1000 ids sorted, which is torchvision's order). Nothing is downloaded.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._common import find_image, first_existing, image_size, read_xml, sorted_files, warn_counts

__all__ = ["iter_imagenet", "read_synsets", "IMAGES_CANDIDATES", "ANNOTATION_CANDIDATES", "SYNSET_CANDIDATES"]

IMAGES_CANDIDATES = ("ILSVRC/Data/CLS-LOC/val", "Data/CLS-LOC/val", "ILSVRC2012_img_val", "val", "images", "")
ANNOTATION_CANDIDATES = ("LOC_val_solution.csv", "ILSVRC/Annotations/CLS-LOC/val", "Annotations/CLS-LOC/val",
                         "bbox_val", "val", "Annotations")
SYNSET_CANDIDATES = ("LOC_synset_mapping.txt", "synsets.txt", "synset_words.txt")
_WNID = re.compile(r"^n\d{8}$")


def read_synsets(path: str | os.PathLike[str]) -> list[str]:
    """WordNet ids, one per line (the first word; the rest of the line is ignored), in file order.

    Raises:
        InputError: unreadable file, a line not starting with a WordNet id (``n`` + 8 digits),
            a repeated id, or no id at all.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--synsets: cannot read {str(p)!r} ({e})") from None
    wnids: list[str] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        w = line.split()[0]
        if not _WNID.match(w):
            raise InputError(f"--synsets: {p.name} line {n}: expected a WordNet id like n01440764, got {w!r}")
        if w in wnids:
            raise InputError(f"--synsets: {p.name} line {n}: WordNet id {w} appears twice")
        wnids.append(w)
    if not wnids:
        raise InputError(f"--synsets: {str(p)!r} holds no WordNet id")
    return wnids


def _synset_names(path: Path, wnids: list[str]) -> list[str]:
    """``"n01440764 tench"``: the WordNet id and the first name after it on its line (the id
    alone where the line has none), in the file's order."""
    names = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--synsets: cannot read {str(path)!r} ({e})") from None
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            names[parts[0]] = parts[1].split(",")[0].strip()
    return [f"{w} {names[w]}" if names.get(w) else w for w in wnids]


_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # validation image files (any case)

def _locate(data: Path, images: str | None, annotations: str | None, synsets: str | None) -> tuple[Path, Path, Path]:
    if not data.is_dir():
        raise InputError(f"--data: expected the ImageNet folder, {str(data)!r} is not a folder")
    if annotations is not None:
        ann = Path(annotations)
        if not ann.exists():
            raise InputError(f"--annotations: {str(ann)!r} does not exist")
    else:
        found = None
        for c in ANNOTATION_CANDIDATES:
            p = data / c
            if p.is_file() and p.suffix.lower() == ".csv":
                found = p
                break
            if p.is_dir() and any(n.lower().endswith(".xml") for n in os.listdir(p)[:1000]):
                found = p
                break
        if found is None:
            raise InputError(f"--data: no ImageNet validation boxes in {str(data)!r} (looked for "
                             f"{', '.join(ANNOTATION_CANDIDATES)}: a LOC_val_solution.csv or a folder of XML "
                             "files); pass --annotations FILE_OR_DIR")
        ann = found
    if images is not None:
        img = Path(images)
        if not img.is_dir():
            raise InputError(f"--images: {str(img)!r} is not a folder")
    else:
        img = None
        for c in IMAGES_CANDIDATES:
            p = data / c if c else data
            if p.is_dir() and any(n.lower().endswith(_IMAGE_SUFFIXES) for n in os.listdir(p)[:1000]):
                img = p
                break
        if img is None:
            raise InputError(f"--data: no validation images in {str(data)!r} (looked in "
                             f"{', '.join(c or '.' for c in IMAGES_CANDIDATES)}); pass --images DIR")
    if synsets is not None:
        syn = Path(synsets)
        if not syn.is_file():
            raise InputError(f"--synsets: {str(syn)!r} is not a file")
    else:
        found_syn = first_existing(data, SYNSET_CANDIDATES, want="file")
        if found_syn is None:
            raise InputError(f"--data: no class mapping in {str(data)!r} (looked for {', '.join(SYNSET_CANDIDATES)}); "
                             "pass --synsets FILE (one WordNet id per line, in the model's class order)")
        syn = found_syn
    return img, ann, syn


def _csv_rows(path: Path) -> Iterator[tuple[str, list[tuple[str, list[float]]]]]:
    """``(image id, [(wnid, box), ...])`` per CSV row, read one row at a time."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise InputError(f"--annotations: cannot read {str(path)!r} ({e})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise InputError(f"--annotations: {path.name}: expected the header ImageId,PredictionString, "
                                 f"got {','.join(header or [])!r}")
            for row in reader:
                if not row or not row[0].strip():
                    continue
                where = f"--annotations: {path.name} line {reader.line_num}"
                if len(row) < 2:
                    raise InputError(f"{where}: expected ImageId,PredictionString, got {','.join(row)!r}")
                parts = row[1].split()
                if len(parts) % 5:
                    raise InputError(f"{where}: expected groups of 'wnid x1 y1 x2 y2', got {row[1]!r}")
                boxes = []
                for k in range(0, len(parts), 5):
                    try:
                        x0, y0, x1, y1 = (float(v) for v in parts[k + 1 : k + 5])
                    except ValueError:
                        raise InputError(f"{where}: expected numbers after {parts[k]}, got {parts[k + 1 : k + 5]}") from None
                    if not (x1 >= x0 and y1 >= y0):
                        raise InputError(f"{where}: expected x2 >= x1 and y2 >= y1, got {parts[k + 1 : k + 5]}")
                    # Inclusive 0-based pixel indices, as the XML files: half-open (x1 + 1, y1 + 1).
                    boxes.append((parts[k], [x0, y0, x1 + 1, y1 + 1]))
                yield row[0].strip(), boxes
        except csv.Error as e:
            raise InputError(f"--annotations: {path.name} line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise InputError(f"--annotations: cannot read {str(path)!r} (not UTF-8 text: {e})") from None


def iter_imagenet(
    data: str | os.PathLike[str],
    *,
    images: str | None = None,
    annotations: str | None = None,
    synsets: str | None = None,
    info: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per (validation image, class with boxes in it), streamed from the annotations.

    Args:
        data: the ImageNet folder (Kaggle layout ``ILSVRC/...`` + ``LOC_*.csv``/``.txt``, or a
            folder with ``val/`` images and XML files).
        images, annotations, synsets: explicit locations overriding the search in ``data``.
        info: if given, filled with the resolved locations and the class count (for the
            results' config record).

    Yields:
        Records as described in :mod:`meaningful_perturbation.datasets`; XML input in sorted
        file-name order, CSV input in row order.

    Raises:
        InputError: a location that cannot be found, a malformed annotation (naming the file
            and line), a WordNet id that is not in the synset file.
    """
    img_dir, ann, syn = _locate(Path(data), images, annotations, synsets)
    wnids = read_synsets(syn)
    index = {w: i for i, w in enumerate(wnids)}
    if info is not None:
        info.update({"images": str(img_dir), "annotations": str(ann), "synsets": str(syn), "classes": len(wnids),
                     "class_names": _synset_names(syn, wnids)})

    empty = "image(s) without any box (empty PredictionString / no <object>; no pair)"
    bad_size = "annotation(s) whose <size> disagrees with the image file (the file's size is used)"
    unannotated = f"image(s) in {img_dir} with no annotation (not evaluated)"
    questionable = {empty: 0, bad_size: 0, unannotated: 0}
    annotated: set[str] = set()  # stems with an annotation (50,000 short strings)

    def records(stem: str, filename: str | None, size: list[int] | None,
                objs: list[tuple[str, list[float]]], where: str) -> Iterator[dict[str, Any]]:
        annotated.add(stem)
        if not objs:
            questionable[empty] += 1
            return
        by_class: dict[str, list[list[float]]] = {}
        for w, box in objs:
            if w not in index:
                raise InputError(f"{where}: WordNet id {w!r} is not in the synset file {syn.name}")
            by_class.setdefault(w, []).append(box)
        path = str(find_image(img_dir, stem, filename, ".JPEG"))
        real = image_size(path) if size is not None else None
        if real is not None and list(real) != list(size):
            questionable[bad_size] += 1
            size = list(real)
        for w in sorted(by_class, key=index.__getitem__):
            yield {"path": path, "image": stem, "target": index[w], "class": w, "boxes": by_class[w],
                   "classes_in_image": len(by_class), "size": size}

    if ann.is_file():
        for stem, objs in _csv_rows(ann):
            yield from records(stem, None, None, objs, f"--annotations: {ann.name} ({stem})")
    else:
        for name in sorted_files(ann, ".xml"):
            rec = read_xml(ann / name, one_based=False)
            objs = [(o["name"], o["box"]) for o in rec["objects"]]
            yield from records(Path(name).stem, None, rec["size"], objs, str(ann / name))
    # Images no annotation names are not evaluated: said, not dropped silently.
    with os.scandir(img_dir) as it:
        questionable[unannotated] = sum(
            1 for e in it if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES
            and os.path.splitext(e.name)[0] not in annotated)
    warn_counts(questionable, f"--annotations: {ann.name}")
