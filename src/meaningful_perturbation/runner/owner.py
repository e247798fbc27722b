"""Which files of an output folder a run owns, and one run per folder at a time.

A run folder carries a hidden control folder ``DIR/.mperturb/``:

* ``run.json``: the ownership marker: format, a random ``tag`` (the prefix of every
  temporary file the runner writes: ``.TAG.NAME`` and the library's ``..TAG.NAME.PID.tmp…``
  inside it) and ``files``, the top-level files the runs in this folder wrote.
* ``owned.txt`` / ``owned.rank{r}.txt``: item ids, appended *before* the item's files
  (``items/<id>.npz``, ``_overlay.png``, ``_thumb.png``) are written.
* ``lock`` (and ``lock.rank{r}`` under torchrun): held with ``fcntl.flock`` while a run
  works in the folder; it records the holder's pid and host. The kernel drops a ``flock``
  when its process dies, so a lock left by a killed run is taken over at once.

Only these recorded files (and the ids of ``results*.jsonl`` / ``failures*.jsonl`` lines)
are ever removed or replaced: ``--force`` and the stale-temporary clean-up touch nothing else.
A non-empty folder without a marker (and without a ``settings.json`` of an earlier version of
the runner) is not a run: it is refused, with a few of its names in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

__all__ = ["CONTROL", "MARKER", "Ownership", "FolderLock", "inspect_out", "owned_tmp", "write_owned_text"]

CONTROL = ".mperturb"
MARKER = "run.json"
# settings.json and run.json hold a few KB; a file claiming more was not written by a run and is
# refused before it is read (a 3 GB sparse file cost 6.5 GB of memory).
MAX_RECORD_BYTES = 16 << 20
MARKER_FORMAT = "meaningful-perturbation/run-folder"
SETTINGS_FORMAT = "meaningful-perturbation/run"
ITEM_SUFFIXES = (".npz", "_overlay.png", "_thumb.png")
# Top-level names a run of an earlier version wrote (folders without a marker).
_LEGACY_TOP = re.compile(r"^(settings\.json|report\.html|(results|failures)(\.rank\d+)?\.jsonl)$")


@dataclass
class Ownership:
    """What ``DIR`` is: ``kind`` is ``"missing"``, ``"empty"``, ``"run"`` or ``"legacy-run"``."""

    out: Path
    kind: str
    tag: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def is_run(self) -> bool:
        return self.kind in ("run", "legacy-run")

    # ------------------------------------------------------------------ marker and claims
    def write_marker(self) -> None:
        """Create or update ``.mperturb/run.json`` (a new tag for a folder that had none)."""
        if not self.tag:
            self.tag = "mpr-" + secrets.token_hex(6)
        (self.out / CONTROL).mkdir(parents=True, exist_ok=True)
        record = {"format": MARKER_FORMAT, "version": 1, "tag": self.tag, "files": sorted(set(self.files))}
        write_owned_text(self.out / CONTROL / MARKER, json.dumps(record, indent=2) + "\n", self.tag)
        self.kind = "run"

    def add_files(self, names: list[str]) -> None:
        new = [n for n in names if n not in self.files]
        if new:
            self.files += new
            self.write_marker()

    def owned_ids(self) -> set[str]:
        """Ids whose item files this folder's runs wrote (claims + result/failure lines)."""
        from .merge import read_jsonl

        ids: set[str] = set()
        control = self.out / CONTROL
        if control.is_dir():
            for p in control.glob("owned*.txt"):
                ids.update(line for line in p.read_text(encoding="utf-8", errors="replace").split("\n") if line)
        for stem in ("results", "failures"):
            for p in [self.out / f"{stem}.jsonl", *self.out.glob(f"{stem}.rank*.jsonl")]:
                if stem + ".jsonl" == p.name or re.fullmatch(rf"{stem}\.rank\d+\.jsonl", p.name):
                    ids.update(r["id"] for r in read_jsonl(p))
        return {i for i in ids if re.fullmatch(r"[A-Za-z0-9._-]+", i)}

    def claim(self, ids: list[str], rank_suffix: str) -> None:
        """Record ``ids`` as this folder's before their files are written (one fsynced append)."""
        if not ids:
            return
        path = self.out / CONTROL / f"owned{rank_suffix}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, ("\n".join(ids) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def own_file_paths(self) -> list[Path]:
        """Every existing file this folder's runs wrote (what ``--force`` removes)."""
        found: list[Path] = []
        names = self.files if self.kind == "run" else [p.name for p in self.out.iterdir() if _LEGACY_TOP.match(p.name)]
        found += [self.out / n for n in names]
        items = self.out / "items"
        for i in self.owned_ids():
            found += [items / f"{i}{s}" for s in ITEM_SUFFIXES]
        found += self.stale_tmp()
        control = self.out / CONTROL
        if control.is_dir():
            found += list(control.glob("owned*.txt"))
        return [p for p in found if p.is_file() and not p.is_symlink()]

    def stale_tmp(self) -> list[Path]:
        """Temporary files of this folder's runs (carrying the folder's tag) left by a kill."""
        if not self.tag:
            return []
        pattern = re.compile(r"^\.\.?" + re.escape(self.tag) + r"\.")
        found = []
        for folder in (self.out, self.out / "items", self.out / CONTROL):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if pattern.match(p.name) and p.is_file()]
        return found


