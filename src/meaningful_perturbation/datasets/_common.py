"""Shared pieces of the data-set loaders: XML reading, box conventions, folder search."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError

IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG")


def first_existing(root: Path, candidates: Sequence[str], *, want: str) -> Path | None:
    """The first ``root / c`` that exists and is a ``want`` ("file" or "dir")."""
    for c in candidates:
        p = root / c if c else root
        if (want == "dir" and p.is_dir()) or (want == "file" and p.is_file()):
            return p
    return None


def find_image(folder: Path, stem: str, filename: str | None = None, default_suffix: str = ".JPEG") -> Path:
    """The image of ``stem`` in ``folder``: ``filename`` when given and present, else the first
    ``stem + suffix`` that exists. When none does: ``folder / filename`` if the annotation names
    the file, else ``folder / (stem + default_suffix)`` (the data set's own extension: ``.JPEG``
    for ImageNet, ``.jpg`` for VOC and COCO), so the runner's failure names the real file."""
    if filename:
        p = folder / filename
        if p.is_file():
            return p.resolve()
    for s in IMAGE_SUFFIXES:
        p = folder / (stem + s)
        if p.is_file():
            return p.resolve()
    return (folder / (Path(filename).name if filename else stem + default_suffix)).resolve()


def warn_counts(counts: dict[str, int], where: str) -> None:
    """One ``MeaningfulPerturbationWarning`` per kind of questionable annotation, with its count
    (the CLI prints each as one ``mperturb: warning:`` line)."""
    import warnings

    from ..errors import MeaningfulPerturbationWarning

    for what, n in counts.items():
        if n:
            warnings.warn(f"{where}: {n} {what}", MeaningfulPerturbationWarning, stacklevel=3)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` from the image file's header (the pixels are not decoded), or ``None``
    when it cannot be read (the runner reports that file)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, ValueError, SyntaxError):
        return None


def _num(el: ET.Element | None, tag: str, where: str) -> float:
    node = None if el is None else el.find(tag)
    if node is None or node.text is None:
        raise InputError(f"--data: {where}: expected a <{tag}> number, found none")
    try:
        v = float(node.text.strip())
    except ValueError:
        raise InputError(f"--data: {where}: expected a <{tag}> number, got {node.text.strip()!r}") from None
    if not math.isfinite(v):
        raise InputError(f"--data: {where}: expected a finite <{tag}> number, got {node.text.strip()!r}")
    return v


def read_xml(path: Path, *, one_based: bool) -> dict[str, Any]:
    """A PASCAL-style annotation (VOC, ImageNet ``bbox_val``): ``{"filename", "size": [h, w] or
    None, "objects": [{"name", "box", "difficult"}]}``.

    Boxes in these files are inclusive pixel indices ``xmin..xmax``; VOC counts from 1
    (``one_based=True``: box ``(xmin − 1, ymin − 1, xmax, ymax)``), ImageNet from 0 (box
    ``(xmin, ymin, xmax + 1, ymax + 1)``), giving half-open pixel-edge boxes either way.

    Raises:
        InputError: unreadable or malformed XML, naming the file.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"--data: cannot read annotation {str(path)!r} ({e})") from None
    size = None
    s = root.find("size")
    if s is not None and s.find("height") is not None and s.find("width") is not None:
        h, w = _num(s, "height", str(path)), _num(s, "width", str(path))
        size = [int(h), int(w)] if h > 0 and w > 0 else None
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        where = f"{path}: object {name!r}"
        x0, y0, x1, y1 = (_num(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = [x0 - 1, y0 - 1, x1, y1] if one_based else [x0, y0, x1 + 1, y1 + 1]
        if not (box[2] > box[0] and box[3] > box[1]):
            raise InputError(f"--data: {where}: expected xmax >= xmin and ymax >= ymin, got {[x0, y0, x1, y1]}")
        difficult = (obj.findtext("difficult") or "0").strip() not in ("", "0")
        objects.append({"name": name, "box": box, "difficult": difficult})
    return {"filename": (root.findtext("filename") or "").strip() or None, "size": size, "objects": objects}


def sorted_files(folder: Path, suffix: str) -> list[str]:
    """Names of the ``suffix`` files of ``folder``, sorted (names only: 50,000 short strings)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(suffix) and not e.name.startswith("."))
