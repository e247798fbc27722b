"""``mperturb benchmark``: score every method on held-out images of a ground-truth family
(``--family shapes``, the default: ShapeEvidence; ``--family textures``: TextureEvidence).

Prints the Markdown table and writes ``benchmark.json`` and ``benchmark.md`` (the table,
then rank accuracy and pointing broken down by class and by object size) into ``--out``
(default ``./mperturb-benchmark``), each atomically (temporary file + ``os.replace``).
``--from FILE ...`` re-reports saved ``benchmark.json`` files of the same draw instead of
running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from .._atomic import atomic_write_text
from .._terminal import escape_text
from ..evaluation.benchmark import DEFAULT_METHODS, FAST_METHODS

__all__ = ["add_parser", "run", "DEFAULT_OUT"]

DEFAULT_OUT = "mperturb-benchmark"
#: Default ``--n``: the fast set on 16 images took 8 to 14 minutes on shared 2-core CPU
#: machines (docs/cli.md; the estimate line times the machine at hand); the CIs are wide at
#: this size, the published tables use 200.
DEFAULT_N = 16
#: Largest ``--from`` file read (``benchmark.json`` of 200 images × 10 methods is about 1 MB).
MAX_FROM_BYTES = 256 << 20


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``benchmark`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "benchmark",
        help="benchmark the explanation methods on held-out ShapeEvidence (or TextureEvidence) images",
        description=(
            "Explain the true label of N held-out ShapeEvidence (--family shapes) or TextureEvidence "
            "(--family textures) images with each family's demo model, with each method, and report "
            "pointing, rank accuracy, distractor mass, deletion/insertion AUC, minimal sufficient area "
            "(mean [95% bootstrap CI]), seconds and model passes per image."
        ),
    )
    p.add_argument(
        "--n", type=int, default=DEFAULT_N,
        help=f"number of test images, >= 1 (default {DEFAULT_N}: 8 to 14 minutes measured on 2 shared CPU cores; "
             "the estimate line printed first times this machine; the published tables use 200)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=(
            "methods to run (space- or comma-separated; default: the fast set "
            f"{', '.join(FAST_METHODS)}); "
            "NAME:KEY=VALUE[:KEY=VALUE] runs a variant, e.g. paper:early_stop=40 (one row each)"
        ),
    )
    p.add_argument(
        "--full", action="store_true",
        help=f"run the full presets instead of the fast set: {', '.join(DEFAULT_METHODS)} "
             "(the 800-step extremal takes ~40 s per image on a CPU)",
    )
    p.add_argument(
        "--family", default=None, metavar="FAMILY",
        help="ground-truth family: shapes (ShapeEvidence: a flat-coloured shape; default) or textures "
             "(TextureEvidence: an oriented grating in a random blob), each with its own demo model",
    )
    p.add_argument("--size", type=int, default=64, help="image side in pixels, 32 to 1024 (default 64)")
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply the optimisation steps (and RISE's n_masks) by F, in (0, 1000] (default 1.0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data draw and the methods (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per explain() call, >= 1 (default 16)")
    p.add_argument(
        "--curve-steps", type=int, default=100, help="grid steps of the deletion/insertion/area curves, 1 to --size squared (default 100)"
    )
    p.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        default=None,
        metavar="JSON",
        help=(
            "re-report saved benchmark.json files of the same images instead of running anything: "
            "one table with breakdowns (--methods picks rows; a method in several files comes from the first)"
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA if available, then MPS, else CPU; "
                        "the choice is printed once); checked against this build and machine first")
    p.add_argument("-q", "--quiet", action="store_true", help="no estimate line, device note or progress bar")
    p.set_defaults(func=run)
    return p


def _split_methods(values: list[str] | None) -> list[str] | None:
    """Split ``--methods`` values on commas, except inside ``[...]`` / ``{...}`` / quotes
    (``extremal:areas=[0.1,0.2],paper`` is two entries)."""
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        depth, quote, start = 0, "", 0
        for i, ch in enumerate(v):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth = max(depth - 1, 0)
            elif ch == "," and depth == 0:
                out.append(v[start:i])
                start = i + 1
        out.append(v[start:])
    return [m.strip() for m in out if m.strip()]


#: Per-image metrics broken down in ``benchmark.md`` (by class, then by object size).
BREAKDOWNS: tuple[str, ...] = ("rank_accuracy", "pointing_tol")


def _load(paths: list[str], methods: list[str] | None = None) -> Any:
    """Saved ``benchmark.json`` files as one result (only the rows of ``methods`` if given).

    A method found in several files is taken from the first of them, with a note on stderr.
    """
    from ..errors import ConfigError
    from ..evaluation import BenchmarkResult
    from .options import read_option_text

    results = []
    for p in paths:
        text = read_option_text(p, "--from", limit=MAX_FROM_BYTES, what="benchmark.json")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"--from: {p!r} is not JSON ({e})") from None
        try:
            results.append(BenchmarkResult.from_json(data))
        except ConfigError as e:
            raise ConfigError(f"--from: {p!r}: {e}") from None
    seen: dict[str, str] = {}  # method -> the file it is taken from
    picked = []
    for p, res in zip(paths, results):
        keep = []
        for m in (r["method"] for r in res.rows):
            if methods and m not in methods:
                continue
            if m in seen:
                print(escape_text(f"mperturb benchmark: note: {m!r} taken from {seen[m]}, not {p}"), file=sys.stderr)
                continue
            seen[m] = p
            keep.append(m)
        if keep:
            picked.append(res.select(keep))
    missing = [m for m in methods or () if m not in seen]
    if missing:
        held = sorted({r["method"] for res in results for r in res.rows})
        raise ConfigError(f"--methods: {missing} not in the --from files (they hold {held})")
    result = BenchmarkResult.combine(picked)
    if methods:  # rows in the order asked for
        result.rows.sort(key=lambda r: methods.index(r["method"]))
        result.settings["methods"] = [r["method"] for r in result.rows]
    return result


def _legend() -> str:
    from ..evaluation.benchmark import legend_markdown

    return legend_markdown()


def report_markdown(result: Any) -> str:
    """``benchmark.md``: settings, the table and its legend, then :data:`BREAKDOWNS` by class
    and by size."""
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items() if k not in ("overrides", "methods"))
    parts = [f"# mperturb benchmark\n\n{result.heading()}\n{settings}\n\n{result.to_markdown()}\n{_legend()}"]
    if result.images:
        for by, title in (("class", "by class"), ("size", "by object size (area terciles)")):
            for metric in BREAKDOWNS:
                parts.append(f"\n## {metric} {title}\n\n{result.breakdown_markdown(metric, by=by)}")
    return "".join(parts)


#: How errors of :func:`~meaningful_perturbation.evaluation.benchmark.check_benchmark_settings`
#: name each setting: by its option.
OPTION_NAMES: dict[str, str] = {
    "n": "--n", "size": "--size", "steps_scale": "--steps-scale", "seed": "--seed", "batch_size": "--batch-size",
    "curve_steps": "--curve-steps", "methods": "--methods", "device": "--device", "family": "--family",
}


def _name_options(message: str) -> str:
    """``message`` with a leading internal setting name (``n: ...``, ``methods: ...``) replaced
    by its option (``--n: ...``)."""
    key, sep, rest = message.partition(":")
    return OPTION_NAMES[key] + sep + rest if sep and key in OPTION_NAMES else message


def _say_eta(args: argparse.Namespace, methods: list[str]) -> None:
    """One stderr line before the work: images × methods and the estimated time (every
    setting already checked)."""
    from ..evaluation.benchmark import estimate_seconds
    from .options import resolve_device_option

    device = resolve_device_option(getattr(args, "device", None))[0]  # "auto" resolved as for the run

    est = estimate_seconds(methods, n=args.n, size=args.size, steps_scale=args.steps_scale,
                           batch_size=getattr(args, "batch_size", 16), curve_steps=getattr(args, "curve_steps", 100),
                           device=device, family=getattr(args, "family", None) or "shapes")
    total = sum(est.values())
    slowest = max(est, key=est.get)
    when = f"{total / 60:.1f} min" if total >= 90 else f"{total:.0f} s"
    print(escape_text(
        f"mperturb benchmark: {args.n} image(s) x {len(methods)} method(s) at {args.size} px; "
        f"estimated {when} on this machine (slowest: {slowest}, {est[slowest] / 60:.1f} min)"
        + ("" if getattr(args, "full", False) or args.methods else "; --full adds the full presets")
    ), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; returns the exit status.

    Every setting is checked before anything is printed or created: ``--n``, ``--size``,
    ``--steps-scale``, ``--batch-size``, ``--curve-steps``, ``--seed``, ``--methods``,
    ``--family`` and ``--device`` (ranges in
    :func:`~meaningful_perturbation.evaluation.benchmark.check_benchmark_settings`; ``auto``,
    the default, is resolved and printed once as ``mperturb: note: device ...``). A bad one,
    an unreadable ``--from`` file or a failing write into ``--out`` prints one
    ``mperturb: error: --OPTION: ...`` line and returns 2. ``--out`` is created after the
    checks and before the work (so an unusable folder fails at once), and removed again if
    the benchmark then fails before writing anything into it.
    """
    from ..errors import MeaningfulPerturbationError
    from . import _error

    out = Path(args.out)
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        return _run(args, out)
    except MeaningfulPerturbationError as e:
        for p in created:  # only the empty folders this call made
            try:
                p.rmdir()
            except OSError:
                break
        return _error(_name_options(str(e)) or type(e).__name__)