def _foreign_names(out: Path, limit: int = 5) -> list[str]:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    return names[:limit] + ([f"... ({len(names) - limit} more)"] if len(names) > limit else [])


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"--out: cannot read the run marker {str(path)!r} ({e}); move the folder away "
                         "or delete the marker if this is no longer a run") from None
    ok = (isinstance(data, dict) and data.get("format") == MARKER_FORMAT and isinstance(data.get("tag"), str)
          and re.fullmatch(r"mpr-[0-9a-f]{1,64}", data["tag"]) is not None
          and isinstance(data.get("files"), list) and all(isinstance(f, str) for f in data["files"]))
    if not ok:
        raise InputError(f"--out: {str(path)!r} is not a valid run marker (expected a JSON object with "
                         f"format {MARKER_FORMAT!r}, a tag and a list of files); move the folder away "
                         "or delete the marker if this is no longer a run")
    data["files"] = [f for f in data["files"] if "/" not in f and "\\" not in f and f not in ("", ".", "..")]
    return data


def _is_legacy_settings(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == SETTINGS_FORMAT


def inspect_out(out: Path) -> Ownership:
    """Classify ``out`` without writing anything.

    Raises:
        InputError: ``out`` is a file; or a non-empty folder that is not a run of this
            project (the message lists a few of its names); or its marker is unreadable.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} exists and is not a folder")
    if not out.exists():
        return Ownership(out, "missing")
    _refuse_links(out)
    marker = out / CONTROL / MARKER
    if marker.exists():
        data = _read_marker(marker)
        return Ownership(out, "run", tag=data["tag"], files=list(data["files"]))
    entries = list(out.iterdir())
    control = out / CONTROL
    # A run killed between creating its control folder and writing the marker.
    if entries == [control] and control.is_dir() and all(p.name.startswith("lock") for p in control.iterdir()):
        return Ownership(out, "empty")
    if not entries:
        return Ownership(out, "empty")
    if (out / "settings.json").is_file() and _is_legacy_settings(out / "settings.json"):
        return Ownership(out, "legacy-run")
    raise InputError(
        f"--out: {str(out)!r} holds files mperturb did not write ({', '.join(_foreign_names(out))}) and is not "
        "the folder of an earlier `mperturb run`; nothing there is removed or replaced, not even with --force; "
        "choose an empty or new folder"
    )


def _refuse_links(out: Path) -> None:
    """A run folder's own paths must not be symbolic links: writes, appends and deletes through
    them would reach files outside ``--out`` (its control folder and files, ``items/`` and the
    top-level files; an ``items/`` entry that is a link is only ever replaced or unlinked, never
    written through)."""
    try:
        top = list(out.iterdir())
        control = out / CONTROL
        inner = list(control.iterdir()) if control.is_dir() and not control.is_symlink() else []
    except OSError:
        return
    links = [p for p in top + inner if p.is_symlink()]
    special = [p for p in top + inner if not p.is_symlink() and p.exists() and not (p.is_file() or p.is_dir())]
    if special:
        names = ", ".join(repr(str(p.relative_to(out))) for p in special[:5])
        raise InputError(
            f"--out: {str(out)!r} holds entries that are neither files nor folders ({names}: pipes, sockets or "
            "devices); a run reads and writes only regular files: remove them or choose another --out"
        )
    big = [p for p in (out / "settings.json", out / CONTROL / MARKER) if p.is_file() and p.stat().st_size > MAX_RECORD_BYTES]
    if big:
        raise InputError(
            f"--out: {str(big[0])!r} is {big[0].stat().st_size} bytes, far more than a run writes there "
            f"(at most {MAX_RECORD_BYTES}); it was not written by mperturb: restore it or choose another --out"
        )
    if links:
        names = ", ".join(repr(str(p.relative_to(out))) for p in links[:5])
        raise InputError(
            f"--out: {str(out)!r} holds symbolic links ({names}); a run never writes through links (they "
            "could point outside the folder): remove them or choose another --out"
        )


@contextlib.contextmanager
def owned_tmp(path: Path, tag: str) -> Iterator[Path]:
    """A temporary name ``.TAG.NAME`` beside ``path``, renamed over it if the body succeeds."""
    tmp = path.with_name(f".{tag}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None and Path(e.filename) == tmp:  # name the file the user knows
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_owned_text(path: Path, text: str, tag: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically through a tagged temporary file."""
    with owned_tmp(path, tag) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


class FolderLock:
    """An advisory ``flock`` on ``DIR/.mperturb/NAME``, recording the holder's pid and host."""

    def __init__(self, out: Path, name: str = "lock") -> None:
        self.path = out / CONTROL / name
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise :class:`InputError` naming the holder (pid, host, start)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking (docs/runner.md)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise InputError(f"--out: cannot open the run's lock file {str(self.path)!r} ({e.strerror}); "
                             "it must be a regular file, not a link") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe_holder(fd)
            os.close(fd)
            out = self.path.parent.parent
            raise InputError(
                f"--out: {str(out)!r} is in use by another mperturb run ({holder}); wait for it to end, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def _describe_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        return f"pid {int(info['pid'])} on host {str(info.get('host'))!r}, started {info.get('started')}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return "pid unknown: the lock file is being written"
