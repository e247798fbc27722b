"""``mperturb report DIR``: write a static, offline ``report.html`` for a ``mperturb run`` folder."""

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
    p.add_argument("--output", default=None, metavar="FILE", help="report file (default DIR/report.html)")
    p.add_argument("--embed", action="store_true",
                   help="embed the images as data URIs (one portable file) instead of relative links")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..runner import merge_results, write_report
    from pathlib import Path

    out = Path(args.dir)
    if out.is_dir() and any(out.glob("results.rank*.jsonl")):
        merge_results(out)  # a distributed run that stopped before its merge
    path = write_report(out, path=args.output, embed=args.embed)
    print(path)
    return 0
