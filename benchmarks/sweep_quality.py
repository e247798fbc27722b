"""Quality and cost of ``extremal-sweep`` against ``rise``, ``occlusion`` and ``extremal-fast``
on the ShapeEvidence benchmark, with paired differences (issue 15, "Quality and cost").

Runs :func:`~meaningful_perturbation.evaluation.benchmark.run_benchmark` (the code behind
``mperturb benchmark``) once on the same held-out images for every method, including a
shorter sweep schedule, and prints:

1. the benchmark's table (mean [95% bootstrap CI], seconds and model passes per image);
2. paired differences per image, ``sweep − other`` (mean [95% paired bootstrap CI]) for exact
   pointing, pointing@tol and rank accuracy: the sweep *matches or beats* a method on a
   metric when the interval's upper end is ≥ 0 (it is not shown to be worse);
3. whether each shorter schedule's means lie inside the CIs of the default schedule (the
   criterion for shipping a shorter default).

Usage (the full run, on a GPU)::

    python benchmarks/sweep_quality.py --n 200 --device cuda --out runs/sweep_n200

a quick check on a CPU::

    python benchmarks/sweep_quality.py --n 16 --out runs/sweep_n16

or, from earlier JSON outputs of ``mperturb benchmark`` / this script on the same images::

    python benchmarks/sweep_quality.py --from runs/a/benchmark.json runs/b/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SWEEP = "extremal-sweep"
SHORTER = ("extremal-sweep:steps=150",)  # 12 × 150 = 1800 passes: half the default schedule
OTHERS = ("rise", "occlusion", "extremal-fast")
PAIRED = (("exact_pointing", "exact pointing"), ("pointing_tol", "pointing@tol"), ("rank_accuracy", "rank acc"))


def paired_ci(a, b, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a − b`` over the images both have (NaN dropped) and its percentile bootstrap
    95% CI, images resampled in pairs."""
    from meaningful_perturbation.metrics.stats import bootstrap_ci

    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return bootstrap_ci(d, n_boot=n_boot, seed=seed)


def report(result) -> str:
    per = result.per_image
    lines = [result.to_markdown(), "", "Paired differences per image (mean [95% paired bootstrap CI]):", ""]
    lines.append("| comparison | " + " | ".join(label for _, label in PAIRED) + " |")
    lines.append("|---|" + "---|" * len(PAIRED))
    sweeps = [m for m in per if m.split(":")[0] == SWEEP]
    others = [m for m in per if m.split(":")[0] != SWEEP]
    for s in sweeps:
        for o in others + [t for t in sweeps if t != s and s == SWEEP]:
            cells = []
            for key, _ in PAIRED:
                m, lo, hi = paired_ci(per[s][key], per[o][key])
                cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            lines.append(f"| {s} − {o} | " + " | ".join(cells) + " |")
    if SWEEP in per:
        lines += ["", f"Shorter schedules inside the 95% CI of `{SWEEP}` (default) on every quality column:", ""]
        rows = {r["method"]: r for r in result.rows}  # metric -> (mean, lo, hi)
        base = rows[SWEEP]
        for s in sweeps:
            if s == SWEEP:
                continue
            outside = []
            for key, label in PAIRED + (("deletion_auc", "deletion AUC"), ("insertion_auc", "insertion AUC")):
                mean = rows[s][key][0]
                lo, hi = base[key][1], base[key][2]
                if not lo <= mean <= hi:
                    outside.append(f"{label} {mean:.3f} outside [{lo:.3f}, {hi:.3f}]")
            lines.append(f"- {s}: " + ("yes" if not outside else "no (" + "; ".join(outside) + ")"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16, help="images (default 16; the published table: 200)")
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=[SWEEP, *SHORTER, *OTHERS],
                   help=f"rows (default: {SWEEP} {' '.join(SHORTER)} {' '.join(OTHERS)})")
    p.add_argument("--from", dest="from_json", nargs="+", default=None, metavar="JSON",
                   help="combine saved benchmark.json files of the same images instead of running")
    p.add_argument("--out", default=None, help="folder for benchmark.json and sweep_quality.md")
    args = p.parse_args(argv)

    from meaningful_perturbation.evaluation.benchmark import BenchmarkResult, run_benchmark

    if args.from_json:
        result = BenchmarkResult.combine([BenchmarkResult.from_json(json.loads(Path(f).read_text())) for f in args.from_json])
    else:
        result = run_benchmark(n=args.n, methods=args.methods, size=args.size, device=args.device,
                               batch_size=args.batch_size, progress=sys.stderr.isatty())
    text = report(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(result.to_json(), indent=1))
        (out / "sweep_quality.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
