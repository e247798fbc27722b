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
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors (same settings; --steps may grow)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an earlier training in --out (its masker.safetensors, MASKER_CARD.md and "
                        "checkpoint.safetensors; nothing else)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)  # usage errors: one line, set for every subcommand in cli/__init__.py
    return p


#: TrainConfig fields set by their own option (errors name the option, not the field).
_OPTION_OF = {"steps": "--steps", "batch_size": "--batch-size", "seed": "--seed", "layers": "--layers"}


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
    given_by_option = set()
    for key, value in (("layers", args.layers), ("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed)):
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
            given_by_option.add(key)
    device = str(check_device("auto" if args.device is None else args.device, "--device"))
    spec = args.model or "demo"
    loaded = load_model(spec, weights=args.weights, trust_code=args.trust_code, device=device, offline=args.offline,
                        progress=not args.quiet)
    prep = None
    if str(args.data).startswith("run:"):
        given = {n: getattr(args, n) for n in ("input_size", "resize", "channels", "mean", "std") if getattr(args, n, None) is not None}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        prep = resolve_model_preprocessing(loaded, given, device=device, names=CLI_OPTION_NAMES)
    else:
        # Other sources give images already normalised at their own size: a preprocessing
        # flag would be silently ignored, so it is refused (the size comes from --data).
        for name, flag in (("resize", "--resize"), ("channels", "--channels"), ("mean", "--mean"), ("std", "--std")):
            if getattr(args, name, None) is not None:
                raise ConfigError(f"{flag}: only with --data run:DIR (images read from files); --data {args.data} gives "
                                  "images already preprocessed")
    cfg = TrainConfig(**overrides) if overrides else TrainConfig()
    try:
        cfg.validate()
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in given_by_option:
            raise ConfigError(_OPTION_OF[key] + str(e)[len(key):]) from None
        raise ConfigError(f"--set: {e}") from None
    src = data_source(args.data, seed=cfg.seed, preprocessing=prep)
    teacher = getattr(src, "teacher_model", None)
    if teacher is not None and _spec_key(teacher[0], teacher[1]) != _spec_key(spec, args.weights):
        import warnings

        from ..errors import MeaningfulPerturbationWarning

        run_w = f" --weights {teacher[1]}" if teacher[1] else ""
        our_w = f" --weights {args.weights}" if args.weights else ""
        warnings.warn(f"--data: the teacher masks of {args.data[4:]} explain another model (--model {teacher[0]}{run_w}) than "
                      f"the classifier this masker is trained for (--model {spec}{our_w}); distil from a run of the same "
                      "classifier", MeaningfulPerturbationWarning, stacklevel=2)
    if args.eval_n < 0:
        raise InputError(f"--eval-n: expected a count >= 0, got {args.eval_n}")
    size = getattr(args, "input_size", None)
    if size is not None and not str(args.data).startswith("run:"):
        size = (size, size) if isinstance(size, int) else tuple(size)
    else:
        size = None
    try:
        result = train_masker(loaded.model, src, out=args.out, config=cfg, resume=args.resume,
                              progress=not args.quiet and sys.stderr.isatty(), eval_n=args.eval_n,
                              classifier_name=spec, device=device, input_size=size, overwrite=args.overwrite)
    except (ConfigError, InputError) as e:  # the library names its argument; the CLI names the option
        key = str(e).split(":", 1)[0]
        if key in valid:
            option = _OPTION_OF[key] if key in given_by_option else f"--set {key}"
            raise type(e)(option + str(e)[len(key):]) from None
        raise
    if args.resume and result.new_steps == 0:
        print(f"mperturb train-masker: already trained {result.steps_run} steps; nothing to do (pass a larger --steps to "
              f"continue); {Path(args.out) / 'masker.safetensors'} unchanged")
        return 0
    command = "mperturb " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if sys.argv[1:2] == ["train-masker"] else ["train-masker", "..."]))
    out = Path(args.out)
    atomic_write_text(out / CARD, model_card(result.masker, seconds=result.seconds, history=result.history, command=command))
    q = result.quality
    line = f"mperturb train-masker: {result.steps_run} steps in {result.seconds / 60:.1f} min; wrote {out / 'masker.safetensors'}"
    if q:
        line += f" (held-out pointing@tol {q['pointing_tol']:.2f}, rank accuracy {q['rank_accuracy']:.2f} on {q['n']} images)"
    print(line)
    from ..masker.train import quality_warnings

    for w in quality_warnings(q):
        print(f"mperturb: warning: {w}", file=sys.stderr)
    return 0


def _spec_key(spec: str, weights: str | None) -> tuple[str, str | None]:
    """A model spec and weights file compared across folders: file paths inside the spec are
    resolved (``python:model.py:build`` and ``python:/abs/model.py:build`` are the same)."""
    import os

    parts = [str(Path(p).resolve()) if p and os.path.exists(p) else p for p in spec.split(":")]
    return ":".join(parts), (str(Path(weights).resolve()) if weights and os.path.exists(weights) else weights)
