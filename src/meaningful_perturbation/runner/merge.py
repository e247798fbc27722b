"""Crash-safe result files of ``mperturb run``: append one line, read back, merge.

* :func:`append_line` writes one complete JSON line with a single ``write`` + ``fsync``.
* :func:`read_jsonl` ignores lines that are not valid JSON objects (a trailing partial line
  left by a killed process).
* :func:`merge_results` folds ``results.jsonl`` and every ``results.rank*.jsonl`` into
  ``results.jsonl`` (atomic replace), one line per id (the last written wins), keeping only
  items whose ``items/<id>.npz`` exists; likewise ``failures*.jsonl`` → ``failures.jsonl``
  minus ids that succeeded. Idempotent: merging twice changes nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable
from .._atomic import atomic_open

__all__ = [
    "RESULTS",
    "FAILURES",
    "append_line",
    "read_jsonl",
    "repair_tail",
    "done_ids",
    "merge_results",
    "clean_stale_tmp",
    "dumps_line",
]

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"


def _clean_json(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item):
        try:
            return _clean_json(o.item())
        except (ValueError, TypeError):
            pass
    if hasattr(o, "tolist"):
        return _clean_json(o.tolist())
    return o


def dumps_line(record: dict[str, Any]) -> str:
    """One JSON line (NaN / inf → null), ending in ``\\n``. A string that cannot be UTF-8 (a
    file name whose bytes are not UTF-8, kept by Python as lone surrogates) is written as JSON
    ``\\udcXX`` escapes, so the line stays valid UTF-8 and reads back to the same name."""
    clean = _clean_json(record)
    line = json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(clean, ensure_ascii=True, allow_nan=False) + "\n"
    return line



def repair_tail(path: Path) -> None:
    """Cut a trailing partial line (no final newline) off ``path`` so appends start clean."""
    try:
        with open(path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Find the last newline.
            pos = size
            chunk = 4096
            keep = 0
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                data = f.read(pos - start)
                k = data.rfind(b"\n")
                if k >= 0:
                    keep = start + k + 1
                    break
                pos = start
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        return


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` call, then flush and fsync."""
    data = dumps_line(record).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # extremely unlikely for a regular file; finish the line
            os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path`` (missing file → ``[]``; broken lines skipped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            out.append(obj)
    return out


def _parts(out: Path, stem: str) -> list[Path]:
    main = out / f"{stem}.jsonl"
    ranks = sorted(out.glob(f"{stem}.rank*.jsonl"))
    return [main] + ranks


def _collect(files: Iterable[Path]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for f in files:
        for rec in read_jsonl(f):
            merged.pop(rec["id"], None)  # last one wins, at the position it was last written
            merged[rec["id"]] = rec
    return merged


def done_ids(out: Path) -> set[str]:
    """Ids with both a results line (in any part file) and ``items/<id>.npz``."""
    recs = _collect(_parts(out, "results"))
    return {i for i in recs if (out / "items" / f"{i}.npz").is_file()}


def _marker_tag(out: Path) -> str:
    from .owner import CONTROL, MARKER

    try:
        data = json.loads((out / CONTROL / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return ""
    tag = data.get("tag") if isinstance(data, dict) else None
    return tag if isinstance(tag, str) and tag.startswith("mpr-") and tag[4:].isalnum() else ""


def _write_lines(path: Path, records: Iterable[dict[str, Any]], tag: str = "") -> None:
    if tag:  # the run folder's own temporary name (docs/runner.md, "Ownership")
        from .owner import write_owned_text

        write_owned_text(path, "".join(dumps_line(rec) for rec in records), tag)
        return
    with atomic_open(path, "w") as f:
        for rec in records:
            f.write(dumps_line(rec))


def merge_results(out: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Merge the per-rank parts into ``results.jsonl`` / ``failures.jsonl``; remove the parts.

    Returns:
        ``(results, failures)`` as written.
    """
    out = Path(out)
    res_parts = _parts(out, "results")
    fail_parts = _parts(out, "failures")
    results = _collect(res_parts)
    kept = [r for i, r in results.items() if (out / "items" / f"{i}.npz").is_file()]
    ok = {r["id"] for r in kept}
    failures = [r for i, r in _collect(fail_parts).items() if i not in ok]
    tag = _marker_tag(out)
    _write_lines(out / RESULTS, kept, tag)
    if failures or (out / FAILURES).exists():
        _write_lines(out / FAILURES, failures, tag)
    for p in res_parts[1:] + fail_parts[1:]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    return kept, failures


def clean_stale_tmp(out: Path) -> int:
    """Remove the temporary files a killed run left in ``out`` (only those carrying the tag
    recorded in the folder's marker, see :mod:`.owner`); returns the count."""
    from .owner import inspect_out

    n = 0
    for p in inspect_out(out).stale_tmp():
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
