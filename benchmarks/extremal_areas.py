"""Achieved areas of ``extremal`` masks across image sizes and aspect ratios.

Each ShapeEvidence test image (drawn at ``size``) is widened (or heightened) to the aspect
ratio by continuing it with its mirror image on both sides, so the square image is the
centre crop of the wide one. The shipped demo model explains the true class; the achieved
area of a mask is the fraction of its pixels above ½ (``Explanation.extra["achieved_area"]``).
Prints one Markdown row per (method, size, aspect): the mean achieved area per target and the
largest relative miss over all masks. Example (the table in docs/benchmarks.md)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/extremal_areas.py \\
        --methods extremal-fast --sizes 64 112 --aspects 1 2 3 1/3 --n 2

Aspect ratios are width:height, given as ``3`` or ``1/3`` (between 1/3 and 3).
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import torch

import meaningful_perturbation as mp
from meaningful_perturbation.data import make_shape_evidence
from meaningful_perturbation.demo import load_demo_model


def widen(x: torch.Tensor, aspect: Fraction) -> torch.Tensor:
    """``(N, C, S, S)`` → ``(N, C, S, round(aspect·S))`` (or taller for aspect < 1), the added
    columns (rows) mirror the image; the original is the centre crop. ``1/3 ≤ aspect ≤ 3``."""
    if aspect < 1:
        return widen(x.transpose(-1, -2), 1 / aspect).transpose(-1, -2)
    s = x.shape[-1]
    extra = round(float(aspect) * s) - s
    left, right = extra // 2, extra - extra // 2
    mirror = x.flip(-1)
    return torch.cat([mirror[..., s - left :], x, mirror[..., :right]], dim=-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["extremal-fast"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 112])
    ap.add_argument("--aspects", nargs="+", type=Fraction, default=[Fraction(1), Fraction(2), Fraction(3), Fraction(1, 3)])
    ap.add_argument("--areas", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    ap.add_argument("--n", type=int, default=2, help="images per setting")
    args = ap.parse_args(argv)
    model = load_demo_model()
    areas = tuple(args.areas)
    print("| method | size | aspect (w:h) | " + " | ".join(f"a = {a:g}" for a in areas) + " | worst miss | s |")
    print("|---|---|---|" + "---|" * len(areas) + "---|---|")
    for method in args.methods:
        for size in args.sizes:
            t = make_shape_evidence(args.n, size=size, split="test", seed=0).to_tensors(normalize=True)
            for aspect in args.aspects:
                x = widen(t.images, aspect)
                start = time.perf_counter()
                ex = mp.explain(model, x, target=t.labels.tolist(), method=method, areas=areas)
                secs = time.perf_counter() - start
                got = torch.tensor(ex.extra["achieved_area"])  # (N, K)
                target = torch.tensor(areas)
                miss = (got - target) / target
                worst = miss.flatten()[miss.abs().flatten().argmax()]
                cells = " | ".join(f"{got[:, k].mean():.3f}" for k in range(len(areas)))
                shape = f"{x.shape[-2]}×{x.shape[-1]}"
                print(f"| {method} | {shape} | {aspect} | {cells} | {worst:+.0%} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
