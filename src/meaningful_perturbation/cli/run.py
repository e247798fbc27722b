"""``mperturb run SOURCE --out DIR``: explain a whole folder / manifest, resumable, shardable.

Takes every option of ``mperturb explain`` (model, method, target, ``--set``, ``--config``,
``--steps``, ``--areas``, ``--seed``, ``--device``, preprocessing overrides) plus the batch
options below. Under ``torchrun`` each process does a disjoint shard. See docs/runner.md.

Exit status: 0 all items done; 1 some items failed (listed in ``failures.jsonl``, the others
done); 2 usage or library error before any item is worked on (a bad option, an ``--out`` holding
files mperturb did not write, an earlier run without ``--resume``/``--force``, a folder locked by
another run, a model whose output cannot be read).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .options import add_method_options, add_model_options, build_run_settings, flush_device_note

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help="explain every image of a folder, manifest or ImageFolder tree (resumable; torchrun-aware)",
        description=(
            "Explain every image of SOURCE (a folder of images, a CSV/JSONL manifest with path, target, "
            "box, mask, or an ImageFolder tree) in batches; write items/<id>.npz, overlays and "
            "results.jsonl to --out. Kill it any time and continue with --resume. Under torchrun each "
            "process takes a disjoint shard."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="folder, manifest (.csv / .jsonl) or ImageFolder tree")
    add_model_options(p)
    add_method_options(p)
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--source-type", default="auto", choices=("auto", "folder", "imagefolder", "csv", "jsonl"),
                   help="how to read SOURCE (default: auto-detect)")
    r.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="images optimised together in one explain() call (default 8)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in DIR, skipping finished items (and failed ones: see --retry-failures)")
    r.add_argument("--retry-failures", action="store_true",
                   help="with --resume: also retry the items recorded in failures.jsonl")
    r.add_argument("--force", action="store_true",
                   help="without --resume: start over in the folder of an earlier run (removes only that run's own "
                        "files; a folder holding other files is refused); "
                        "with --resume: continue even though the settings changed")
    r.add_argument("--metrics", nargs="*", default=None, metavar="NAME",
                   help="per-item metrics where ground truth (box / mask) is given: pointing, energy "
                        "(bare --metrics = both)")
    r.add_argument("--pointing-tolerance", type=float, default=None, metavar="PX",
                   help="pointing-game tolerance in original-image pixels (default 15 px scaled from 224 px)")
    r.add_argument("--report", action="store_true", help="write DIR/report.html at the end")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-item messages")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..runner import RunOptions, run_directory, summarise

    settings = build_run_settings(args)
    metrics: tuple[str, ...] = ()
    if args.metrics is not None:
        names = [m for v in args.metrics for m in v.split(",") if m]
        metrics = tuple(dict.fromkeys(names)) if names else ("pointing", "energy")
    opts = RunOptions(
        source=args.source, out=args.out, source_type=args.source_type, batch_size=args.batch_size,
        resume=args.resume, force=args.force, metrics=metrics, pointing_tolerance=args.pointing_tolerance,
        report=args.report, quiet=args.quiet, retry_failures=args.retry_failures,
        on_checked=flush_device_note,  # the --device auto note once the run's checks passed: an error is alone
    )
    summary = run_directory(settings, opts)
    if summary.rank == 0:
        print(summarise(summary), file=sys.stderr if args.quiet else sys.stdout)
        if summary.report_path is not None and not args.quiet:
            print(f"report: {summary.report_path}")
    if summary.world_size > 1:
        # Every file is written and fsynced, and the process group is destroyed. Leave now:
        # interpreter teardown under torchrun with gloo can abort ("terminate called without
        # an active exception") in the non-main rank, turning a finished run into a failure.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code)
    return summary.exit_code
