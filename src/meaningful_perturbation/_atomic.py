"""Atomic file writes: write a temporary file beside the target, fsync, then ``os.replace``.

A crash (even SIGKILL) leaves either the old file or the new one under the target name,
never a half-written one; the temporary file is removed on failure. An ``OSError`` raised
while writing the temporary file (disk full, permission denied, read-only file system, a
file where a folder should be) is re-raised naming the target path, not the temporary one.

:func:`os_error_text` / :func:`os_errors_as` turn such an ``OSError`` into the one-line,
project-typed error the CLI prints (``--out: cannot write 'o/x_panel.png': No space left
on device; free some space or choose another --out``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import IO, Iterator

from .errors import InputError, MeaningfulPerturbationError

__all__ = ["file_kind", "atomic_path", "atomic_open", "atomic_write_text", "os_error_text", "os_errors_as", "on_path",
           "error_files"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix), renamed over it if the body succeeds.

    Example:
        >>> with atomic_path("out.txt") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("hello")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp):  # name the file the caller asked for
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        with contextlib.suppress(OSError):  # never mask the original error
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO]:
    """``open`` a temporary file; on success it is flushed, fsynced and renamed to ``path``."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


# Hints per errno: what the user can do about it (``{name}`` = the option, e.g. ``--out``).
_HINTS = {
    errno.ENOSPC: "free some space or choose another {name}",
    errno.EDQUOT: "free some space or choose another {name}",
    errno.EACCES: "choose a folder you can write to with {name}",
    errno.EPERM: "choose a folder you can write to with {name}",
    errno.EROFS: "the file system is read-only; choose another {name}",
    errno.ENOTDIR: "a file is in the way of a folder on that path; choose another {name}",
    errno.EEXIST: "a file is in the way of a folder on that path; choose another {name}",
    errno.EISDIR: "a folder is in the way of a file on that path; choose another {name}",
    errno.ENAMETOOLONG: "choose a shorter {name}",
}


def os_error_text(e: OSError, action: str = "cannot write", name: str | None = None) -> str:
    """One line for ``e``: ``"<action> '<file>': <reason>[; <hint>]"``, control characters
    in the file name escaped.

    Example:
        >>> os_error_text(OSError(errno.ENOSPC, "No space left on device", "o/a.png"), name="--out")
        "cannot write 'o/a.png': No space left on device; free some space or choose another --out"
    """
    reason = e.strerror or str(e) or type(e).__name__
    files = [f for f in (e.filename, getattr(e, "filename2", None)) if f is not None]
    # repr() quotes the name and escapes its control characters (as escape_text does).
    where = " -> ".join(repr(os.fsdecode(f) if isinstance(f, (bytes, os.PathLike)) else str(f)) for f in files)
    text = f"{action} {where}: {reason}" if where else f"{action}: {reason}"
    hint = _HINTS.get(e.errno) if name else None
    return f"{text}; {hint.format(name=name)}" if hint else text


def error_files(e: OSError) -> list[Path]:
    """The file names an ``OSError`` carries (``filename``, ``filename2``), as paths."""
    return [Path(os.fsdecode(f)) for f in (e.filename, getattr(e, "filename2", None)) if f is not None]


def on_path(path: str | os.PathLike, target: str | os.PathLike) -> bool:
    """``path`` is ``target``, inside it, or one of the folders above it (those a
    ``mkdir(parents=True)`` of ``target`` creates)."""
    a, b = os.path.abspath(path), os.path.abspath(target)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


@contextlib.contextmanager
def os_errors_as(name: str, action: str = "cannot write",
                 error: type[MeaningfulPerturbationError] = InputError,
                 *, on: str | os.PathLike | None = None) -> Iterator[None]:
    """Re-raise an ``OSError`` of the body as ``error("<name>: <os_error_text>")``.

    With ``on``, only errors about a file on that path (see :func:`on_path`) are converted;
    others (reading an input, say) propagate unchanged.

    Example:
        >>> with os_errors_as("--out", "cannot create folder"):  # doctest: +SKIP
        ...     Path("out").mkdir()
    """
    try:
        yield
    except OSError as e:
        if on is not None and not any(on_path(f, on) for f in error_files(e)):
            raise
        raise error(f"{name}: {os_error_text(e, action, name)}") from e


def file_kind(mode: int) -> str:
    """What a file of ``stat`` mode ``mode`` is, for messages about one that is not a regular
    file: ``"a folder"``, ``"a FIFO (named pipe)"``, ``"a device"``, ``"a socket"`` or
    ``"a special file"`` (``"a regular file"`` for a regular one)."""
    import stat

    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"
