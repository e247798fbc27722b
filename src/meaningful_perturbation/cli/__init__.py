"""The ``mperturb`` command line: ``explain``, ``methods``, ``models`` (and ``benchmark``
when installed).

Exit status: 0 success; 1 some images could not be read (the others were done); 2 a usage or
library error (one line ``mperturb: error: ...`` on stderr, no traceback); 130 interrupted.

Errors: the subcommands turn every fault they know of into the project's own exception
(:mod:`meaningful_perturbation.errors`) at its source, naming the option and the fix.
:func:`main` prints those as one line, with control characters escaped (file names can hold
ANSI escapes or newlines). As a last resort an ``OSError`` that no subcommand converted (a
file-system fault of the user's environment: disk full, permission denied, read-only
folder) is printed the same way, naming its file, exit 2. Anything else is a bug of the
package and keeps its traceback.

Example:
    >>> from meaningful_perturbation.cli import main
    >>> main(["methods"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Any, Sequence

from .._atomic import os_error_text
from .._terminal import cli_text, escape_text
from ..errors import MeaningfulPerturbationError, MeaningfulPerturbationWarning

__all__ = ["main", "build_parser"]


def _cmd_methods(args: argparse.Namespace) -> int:
    from ..methods.registry import config_as_dict, get_method, methods

    for name in methods():
        spec = get_method(name)
        print(f"{name}: {spec.summary}")
        cfg = config_as_dict(spec.default_config())
        if args.verbose or args.name:
            sources = spec.sources()
            for key, value in cfg.items():
                note = f"  # {sources[key]}" if key in sources else ""
                print(f"    {key} = {value!r}{note}")
        else:
            shown = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
            print(f"    defaults: {shown or '(none)'}")
    return 0


def _cmd_methods_entry(args: argparse.Namespace) -> int:
    if args.name:
        from ..methods.registry import config_as_dict, get_method

        spec = get_method(args.name)
        print(f"{spec.name}: {spec.summary}")
        cfg = config_as_dict(spec.default_config())
        sources = spec.sources()
        for f in dataclasses.fields(spec.default_config()):
            note = f"  # {sources[f.name]}" if f.name in sources else ""
            print(f"    {f.name} = {cfg[f.name]!r}{note}")
        return 0
    return _cmd_methods(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models import list_model_specs

    for row in list_model_specs():
        print(f"{row.pattern}\n    {row.description}\n    e.g. --model {row.example}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import explain

    parser = argparse.ArgumentParser(
        prog="mperturb",
        description="Perturbation-based explanations of image classifiers (Meaningful Perturbation).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain.add_parser(sub)
    p = sub.add_parser("methods", help="list the method presets, their summaries and defaults")
    p.add_argument("name", nargs="?", default=None, help="show one preset's settings, one per line")
    p.add_argument("-v", "--verbose", action="store_true", help="one setting per line")
    p.set_defaults(func=_cmd_methods_entry)
    p = sub.add_parser("models", help="list the model spec forms accepted by --model")
    p.set_defaults(func=_cmd_models)
    for name in ("benchmark", "run", "report", "evaluate", "train_masker"):  # optional subcommands, cli/<name>.py when present
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        cmd = module.add_parser(sub)
        if cmd is not None and cmd.get_default("func") is None:
            cmd.set_defaults(func=module.run)
    for name, cmd in sub.choices.items():  # usage errors as one line
        cmd.error = _one_line_usage_error(name)  # type: ignore[method-assign]
    parser.error = _one_line_usage_error(None)  # type: ignore[method-assign]
    return parser


def _one_line_usage_error(command: str | None):
    """An ``ArgumentParser.error`` printing ``mperturb: error: <command>: <message>`` (one
    line, not argparse's usage block; no command for the top-level parser) and exiting with 2."""

    def error(message: str) -> None:
        where = f"{command}: " if command else ""
        hint = "" if command else " (see mperturb --help)"
        print(f"mperturb: error: {where}{escape_text(' '.join(str(message).split()))}{hint}", file=sys.stderr)
        raise SystemExit(2)

    return error


def _show_project_warnings_as_lines() -> None:
    """The package's own warnings print as one ``mperturb: warning: ...`` line each, once per
    distinct message (not Python's ``file:line: Category: ...`` form)."""
    default = warnings.showwarning
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if not issubclass(category, MeaningfulPerturbationWarning):
            return default(message, category, filename, lineno, file, line)
        text = escape_text(" ".join(cli_text(str(message)).split()))
        if text not in seen:
            seen.add(text)
            print(f"mperturb: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always", MeaningfulPerturbationWarning)


_TERMINATED: list[bool] = []


def _terminate_as_interrupt() -> Any:
    """SIGTERM (``kill``, a batch scheduler's time limit) ends a command like Ctrl-C: the
    same clean-up (no partial files, the run folder's lock released) and one line, instead of
    dying silently. Returns the previous handler (None off the main thread)."""
    _TERMINATED.clear()
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):  # noqa: ANN001
        _TERMINATED.append(True)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _error(message: str) -> int:
    """Print ``mperturb: error: <message>`` as one line (whitespace runs joined, control
    characters escaped) on stderr; returns 2."""
    print(f"mperturb: error: {escape_text(' '.join(cli_text(message).split()))}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mperturb`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    previous = _terminate_as_interrupt()
    try:
        with warnings.catch_warnings():
            _show_project_warnings_as_lines()
            return int(func(args) or 0)
    except MeaningfulPerturbationError as e:
        from .options import name_option

        return _error(name_option(str(e), args) or type(e).__name__)
    except BrokenPipeError:  # e.g. `mperturb methods | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:  # last resort: a file-system fault no subcommand converted
        return _error(os_error_text(e, "cannot use"))
    except KeyboardInterrupt:
        if _TERMINATED:
            print("mperturb: terminated (SIGTERM); finished items are kept (mperturb run: --resume continues)",
                  file=sys.stderr)
            return 143
        print("mperturb: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
