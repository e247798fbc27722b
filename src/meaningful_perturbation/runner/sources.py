"""Where ``mperturb run`` gets its images: folders, CSV / JSONL manifests, ImageFolder trees.

:func:`load_source` turns ``SOURCE`` into a list of :class:`Item` (sorted, with stable,
unique, file-name-safe ids). Kinds (``kind="auto"`` picks one):

* ``folder``: a folder with image files directly inside it (not recursive); no labels.
* ``imagefolder``: a folder whose sub-folders hold the images (searched recursively), one
  sub-folder per class, like ``torchvision.datasets.ImageFolder``. Labels: if every
  sub-folder name is one of the model's class names (case-insensitive), the label is that
  class's index; otherwise it is the index of the sub-folder in the sorted list of
  sub-folder names (torchvision's rule).
* ``csv``: a manifest with a header row; ``jsonl``: one JSON object per line. Fields:
  ``path`` (required; relative to the manifest's folder, or absolute), ``target`` (optional
  class index or class name), ``box`` (optional ``"x0,y0,x1,y1"`` string or list, or the
  four fields ``x0 y0 x1 y1``; half-open pixel-edge coordinates of the original image) and
  ``mask`` (optional ground-truth mask image, relative like ``path``; non-zero = object).

``auto``: ``.csv`` → csv; ``.jsonl`` / ``.ndjson`` / ``.json`` → jsonl; a folder with image
files at its top level → folder; a folder with only sub-folders of images → imagefolder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..io.images import is_listed_image

__all__ = ["Item", "SOURCE_KINDS", "load_source", "item_id", "detect_kind"]

SOURCE_KINDS = ("auto", "folder", "imagefolder", "csv", "jsonl")


@dataclass(slots=True)  # ~1M items per manifest: no per-instance __dict__
class Item:
    """One image to explain.

    Attributes:
        id: stable, unique, file-name-safe identifier (sanitised relative path + short hash).
        path: the image file.
        rel: the path as given / relative to the source root (shown in reports).
        label: ground-truth class (index or class name) from the source, or ``None``.
        box: ``(x0, y0, x1, y1)`` ground-truth box in original-image pixels, or ``None``.
        mask: ground-truth mask image file, or ``None``.
        error: a problem found while reading the source (the item is recorded as a failure).
    """

    id: str
    path: Path
    rel: str
    label: int | str | list[int | str] | None = None
    box: tuple[float, float, float, float] | None = None
    mask: Path | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def item_id(rel: str, salt: str = "") -> str:
    """``sanitised-relative-path-<8 hex>``: letters, digits, ``._-`` only, at most ~100 chars.

    Example:
        >>> item_id("cats/my cat.jpg")[:-8]
        'cats__my_cat.jpg-'
    """
    base = rel.replace("\\", "/").replace("/", "__")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:80] or "item"
    digest = hashlib.sha1((rel + "\0" + salt).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{base}-{digest}"


def _is_image(p: Path) -> bool:
    # a broken link or a pipe named like an image is listed: its item fails with the reason
    # (load_image), instead of vanishing from the run's count
    return is_listed_image(p) and not p.name.startswith(".")


def detect_kind(source: Path) -> str:
    if not source.exists():
        raise InputError(f"SOURCE: {str(source)!r} does not exist")
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        raise InputError(
            f"SOURCE: {str(source)!r} is a file but not a .csv or .jsonl manifest "
            "(use `mperturb explain` for single images, or --source-type)"
        )
    entries = sorted(source.iterdir())
    if any(_is_image(p) for p in entries):
        return "folder"
    if any(p.is_dir() and not p.name.startswith(".") for p in entries):
        return "imagefolder"
    raise InputError(f"SOURCE: no images found in folder {str(source)!r}")


def _parse_box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise InputError(f"{where}: box must be 'x0,y0,x1,y1' or a list of 4 numbers, got {value!r}")
    try:
        nums = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"{where}: box must hold 4 numbers, got {value!r}") from None
    except OverflowError:  # a JSON integer beyond float range (e.g. 10**400)
        raise InputError(f"{where}: box coordinates must be finite numbers, got {value!r}") from None
    if len(nums) == 4 and not all(math.isfinite(v) for v in nums):
        raise InputError(f"{where}: box coordinates must be finite numbers, got {value!r}")
    if len(nums) != 4 or not (nums[2] > nums[0] and nums[3] > nums[1]):
        raise InputError(f"{where}: box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {value!r}")
    return nums  # type: ignore[return-value]


def _parse_target(value: Any) -> int | str | list[int | str] | None:
    """A manifest ``target``: an index, a class name, or several of them (a JSON list, or a
    string with commas) for a multi-label row."""
    if value is None:
        return None
    if isinstance(value, list) or (isinstance(value, str) and "," in value):
        parts = value if isinstance(value, list) else value.strip().strip("[]").split(",")
        row = [_parse_target(p) for p in parts]
        if not row or any(v is None or isinstance(v, list) for v in row):
            raise InputError(f"target: expected a class index or name, or a list of them, got {value!r}")
        return row  # type: ignore[return-value]
    if isinstance(value, bool):
        raise InputError(f"target: expected a class index or name, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _manifest_rows(source: Path, kind: str) -> list[tuple[int, dict[str, Any] | str]]:
    """``(line number, row)`` pairs; a row that cannot be read is its error message instead."""
    try:
        # Bytes decoded as they are (no newline translation): a quoted CSV field may hold a
        # newline or carriage return, a JSON string any character but those two.
        # surrogateescape: a byte that is not UTF-8 stays that byte (a path in another
        # encoding names the same file; elsewhere it fails only its own row).
        text = source.read_bytes().decode("utf-8-sig", "surrogateescape")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"SOURCE: cannot read manifest {str(source)!r} ({e})") from None
    rows: list[tuple[int, dict[str, Any] | str]] = []
    if kind == "csv":
        # The csv module splits records itself (str.splitlines would also split at \x1c-\x1e,
        # \x85, \u2028 ... inside fields, and lose newlines inside quoted fields).
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fieldnames = reader.fieldnames
            if not fieldnames or "path" not in [f.strip() for f in fieldnames]:
                raise InputError(f"SOURCE: CSV manifest {str(source)!r} needs a header row with a 'path' column")
            for row in reader:
                lineno = reader.line_num  # the line the record ends on
                clean = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
                rows.append((lineno, {k: v for k, v in clean.items() if v not in (None, "")}))
        except csv.Error as e:  # e.g. a NUL character, a field over the csv module's size limit
            raise InputError(f"SOURCE: CSV manifest {str(source)!r} line {reader.line_num}: {e}") from None
    else:
        # JSON Lines: records end at "\n" only (RFC 8259 strings may hold U+2028 and friends).
        for lineno, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                rows.append((lineno, f"SOURCE: {source.name} line {lineno}: not valid JSON ({getattr(e, 'msg', e)})"))
                continue
            if not isinstance(obj, dict):
                rows.append((lineno, f"SOURCE: {source.name} line {lineno}: expected a JSON object"))
                continue
            rows.append((lineno, {k: v for k, v in obj.items() if v not in (None, "")}))
    return rows


def _from_manifest(source: Path, kind: str) -> list[Item]:
    root = source.parent
    items: list[Item] = []
    for lineno, row in _manifest_rows(source, kind):
        where = f"{source.name} line {lineno}"
        if isinstance(row, str) or "path" not in row:
            # One bad row is one failed item (recorded in failures.jsonl), not a failed run.
            error = row if isinstance(row, str) else f"SOURCE: {where}: missing 'path'"
            items.append(Item(id="", path=source, rel=f"{source.name}:line{lineno}", error=error,
                              extra={"salt": error}))
            continue
        rel = str(row["path"])
        path = Path(rel) if os.path.isabs(rel) else root / rel
        box_value = row.get("box")
        if box_value is None and all(k in row for k in ("x0", "y0", "x1", "y1")):
            box_value = [row["x0"], row["y0"], row["x1"], row["y1"]]
        mask = row.get("mask")
        mask_path = None if mask is None else (Path(str(mask)) if os.path.isabs(str(mask)) else root / str(mask))
        try:
            box = _parse_box(box_value, f"SOURCE: {where}")
            label = _parse_target(row.get("target"))
        except InputError as e:
            salt = json.dumps([repr(row.get("target")), repr(box_value), None if mask is None else str(mask)])
            items.append(Item(id="", path=path, rel=rel, error=str(e), extra={"salt": salt}))
            continue
        salt = json.dumps([label, box, None if mask is None else str(mask)])
        items.append(Item(id="", path=path, rel=rel, label=label, box=box, mask=mask_path, extra={"salt": salt}))
    return items


def _from_folder(source: Path) -> list[Item]:
    return [Item(id="", path=p, rel=p.name) for p in sorted(source.iterdir()) if _is_image(p)]


def _same(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and a.resolve() == b.resolve()
    except OSError:
        return False


def _from_imagefolder(
    source: Path, class_names: Sequence[str] | None, exclude: Path | None = None
) -> tuple[list[Item], dict[str, Any]]:
    classes = sorted(p.name for p in source.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and not _same(p, exclude))
    if not classes:
        raise InputError(f"SOURCE: {str(source)!r} has no class sub-folders")
    lowered = [c.lower() for c in class_names or ()]
    by_name = bool(lowered) and all(c.lower() in lowered for c in classes)
    mapping = {c: (lowered.index(c.lower()) if by_name else i) for i, c in enumerate(classes)}
    items: list[Item] = []
    for c in classes:
        for dirpath, dirnames, filenames in os.walk(source / c):
            dirnames[:] = sorted(d for d in dirnames
                                 if not d.startswith(".") and not _same(Path(dirpath) / d, exclude))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if _is_image(p):
                    items.append(Item(id="", path=p, rel=p.relative_to(source).as_posix(), label=mapping[c]))
    info = {"classes": classes, "label_rule": "class names" if by_name else "sorted sub-folder index",
            "mapping": mapping}
    return items, info


def load_source(
    source: str | os.PathLike[str],
    kind: str = "auto",
    class_names: Sequence[str] | None = None,
    exclude: str | os.PathLike[str] | None = None,
) -> tuple[list[Item], dict[str, Any]]:
    """Read ``source`` into items (folders sorted by name, manifests in file order; ids unique).

    ``exclude`` (the run's ``--out``) is never scanned: an output folder inside an ImageFolder
    tree would otherwise become a class of its own on ``--resume``.

    Returns:
        ``(items, info)``; ``info`` has ``kind`` and, for ImageFolder trees, the class mapping.

    Raises:
        InputError: missing source, unreadable manifest, a malformed row, no images.
    """
    src = Path(source)
    if kind not in SOURCE_KINDS:
        raise InputError(f"--source-type: expected one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    if kind == "auto":
        kind = detect_kind(src)
    elif not src.exists():
        raise InputError(f"SOURCE: {str(src)!r} does not exist")
    info: dict[str, Any] = {"kind": kind, "source": str(src)}
    if kind in ("csv", "jsonl"):
        if not src.is_file():
            raise InputError(f"SOURCE: {str(src)!r} is not a manifest file")
        items = _from_manifest(src, kind)
    elif not src.is_dir():
        raise InputError(f"SOURCE: {str(src)!r} is not a folder")
    elif kind == "folder":
        items = _from_folder(src)
    else:
        items, extra = _from_imagefolder(src, class_names, None if exclude is None else Path(exclude))
        info.update(extra)
    if not items:
        raise InputError(f"SOURCE: no images found in {str(src)!r}")
    _assign_ids(items)
    return items, info


def _assign_ids(items: list[Item]) -> None:
    """Give every item its id, in time linear in the number of items.

    The k-th identical row (same relative path and salt) gets ``item_id(rel, salt + "#k")``
    (k >= 2), the same ids as the earlier quadratic search gave; ``next_n`` remembers per
    first id where to continue, so ``m`` repeats cost ``O(m)``, not ``O(m**2)``. Ids are
    unique case-insensitively (case-insensitive file systems).
    """
    used: set[str] = set()
    next_n: dict[str, int] = {}
    for it in items:
        salt = it.extra.pop("salt", "")
        iid = item_id(it.rel, salt)
        first = iid.lower()
        if first in used:  # identical rows: disambiguate by occurrence
            n = next_n.get(first, 2)
            iid = item_id(it.rel, f"{salt}#{n}")
            while iid.lower() in used:  # only on a (rare) collision with another row's id
                n += 1
                iid = item_id(it.rel, f"{salt}#{n}")
            next_n[first] = n + 1
        used.add(iid.lower())
        it.id = iid
