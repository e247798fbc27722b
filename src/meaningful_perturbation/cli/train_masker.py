"""``mperturb train-masker --model SPEC --data SOURCE --out DIR``: train a real-time masker
(Dabkowski & Gal 2017) for a classifier; see docs/masker.md.

Writes ``DIR/masker.safetensors`` (weights + what it was trained for), ``DIR/MASKER_CARD.md``
and, every ``--checkpoint-every`` steps, ``DIR/checkpoint.safetensors`` (weights and optimiser
state as tensors, settings as JSON; no pickles); ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from .options import add_model_options, parse_set_value

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-masker",
        help="train a real-time masker (Dabkowski & Gal 2017) for a classifier",
        description="Train a masking model that predicts a keep-mask in one forward pass, for use with "
                    "`mperturb explain --method masker --masker DIR/masker.safetensors`.",
    )
    add_model_options(p)
    t = p.add_argument_group("training")
    t.add_argument("--data", default="shapes", metavar="SOURCE",
                   help="shapes[:SIZE] (ShapeEvidence, default), npz:FILE (arrays images, labels[, masks]), "
                        "run:DIR (distil the masks of a `mperturb run` folder), or a registered source")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.add_argument("--layers", nargs="+", default=None, metavar="NAME",
                   help="classifier modules feeding the masker, deepest first (default: the demo model's "
                        "features, features.13, features.9)")
    t.add_argument("--steps", type=int, default=None, metavar="N", help="optimiser steps (default 1500)")
    t.add_argument("--batch-size", type=int, default=None, metavar="B", help="images per step (default 32)")
    t.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field (area, tv, delete, delete_power, fake_rate, distil, lr, ...)")
    t.add_argument("--seed", type=int, default=None, help="seed of every random draw (default 0)")
    t.add_argument("--eval-n", type=int, default=64, metavar="N",
                   help="held-out images for the card's quality line (default 64)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .._runtime import check_device
    from ..errors import ConfigError, InputError
    from ..masker import TrainConfig, data_source, model_card, train_masker
    from ..masker.train import CARD
    from .._atomic import atomic_write_text
    from ..models import CLI_OPTION_NAMES, load_model, resolve_model_preprocessing

    overrides: dict[str, Any] = {}
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in args.set_values:
        key, value = parse_set_value(item)
        if key not in valid:
            raise ConfigError(f"--set: {key!r} is not a training setting; valid: {', '.join(sorted(valid))}")
        overrides[key] = tuple(value) if isinstance(value, list) else value
    for key, value in (("layers", args.layers), ("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
    device = str(check_device(args.device or "auto", "--device"))
    spec = args.model or "demo"
    loaded = load_model(spec, weights=args.weights, trust_code=args.trust_code, device=device, offline=args.offline,
                        progress=not args.quiet)
    prep = None
    if str(args.data).startswith("run:"):
        given = {n: getattr(args, n) for n in ("input_size", "resize", "channels", "mean", "std") if getattr(args, n, None) is not None}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        prep = resolve_model_preprocessing(loaded, given, device=device, names=CLI_OPTION_NAMES)
    cfg = TrainConfig(**overrides) if overrides else TrainConfig()
    src = data_source(args.data, seed=cfg.seed, preprocessing=prep)
    if args.eval_n < 0:
        raise InputError(f"--eval-n: expected a count >= 0, got {args.eval_n}")
    result = train_masker(loaded.model, src, out=args.out, config=cfg, resume=args.resume,
                          progress=not args.quiet and sys.stderr.isatty(), eval_n=args.eval_n, classifier_name=spec,
                          device=device)
    command = "mperturb " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if sys.argv[1:2] == ["train-masker"] else ["train-masker", "..."]))
    out = Path(args.out)
    atomic_write_text(out / CARD, model_card(result.masker, seconds=result.seconds, history=result.history, command=command))
    q = result.quality
    line = f"mperturb train-masker: {result.steps_run} steps in {result.seconds / 60:.1f} min; wrote {out / 'masker.safetensors'}"
    if q:
        line += f" (held-out pointing@tol {q['pointing_tol']:.2f}, rank accuracy {q['rank_accuracy']:.2f} on {q['n']} images)"
    print(line)
    return 0
