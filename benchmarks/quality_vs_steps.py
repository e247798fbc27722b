"""Quality against optimisation steps, from ``mperturb benchmark`` JSON outputs.

Run the benchmark once per schedule (same images, same seed), e.g.::

    mperturb benchmark --n 200 --methods extremal --steps-scale 0.125 --out runs/ext100
    mperturb benchmark --n 200 --methods extremal --steps-scale 0.25  --out runs/ext200
    mperturb benchmark --n 200 --methods extremal --steps-scale 0.5   --out runs/ext400
    mperturb benchmark --n 200 --methods extremal                     --out runs/ext800

then::

    python benchmarks/quality_vs_steps.py runs/ext*/benchmark.json --png docs/images/quality_vs_steps.png

prints one Markdown table per method (steps, pointing@tol, rank accuracy, distractor mass,
deletion / insertion AUC, each with its bootstrap 95% CI, seconds per image) and, for each
shorter schedule, whether its pointing@tol and rank accuracy means lie inside the CI of the
longest schedule (the issue's criterion for shipping a ``-fast`` preset). With ``--png`` it
draws the curves (matplotlib, loaded only then).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [
    ("pointing_tol", "pointing@tol"),
    ("rank_accuracy", "rank acc"),
    ("distractor_mass", "distractor mass"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
]
CRITERIA = ("pointing_tol", "rank_accuracy")


def _steps(method: str, scale: float) -> int:
    from meaningful_perturbation import method_config

    return max(1, round(method_config(method).steps * scale))


def load(paths: list[Path]) -> dict[str, list[tuple[int, dict, dict]]]:
    """``method → [(steps, row, settings), ...]`` sorted by steps."""
    out: dict[str, list] = defaultdict(list)
    for p in paths:
        data = json.loads(Path(p).read_text())
        scale = float(data["settings"]["steps_scale"])
        for row in data["rows"]:
            out[row["method"]].append((_steps(row["method"], scale), row, data["settings"]))
    for rows in out.values():
        rows.sort(key=lambda r: r[0])
    return out


def table(method: str, rows) -> str:
    full_steps, full, _ = rows[-1]
    lines = [
        f"**{method}** (n = {rows[-1][2]['n']}, size {rows[-1][2]['size']})",
        "",
        "| steps | " + " | ".join(name for _, name in COLUMNS) + " | s/img | within full CI? |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for steps, row, _ in rows:
        cells = [f"{row[k]['mean']:.2f} [{row[k]['lo']:.2f}, {row[k]['hi']:.2f}]" for k, _ in COLUMNS]
        if steps == full_steps:
            verdict = "(reference)"
        else:
            ok = all(full[k]["lo"] <= row[k]["mean"] <= full[k]["hi"] or row[k]["mean"] >= full[k]["mean"] for k in CRITERIA)
            verdict = "yes" if ok else "no"
        lines.append(f"| {steps} | " + " | ".join(cells) + f" | {row['seconds_per_image']:.3g} | {verdict} |")
    return "\n".join(lines)


def plot(data, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CRITERIA), figsize=(4.5 * len(CRITERIA), 3.4))
    for ax, key in zip(axes, CRITERIA):
        for method, rows in data.items():
            xs = [r[0] for r in rows]
            mean = [r[1][key]["mean"] for r in rows]
            lo = [r[1][key]["lo"] for r in rows]
            hi = [r[1][key]["hi"] for r in rows]
            ax.plot(xs, mean, marker="o", label=method)
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("optimisation steps")
        ax.set_title(dict(COLUMNS)[key] + " (95% CI)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path, help="benchmark.json files of runs with different --steps-scale")
    ap.add_argument("--png", type=Path, help="also draw the curves into this PNG")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.json if not p.is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    data = load(args.json)
    for method, rows in data.items():
        print(table(method, rows))
        print()
    if args.png:
        plot(data, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