def _run(args: argparse.Namespace, out: Path) -> int:
    from .._atomic import os_errors_as
    from ..data import get_family
    from ..errors import ConfigError
    from ..evaluation import run_benchmark
    from ..evaluation.benchmark import check_benchmark_settings, legend_markdown
    from .options import _announce_device, flush_device_note, resolve_device_option

    from_files = getattr(args, "from_files", None)
    family = getattr(args, "family", None)
    if family is not None:
        get_family(family, "--family")  # before --out is created
    if not from_files:
        device, auto = resolve_device_option(getattr(args, "device", None))
        methods = _split_methods(args.methods)
        if methods is None:
            methods = list(DEFAULT_METHODS if getattr(args, "full", False) else FAST_METHODS)
        checked = check_benchmark_settings(
            n=args.n, methods=methods, size=args.size, steps_scale=args.steps_scale, seed=args.seed,
            batch_size=getattr(args, "batch_size", 16), curve_steps=getattr(args, "curve_steps", 100),
            device=device, family=family or "shapes", names=OPTION_NAMES,
        )  # every setting, before any line is printed or --out is created
        if auto:
            _announce_device(device, quiet=bool(args.quiet))
            flush_device_note()
    with os_errors_as("--out", "cannot create folder", on=out):  # before hours of work
        out.mkdir(parents=True, exist_ok=True)
    if from_files:
        result = _load(from_files, _split_methods(args.methods))
        held = result.settings.get("family", "shapes")
        if family is not None and family != held:
            raise ConfigError(f"--family: the --from files hold family {held!r}, got {family!r}")
    else:
        if not args.quiet:
            _say_eta(args, methods)
        result = run_benchmark(
            n=checked.n,
            methods=list(checked.methods),
            size=checked.size,
            steps_scale=checked.steps_scale,
            seed=checked.seed,
            batch_size=checked.batch_size,
            curve_steps=checked.curve_steps,
            device=device,
            progress=not args.quiet,
            family=checked.family,
        )
    table = result.to_markdown()
    md = report_markdown(result)
    with os_errors_as("--out", on=out):
        atomic_write_text(out / "benchmark.json", json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
        atomic_write_text(out / "benchmark.md", md)
    print(result.heading() + "\n" + table, end="")
    print("\n" + legend_markdown(), end="")
    if not args.quiet:
        print(escape_text(f"wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}"), file=sys.stderr)
    return 0
