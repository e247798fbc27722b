"""COCO segmentations: validation (while the annotations are streamed) and decoding.

Formats (COCO data format, https://cocodataset.org/#format-data): a list of polygons
``[[x0, y0, x1, y1, ...], ...]`` (pixel-edge coordinates); an uncompressed RLE
``{"counts": [n0, n1, ...], "size": [H, W]}`` (column-major runs, starting with a run of 0s,
crowd regions); or a compressed RLE whose ``counts`` is COCO's string form (6 bits a
character offset by 48, 5 data bits and a continuation bit; from the third count on, each value
is a delta from the count two before; the pycocotools ``rleFrString`` convention). Any
malformed input raises :class:`~meaningful_perturbation.errors.InputError` naming ``where``,
nothing else.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["rle_string", "rle_decode", "check_segmentation", "MAX_RLE_PIXELS"]

MAX_RLE_PIXELS = 1 << 26  # 67 M pixels (8192 x 8192): far above any COCO image, below what would exhaust memory


def rle_string(s: str, where: str = "segmentation") -> list[int]:
    """COCO's compressed RLE string → run lengths.

    Raises:
        InputError: a character outside ``'0'..'o'``, a string that ends inside a number, or a
            negative run length.

    Example:
        >>> rle_string("1233")
        [1, 2, 3, 5]
    """
    if not isinstance(s, str):
        raise InputError(f"{where}: expected a COCO RLE string, got {type(s).__name__}")
    counts: list[int] = []
    i, n = 0, len(s)
    while i < n:
        x, k, more = 0, 0, True
        while more:
            if i >= n:
                raise InputError(f"{where}: compressed RLE counts end inside a number (truncated string?)")
            c = ord(s[i]) - 48
            if not 0 <= c < 64:
                raise InputError(f"{where}: compressed RLE counts hold {s[i]!r} at position {i}; expected "
                                 "characters '0' to 'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if k > 13:  # 65 bits: no valid run length is that long
                raise InputError(f"{where}: compressed RLE counts hold a number longer than 13 characters")
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise InputError(f"{where}: compressed RLE counts decode to a negative run length ({x})")
        counts.append(x)
    return counts


def _check_size(size: Any, where: str) -> tuple[int, int]:
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise InputError(f"{where}: expected RLE size [height, width] of two integers >= 1, got {size!r}")
    if size[0] * size[1] > MAX_RLE_PIXELS:
        raise InputError(f"{where}: RLE size {list(size)} is larger than {MAX_RLE_PIXELS} pixels")
    return int(size[0]), int(size[1])


def _counts(seg: dict[str, Any], where: str) -> tuple[list[int], int, int]:
    h, w = _check_size(seg.get("size"), where)
    raw = seg.get("counts")
    if isinstance(raw, str):
        counts = rle_string(raw, where)
    elif isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw):
        counts = [int(v) for v in raw]
    else:
        raise InputError(f"{where}: expected RLE counts as a list of integers >= 0 or a compressed string, "
                         f"got {str(raw)[:40]!r}")
    if sum(counts) != h * w:
        raise InputError(f"{where}: RLE counts cover {sum(counts)} pixels but size {[h, w]} has {h * w}")
    return counts, h, w


def rle_decode(seg: dict[str, Any], where: str = "segmentation") -> np.ndarray:
    """An RLE segmentation (``counts`` list or string, ``size`` ``[H, W]``) → ``(H, W)`` bool mask.

    Raises:
        InputError: malformed size or counts, counts not covering exactly ``H·W`` pixels.
    """
    counts, h, w = _counts(seg, where)
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape(w, h).T  # COCO RLE runs are column-major


#: Largest polygon coordinate accepted, in pixels: far beyond any image (COCO's are under
#: 1000 px; a gigapixel scan is ~10⁵ px a side). A larger value is a corrupt file, which
#: would otherwise draw a nearly empty mask without a word.
MAX_COORDINATE = 1e7


def check_segmentation(seg: Any, where: str) -> bool:
    """Check one annotation's ``segmentation``; ``False`` when it is empty (``None``, ``[]``:
    the box stands in for it), ``True`` when usable.

    Raises:
        InputError: anything else than polygons of finite numbers (an even count), or a valid RLE.
    """
    if seg is None or (isinstance(seg, list) and not seg):
        return False
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if (not isinstance(poly, list) or len(poly) % 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               and abs(v) <= MAX_COORDINATE for v in poly)):
                raise InputError(f"{where}: polygon {k}: expected an even number of finite coordinates "
                                 f"[x0, y0, x1, y1, ...] in pixels (|v| <= {MAX_COORDINATE:.0e}), got {str(poly)[:60]}")
        return True
    if isinstance(seg, dict):
        _counts(seg, where)
        return True
    raise InputError(f"{where}: expected polygons (a list) or an RLE object, got {type(seg).__name__}")
