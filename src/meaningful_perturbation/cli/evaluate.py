"""``mperturb evaluate PROTOCOL --data DIR --out DIR``: the papers' evaluations on their data sets.

Protocols (see ``meaningful_perturbation.evaluation.protocols``): ``imagenet-loc`` (2017 weak
localisation, ImageNet val), ``pointing`` (pointing game, VOC 2007 test or COCO 2014 val),
``deletion-game`` (2017 deletion game, ImageNet val). Built on ``mperturb run``: resumable
(``--resume``), torchrun-sharded, with a progress bar. See docs/cli.md and docs/reproduce.md.

Exit status: 0 done; 1 some pairs could not be explained (listed in OUT/run/failures.jsonl,
the others scored); 2 a usage or library error (one ``mperturb: error: ...`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .options import add_method_options, add_model_options, build_run_settings, flush_device_note, parse_set_value

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..evaluation.protocols import DATASETS, PROTOCOLS

    p = subparsers.add_parser(
        "evaluate",
        help="reproduce the papers' evaluations: imagenet-loc, pointing (VOC07 / COCO14), deletion-game",
        description=("Explain every (image, class) pair of a standard data set with the chosen method and score "
                     "it with a paper's protocol; writes scores.jsonl, results.json, results.md and protocol.json "
                     "(the parameters with their sources) to --out. Resumable; torchrun-aware."),
    )
    p.add_argument("protocol", metavar="PROTOCOL", choices=tuple(PROTOCOLS),
                   help=f"one of {', '.join(PROTOCOLS)}")
    add_model_options(p)
    add_method_options(p)
    e = p.add_argument_group("evaluate")
    e.add_argument("--data", required=True, metavar="DIR", help="the data set's folder")
    e.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                   help="imagenet (imagenet-loc, deletion-game), voc07 or coco14 (pointing); default: the "
                        "protocol's first (imagenet, voc07)")
    e.add_argument("--images", default=None, metavar="DIR", help="image folder, if not found in --data")
    e.add_argument("--annotations", default=None, metavar="PATH",
                   help="annotations (ImageNet: LOC_val_solution.csv or a folder of XML files; COCO: the "
                        "instances JSON), if not found in --data")
    e.add_argument("--synsets", default=None, metavar="FILE",
                   help="ImageNet: WordNet ids in the model's class order (default: LOC_synset_mapping.txt in --data)")
    e.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol parameter (JSON value), e.g. heldout_every=5 or degenerate=miss|skip|score "
                        "(how explanations that found no region are scored; default miss for imagenet-loc and "
                        "pointing, score for deletion-game); see protocol.json")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N (image, class) pairs (a quick look, not the papers' numbers)")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e.add_argument("--batch-size", type=int, default=8, metavar="B", help="images explained together (default 8)")
    e.add_argument("--resume", action="store_true",
                   help="continue the evaluation in --out (a --out that does not exist starts a fresh run)")
    e.add_argument("--force", action="store_true",
                   help="start over in --out (removes only its own files); with --resume: accept changed settings")
    e.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar or per-item messages (the results table still goes to stdout)")
    p.set_defaults(func=run)  # usage errors: one line, set for every subcommand in cli/__init__.py
    return p


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import EvaluateOptions, evaluate

    settings = build_run_settings(args)
    flush_device_note()
    from ..errors import ConfigError

    params: dict[str, Any] = {}
    for item in args.params:
        try:
            key, value = parse_set_value(item)
        except ConfigError:
            raise ConfigError(f"--param: expected KEY=VALUE, got {item!r}") from None
        params[key] = value
    opts = EvaluateOptions(
        protocol=args.protocol, data=args.data, out=args.out, dataset=args.dataset, images=args.images,
        annotations=args.annotations, synsets=args.synsets, params=params, limit=args.limit,
        batch_size=args.batch_size, resume=args.resume, force=args.force, quiet=args.quiet,
    )
    summary = evaluate(settings, opts)
    code = 1 if summary.failures else 0
    if summary.rank == 0:
        print(summary.markdown, end="")  # the table always goes to stdout (-q silences only progress)
        if not args.quiet:
            print(f"results: {summary.out / 'results.md'}", file=sys.stderr)
    if summary.world_size > 1:  # as `mperturb run`: leave before a torchrun/gloo teardown can abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
