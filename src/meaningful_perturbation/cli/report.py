"""``mperturb report DIR``: write a static, offline ``report.html`` for a ``mperturb run`` folder.

``--output FILE`` may name a file in a folder that does not exist yet: the missing folders
are created (as ``--out`` folders are). It never replaces a file mperturb did not write: an
existing ``FILE`` must be a report written by ``mperturb report`` (a regular file, not a
link), and inside ``DIR`` only a new or recorded ``*.html`` directly in ``DIR`` is accepted
(never ``settings.json``, ``results.jsonl`` or ``items/...``); anything else is one
``--output: ...`` error, exit 2, before anything is written. A failing write (disk full, permission denied, a file
where a folder should be, ``FILE`` being a folder) is one ``--output: ...`` error naming the
file and the reason, exit 2, and leaves no partial file.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="write DIR/report.html (summary with bootstrap CIs, sortable gallery) for a `mperturb run` folder",
        description="Write a self-contained HTML report (inline CSS/JS, works offline from file://).",
    )
    p.add_argument("dir", metavar="DIR", help="output folder of `mperturb run`")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="report file (default DIR/report.html); missing folders above it are created")
    p.add_argument("--embed", action="store_true",
                   help="embed the images as data URIs (one portable file) instead of relative links")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._atomic import os_errors_as
    from .._terminal import escape_text
    from ..errors import InputError
    from ..runner import merge_results, write_report
    from ..runner.report import check_report_target

    out = Path(args.dir)
    name = "--output" if args.output is not None else "DIR"
    target = Path(args.output) if args.output is not None else out / "report.html"
    if target.is_dir():
        raise InputError(f"{name}: {str(target)!r} is a folder; give the report's file name, "
                         f"e.g. {str(target / 'report.html')!r}")
    if out.is_dir():
        from ..runner.owner import inspect_out

        try:
            own = inspect_out(out)  # symbolic links and foreign folders refused here too
        except InputError as e:
            raise InputError(str(e).replace("--out:", "DIR:", 1)) from None
        if not own.is_run:
            raise InputError(f"DIR: {str(out)!r} is not the folder of an `mperturb run` (no .mperturb/run.json); "
                             "give the --out folder of a run")
        check_report_target(out, args.output)  # before anything is merged, created or written
    if out.is_dir() and any(out.glob("results.rank*.jsonl")):
        with os_errors_as("DIR", on=out):
            merge_results(out)  # a distributed run that stopped before its merge
    if out.is_dir() and args.output is not None:
        with os_errors_as(name, "cannot create folder", on=target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
    with os_errors_as(name, on=target):
        path = write_report(out, path=args.output, embed=args.embed)
    print(escape_text(path))
    return 0
