"""The area–score curve of ``extremal-sweep`` on held-out ShapeEvidence images: the nested
(reported) masks against the optimised ones they are cut from.

For each area of the ladder, over ``n`` test images explained for their true class with the
demo model, prints the mean [95% bootstrap CI] of the target's probability with only the
region kept — for the nested binary masks the method reports (``scores["masked"]``) and for
the optimised smooth masks (``scores["optimised"]``) — the optimised masks' achieved area
(pixels above ½) and the share of images whose nested mask at that area already keeps 90% of
the clean probability. Shows what cutting the masks from the ranking costs or gains.

Usage::

    python benchmarks/sweep_curve.py --n 200 --device cuda        # the full table
    python benchmarks/sweep_curve.py --n 8                        # a quick check on a CPU
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="images (default 8)")
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="override the sweep's steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import meaningful_perturbation as mp
    from meaningful_perturbation.data import make_shape_evidence
    from meaningful_perturbation.demo import DEMO_PREPROCESSING, load_demo_model
    from meaningful_perturbation.evaluation.benchmark import _ResizedInput
    from meaningful_perturbation.methods.sweep import area_curve
    from meaningful_perturbation.metrics.stats import bootstrap_ci

    device = torch.device(args.device)
    model = load_demo_model(device=device)
    if args.size != int(DEMO_PREPROCESSING["input_size"]):
        model = _ResizedInput(model, int(DEMO_PREPROCESSING["input_size"]))
    data = make_shape_evidence(args.n, size=args.size, split="test", seed=args.seed).to_tensors(device=device)
    overrides = {} if args.steps is None else {"steps": args.steps}
    kept, opt, ach, suff, clean = [], [], [], [], []
    areas = None
    for lo in range(0, args.n, args.batch_size):
        hi = min(lo + args.batch_size, args.n)
        ex = mp.explain(model, data.images[lo:hi], target=data.labels[lo:hi].tolist(), method="extremal-sweep",
                        seed=args.seed + lo, **overrides)
        c = area_curve(ex)
        areas = c["areas"]
        kept.append(c["preserved"])
        opt.append(ex.scores["optimised"])
        ach.append(torch.tensor(ex.extra["achieved_area"]))
        suff.append(c["sufficient_area"])
        clean.append(c["clean"])
    kept, opt, ach, suff, clean = (torch.cat(t) for t in (kept, opt, ach, suff, clean))

    def cell(v):
        m, lo, hi = bootstrap_ci(v)
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"

    print(f"extremal-sweep, n={args.n}, size={args.size}, device={args.device}, steps={args.steps or 'default'}")
    print(f"clean p(true class): {cell(clean)}; sufficient area (90% of clean; 1.0 = no rung): {cell(suff)}\n")
    print("| area | p kept, nested (reported) | p kept, optimised | nested − optimised | optimised mask's achieved area | share ≥ 90% of clean |")
    print("|---|---|---|---|---|---|")
    for k, a in enumerate(areas):
        share = (kept[:, k] >= 0.9 * clean).double()
        print(f"| {a:.2%} | {cell(kept[:, k])} | {cell(opt[:, k])} | {cell(kept[:, k] - opt[:, k])} | "
              f"{cell(ach[:, k])} | {share.mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
