"""``python -m meaningful_perturbation.demo {train,eval}``: train / evaluate the demo model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from ..data import FAMILIES
    from .train import DEFAULT_OUT, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m meaningful_perturbation.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a demo CNN on a ground-truth family, write weights + metrics JSON")
    tr.add_argument(
        "--family", choices=tuple(FAMILIES), default="shapes",
        help="ground-truth family: shapes (ShapeEvidence, default) or textures (TextureEvidence)",
    )
    tr.add_argument(
        "--out", default=None,
        help=f"weights file (.safetensors); default: the family's shipped file ({DEFAULT_OUT.name} for shapes)",
    )
    tr.add_argument(
        "--metrics", default=None,
        help="metrics JSON (default beside --out: metrics.json for shapes, textures_metrics.json for textures)",
    )
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--n", type=int, default=d.n, help="training images")
    tr.add_argument("--seed", type=int, default=d.seed)
    tr.add_argument("--blank-prob", type=float, default=d.blank_prob, help="share of shape-free images (uniform target)")
    tr.add_argument("--eval-n", type=int, default=d.eval_n, help="test-split images for the reported accuracy")
    tr.add_argument("--eval-seed", type=int, default=d.eval_seed)
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    ev = sub.add_parser("eval", help="evaluate weights on a fresh test-split draw and its counterfactuals")
    ev.add_argument("--family", choices=tuple(FAMILIES), default="shapes", help="ground-truth family (default shapes)")
    ev.add_argument("--weights", default=None, help="weights file (default: the family's shipped model)")
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

    model = load_demo_model(weights=args.weights, family=args.family)
    metrics = evaluate(model, n=args.n, seed=args.seed, size=args.size, family=args.family)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
