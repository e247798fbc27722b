"""Reading image files: command-line arguments to paths, and one file to an RGB (or grey) image.

:func:`expand_images` turns files, folders and globs into a list of paths;
:func:`load_image` reads one file into an 8-bit RGB (or, with ``channels=1``, grey)
:class:`PIL.Image.Image`, refusing
broken or hostile files (missing, empty, not an image, decompression bombs, truncated data,
float pixels that are NaN or infinite)
with a one-line :class:`~meaningful_perturbation.errors.InputError` naming the file.

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("LA", (30, 20), (90, 255)).save(folder / "gray.png")
    >>> [p.name for p in expand_images([str(folder)])]
    ['gray.png']
    >>> image = load_image(folder / "gray.png")
    >>> image.mode, image.size, image.getpixel((0, 0))
    ('RGB', (30, 20), (90, 90, 90))
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from meaningful_perturbation.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ORIGINAL_SIZE_KEY",
    "IMAGE_EXTENSIONS",
    "convert_channels",
    "expand_images",
    "load_image",
    "to_grey",
    "to_rgb",
]

#: Extensions (lower case) that :func:`expand_images` picks up inside folders and globs.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tif", ".tiff",
    ".webp",
)  # fmt: skip

#: Largest image :func:`load_image` accepts by default: Pillow's own hard limit
#: (``2 * PIL.Image.MAX_IMAGE_PIXELS`` = 178,956,970 px, about 13,377 x 13,377).
DEFAULT_MAX_PIXELS = 178_956_970


#: ``image.info`` key under which :func:`load_image` records, for an image decoded at a reduced
#: size (``min_size``), ``((H0, W0), (h, w))``: the full upright size and the size decoded.
#: :func:`~meaningful_perturbation.io.preprocess` uses ``(H0, W0)`` as the original size while
#: the image still has size ``(h, w)`` (a later resize or crop makes it ignore the record).
ORIGINAL_SIZE_KEY = "meaningful_perturbation.original_size"

_GLOB_CHARS = frozenset("*?[")
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


# ----------------------------------------------------------------------------------------------
# Finding and reading files
# ----------------------------------------------------------------------------------------------


# Both spellings: the CLI has no --recursive flag, a quoted ** glob does the same.
_SUBFOLDER_HINT = ("; sub-folders are not searched: pass a quoted glob such as '{folder}/**/*.jpg' "
                   "(Python: expand_images(..., recursive=True))")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def broken_link_text(path: Path) -> str | None:
    """``"broken symbolic link (-> target)"`` for a link whose target is missing, else None."""
    if path.is_symlink() and not path.exists():
        try:
            return f"broken symbolic link (-> {os.readlink(path)})"
        except OSError:
            return "broken symbolic link"
    return None


def special_file_text(path: Path) -> str:
    """What a path that exists but is neither a regular file nor a folder is, e.g.
    ``"a FIFO (named pipe), not a regular file"`` (:func:`~meaningful_perturbation._atomic.file_kind`)."""
    from .._atomic import file_kind

    try:
        return f"{file_kind(path.stat().st_mode)}, not a regular file"
    except OSError:
        return "not a regular file"


def is_listed_image(p: Path) -> bool:
    """A folder entry named like an image that is not a folder: a regular file, or one the
    reader will refuse with its reason (a broken link, a pipe), so it is counted, not lost."""
    return _is_image_name(p) and (p.is_file() or p.is_symlink() and not p.exists() or p.exists() and not p.is_dir())


def _glob_files(pattern: str) -> list[Path]:
    """The paths matching a glob ``pattern`` (``**`` crosses folders), without following
    symbolic links to folders while crossing them: ``glob.glob(recursive=True)`` does, and two
    links back up the tree (``sub/up -> ..``) make it enumerate ~2^depth paths, forever in
    practice. Hidden names (a leading dot) match only a pattern part that starts with a dot,
    as with :mod:`glob`."""
    parts = Path(pattern).parts
    k = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    anchor = Path(*parts[:k]) if k else Path(".")
    rest = parts[k:]
    out = []
    for m in anchor.glob(str(Path(*rest))):  # pathlib's ** does not descend into folder links
        rel = m.relative_to(anchor).parts
        if any(name.startswith(".") and not (i < len(rest) and rest[i].startswith("."))
               for i, name in enumerate(rel)):
            continue
        out.append(m)
    return out


def expand_images(args: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """Turn command-line style arguments into a list of image paths.

    Each argument is one of:

    - an existing **file**: kept as it is, whatever its extension (:func:`load_image` decides
      whether it is an image);
    - an existing **folder**: its files with an extension in :data:`IMAGE_EXTENSIONS`
      (case-insensitive), sorted by name; sub-folders only with ``recursive=True``;
    - a **glob** pattern (``*``, ``?``, ``[...]``; ``**`` crosses folders): the matching files
      with an image extension, sorted.

    Paths are returned in argument order, duplicates (same resolved file) removed.

    Args:
        args: paths, folders or glob patterns.
        recursive: also list images in sub-folders of folder arguments.

    Returns:
        The image paths, in a stable order.

    Raises:
        InputError: no arguments; a path that does not exist; a folder without images; a glob
            pattern that matches no image (the message names the argument).

    Example:
        >>> expand_images(["photos/", "extra/*.png", "cat.jpg"])  # doctest: +SKIP
        [PosixPath('photos/a.jpg'), PosixPath('photos/b.png'), PosixPath('extra/x.png'), ...]
    """
    if isinstance(args, (str, os.PathLike)):
        args = [args]
    if len(args) == 0:
        raise InputError("expand_images: expected at least one image file, folder or glob, got none")
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for arg in args:
        text = os.fspath(arg)
        path = Path(text)
        if path.is_file() or (path.exists() or path.is_symlink()) and not path.is_dir():
            add(path)  # a regular file; or a broken link or pipe, which load_image refuses by name
        elif path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            images = sorted(p for p in walker if is_listed_image(p))
            if not images:
                raise InputError(
                    f"{text}: folder contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}"
                    f"{'' if recursive else _SUBFOLDER_HINT.format(folder=text.rstrip('/'))})"
                )
            for p in images:
                add(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(p for p in _glob_files(text) if is_listed_image(p))
            if not matches:
                raise InputError(f"{text}: pattern matches no image files")
            for p in matches:
                add(p)
        else:
            raise InputError(f"{text}: no such file or folder")
    return found


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    channels: int = 3,
    min_size: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> Image.Image:
    """Read an image file into an 8-bit RGB (or grey) image, refusing broken or hostile files.

    Conversions (all to ``mode == "RGB"``; with ``channels=1`` the RGB result is then
    reduced to one channel, mode ``"L"``, by :func:`to_grey`):

    - **EXIF orientation** is applied first (``ImageOps.exif_transpose``), so a portrait photo
      stored sideways with orientation 6 comes back upright (width and height swapped).
      Malformed EXIF data is ignored with a warning.
    - **Transparency** (RGBA, LA, PA, palette or grey images with a ``transparency`` key) is
      composited over ``background`` (white by default, like a page or a browser), because
      dropping the alpha channel would expose whatever colour the invisible pixels happen to
      store.
    - **Grayscale** (L, 1-bit) is replicated to three channels. **16-bit** grey (I;16 PNG/TIFF)
      is scaled to 8 bits as ``round(v / 257)`` (65535 -> 255). 32-bit integer (I) images are
      kept if they lie in [0, 255], scaled by 1/257 if they lie in [0, 65535], and stretched
      min..max to 0..255 otherwise; float (F) images are read as [0, 1] or [0, 255] when they
      fit, and stretched otherwise; a float image with any NaN or infinite pixel is refused.
    - **Palette** (P) and **CMYK** (e.g. Adobe CMYK JPEG) are converted by Pillow.
    - Multi-frame files (GIF, TIFF) give their first frame.

    Refused with :class:`InputError` (one line naming the file): missing files, folders,
    empty (0-byte) files, files that are not images (e.g. text named ``.jpg``), images with
    more than ``max_pixels`` pixels (decided from the header, before any pixel is decoded),
    float images with NaN or infinite pixels,
    and truncated or corrupt data (a full decode is forced; ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is never enabled here — if other code in the process enabled it, Pillow fills truncated
    images silently and this check cannot see it).

    Args:
        path: the image file.
        max_pixels: largest accepted width x height (decompression-bomb guard). ``None`` leaves
            only Pillow's own process-wide limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``), which
            always applies as well.
        background: RGB colour (0-255) that transparent pixels are composited over.
        channels: 3 for RGB (default), 1 for grey (ITU-R 601-2 luma).
        min_size: decode at the size the caller needs (reduce on decode): called with the
            image's full upright ``(height, width)`` (from the header, after EXIF
            orientation), it returns the ``(height, width)`` the caller needs at least. A
            JPEG is then decoded at the largest 1/2, 1/4 or 1/8 scale that still covers it
            (Pillow's ``Image.draft``: DCT-domain scaling, a fraction of the memory and time of
            a full decode); other formats (which cannot reduce while decoding) are
            box-averaged by the largest integer factor that still covers it right after
            decoding, before any conversion (grey, RGB, RGBA, CMYK, 32-bit and float modes;
            palette, 1-bit and 16-bit images and colour-keyed transparency are made RGB and
            reduced one band of rows at a time). The full size is
            recorded under ``image.info[ORIGINAL_SIZE_KEY]`` so
            :func:`~meaningful_perturbation.io.preprocess` maps back to the original.
            ``None`` (default): always full size.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"`` (``"L"`` with ``channels=1``),
        detached from the file.

    Raises:
        InputError: the file is missing, not a readable image, too large or corrupt.
        ConfigError: ``channels`` is not 1 or 3.

    Example:
        >>> image = load_image("cat.jpg")  # doctest: +SKIP
        >>> image.mode, image.size  # doctest: +SKIP
        ('RGB', (640, 480))
    """
    _check_channels(channels)
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise InputError(f"{name}: {broken_link_text(p) or 'no such file'}")
    if p.is_dir():
        raise InputError(f"{name}: is a folder, not an image file (use expand_images to list its images)")
    if not p.is_file():  # a pipe, device or socket: reading it could block or never end
        raise InputError(f"{name}: {special_file_text(p)}; expected an image file")
    try:
        size_bytes = p.stat().st_size
    except OSError as exc:
        raise InputError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
    if size_bytes == 0:
        raise InputError(f"{name}: file is empty (0 bytes)")

    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; our own max_pixels check right
        # below is the limit that decides, so the warning is redundant here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(p)
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name}: refused, image too large ({_one_line(exc)})") from exc
        except UnidentifiedImageError as exc:
            raise InputError(
                f"{name}: not an image file Pillow can read (unknown format or not an image)"
            ) from exc
        except PermissionError as exc:
            raise InputError(f"{name}: cannot read file (permission denied)") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"{name}: cannot open image ({_one_line(exc)})") from exc

    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(
                f"{name}: refused, {width}x{height} = {width * height} pixels exceeds "
                f"max_pixels={max_pixels} (decompression-bomb guard; raise max_pixels if you "
                f"trust the file)"
            )
        plan = _reduction_for(image, min_size)
        full_hw = plan[0] if plan is not None else None
        if plan is not None and image.format == "JPEG":
            image.draft(None, plan[1])  # decode at 1/2, 1/4 or 1/8 scale (DCT scaling)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image.load()  # decode everything now: truncation and corruption surface here
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise InputError(f"{name}: refused, image too large ({_one_line(exc)})") from exc
            except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
                raise InputError(
                    f"{name}: image data is truncated or corrupt ({_one_line(exc)})"
                ) from exc
        if plan is not None:
            # Formats that cannot reduce while decoding: box-average right after decoding,
            # before any conversion or copy is made at full size. Modes Pillow cannot reduce
            # (palette, 1-bit, 16-bit, colour-keyed transparency) are made RGB and reduced one
            # band of rows at a time, so no full-size RGB copy exists either.
            factor = min(image.width // plan[1][0], image.height // plan[1][1])
            if factor >= 2 and image.mode in _REDUCIBLE_MODES and "transparency" not in image.info:
                image = image.reduce(factor)
            elif factor >= 2:
                image = _reduce_in_bands(image, factor, background)
        upright = _apply_exif_orientation(image, name)
        try:
            result = convert_channels(upright, channels, background)
            if full_hw is not None and full_hw != (result.height, result.width):
                result.info[ORIGINAL_SIZE_KEY] = (full_hw, (result.height, result.width))
            return result
        except InputError as exc:  # e.g. a float image with NaN / inf pixels
            raise InputError(f"{name}: refused, {exc}") from exc
        except (ValueError, OSError) as exc:
            raise InputError(
                f"{name}: cannot convert image mode {image.mode!r} to "
                f"{'grey' if channels == 1 else 'RGB'} ({_one_line(exc)})"
            ) from exc


# Modes whose pixels Image.reduce can box-average (palette indices must not be averaged;
# Pillow cannot reduce 1-bit and 16-bit modes).
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F"})


def _reduce_in_bands(image: Image.Image, factor: int, background: tuple[int, int, int],
                     band_pixels: int = 1 << 22) -> Image.Image:
    """``to_rgb(image).reduce(factor)`` without the full-size RGB image: bands of rows (a
    multiple of ``factor`` high) are converted and reduced one at a time and stacked. Box
    averages never straddle two bands, so the result is the same image."""
    width, height = image.size
    rows = factor * max(1, band_pixels // max(1, width * factor))  # ~4 M pixels (12 MB of RGB) a band
    pieces = [to_rgb(image.crop((0, y, width, min(height, y + rows))), background).reduce(factor)
              for y in range(0, height, rows)]
    out = Image.new("RGB", (pieces[0].width, sum(p.height for p in pieces)))
    y = 0
    for piece in pieces:
        out.paste(piece, (0, y))
        y += piece.height
    return out


def _reduction_for(
    image: Image.Image, min_size: Callable[[tuple[int, int]], tuple[int, int]] | None
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(full upright (height, width), needed stored (width, height))`` when the caller's
    ``min_size`` allows at least a 1/2 reduction, else ``None``."""
    if min_size is None:
        return None
    width, height = image.size
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF: exif_transpose will warn and ignore it too
        orientation = 1
    swapped = orientation in _SWAPPING_ORIENTATIONS
    full_hw = (width, height) if swapped else (height, width)
    need_h, need_w = (max(1, int(v)) for v in min_size(full_hw))
    request = (need_h, need_w) if swapped else (need_w, need_h)  # stored (width, height)
    if request[0] * 2 > width or request[1] * 2 > height:
        return None  # not even a 1/2 reduction would cover it
    return full_hw, request


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _apply_exif_orientation(image: Image.Image, name: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # malformed EXIF must not make a readable image unreadable
        warnings.warn(
            f"{name}: ignoring unreadable EXIF orientation ({_one_line(exc)})", stacklevel=3
        )
        return image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, as :func:`load_image` does (see its rules).

    Args:
        image: a loaded PIL image of any mode.
        background: RGB colour (0-255) that transparent pixels are composited over.

    Returns:
        A new image in mode ``"RGB"``.

    Raises:
        ValueError: Pillow cannot convert the mode (e.g. LAB).
        InputError: a float (mode ``"F"``) image with NaN or infinite pixels (a ValueError too).
    """
    mode = image.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*(int(c) for c in background), 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    if mode in _UINT16_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    return image.convert("RGB")


def to_grey(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit grey (mode ``"L"``).

    The image is first made RGB by :func:`to_rgb` (transparency composited over
    ``background``, 16-bit and float grey scaled to 8 bits, palette and CMYK converted), then
    reduced to its ITU-R 601-2 luma, ``L = 0.299 R + 0.587 G + 0.114 B`` rounded as Pillow's
    ``convert("L")`` does. A grey image comes back with its values unchanged.

    Raises:
        ValueError: Pillow cannot convert the mode (e.g. LAB).

    Example:
        >>> to_grey(Image.new("RGB", (1, 1), (255, 0, 0))).getpixel((0, 0))
        76
    """
    if image.mode == "L" and "transparency" not in image.info:
        return image.copy()
    return to_rgb(image, background).convert("L")


def convert_channels(
    image: Image.Image, channels: int, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """:func:`to_rgb` for ``channels=3``, :func:`to_grey` for ``channels=1``.

    An image already in the wanted mode (``"RGB"`` / ``"L"``, no transparency key) is returned
    as it is, not copied.

    Raises:
        ConfigError: ``channels`` is not 1 or 3.
        ValueError: Pillow cannot convert the mode.
    """
    _check_channels(channels)
    want = "L" if channels == 1 else "RGB"
    if image.mode == want and "transparency" not in image.info:
        return image
    return to_grey(image, background) if channels == 1 else to_rgb(image, background)


def _check_channels(channels: int) -> None:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"channels: expected 1 (grey) or 3 (RGB), got {channels!r}")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    # float32 and in place: one 4-byte copy per pixel, not several float64 ones (a 12000 x
    # 12000 float image would otherwise need ~5 GB). float32 keeps 24 bits, far more than the
    # 8 the result has.
    data = np.array(values, dtype=np.float32)
    if data.size and mode == "F":
        bad = data.size - int(np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(
                f"float image (mode 'F') has {bad} NaN or infinite pixel value(s) out of "
                f"{data.size}; expected finite values"
            )
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode in _UINT16_MODES:
        data /= 257.0
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        data *= 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        data /= 257.0
    else:
        data -= lo
        data *= 255.0 / max(hi - lo, 1e-12)
    np.rint(data, out=data)
    np.clip(data, 0, 255, out=data)
    return data.astype(np.uint8)
