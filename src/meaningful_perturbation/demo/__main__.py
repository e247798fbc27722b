"""``python -m meaningful_perturbation.demo {train,eval}``: train / evaluate the demo model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from .train import DEFAULT_OUT, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m meaningful_perturbation.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the demo CNN on ShapeEvidence, write weights + metrics JSON")
    tr.add_argument("--out", default=str(DEFAULT_OUT), help="weights file (.safetensors); default: the shipped file")
    tr.add_argument("--metrics", default=None, help="metrics JSON (default: metrics.json beside --out)")
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--n", type=int, default=d.n, help="training images")
    tr.add_argument("--seed", type=int, default=d.seed)
    tr.add_argument("--blank-prob", type=float, default=d.blank_prob, help="share of shape-free images (uniform target)")
    tr.add_argument("--eval-n", type=int, default=d.eval_n, help="test-split images for the reported accuracy")
    tr.add_argument("--eval-seed", type=int, default=d.eval_seed)
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    ev = sub.add_parser("eval", help="evaluate weights on a fresh test-split draw and its counterfactuals")
    ev.add_argument("--weights", default=None, help="weights file (default: the shipped model)")
    ev.add_argument("--n", type=int, default=d.eval_n)
    ev.add_argument("--seed", type=int, default=d.eval_seed)
    ev.add_argument("--size", type=int, default=d.size)
    args = parser.parse_args(argv)

    if args.command == "train":
        from .train import main_train

        main_train(args)
        return 0
    from . import load_demo_model
    from .train import evaluate

    model = load_demo_model(weights=args.weights)
    metrics = evaluate(model, n=args.n, seed=args.seed, size=args.size)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
