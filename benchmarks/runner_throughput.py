"""Throughput of ``mperturb run``: images per second for ``paper`` with the demo model on CPU.

Rows: batch sizes 1, 8 and 32 in one process (all ``--threads`` threads), then 1 vs 2
processes under ``torchrun`` (Gloo; each process gets half the threads) at batch 8.
``--steps`` is reduced from the preset's 300 (default 30) so a run takes minutes; the cost
per step is what scales, so throughput at 300 steps is roughly ``steps / 300`` of these.

Each row is a fresh ``python -m meaningful_perturbation run`` subprocess on the same N
generated ShapeEvidence images (64 px, the demo model's input size). ``loop img/s`` is the
runner's own timing of its batch loop (no interpreter start or model load; for torchrun:
N / the slowest rank's loop); ``end-to-end img/s`` divides N by the subprocess wall time.

Usage:
    python benchmarks/runner_throughput.py [--n 64] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int) -> None:
    from PIL import Image

    from meaningful_perturbation.data import make_shape_evidence

    ds = make_shape_evidence(n, size=64, seed=11)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (ds.images[i].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:03d}.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(src: Path, out: Path, batch: int, steps: int, procs: int, threads: int) -> tuple[float, float]:
    args = ["-m", "meaningful_perturbation", "run", str(src), "--out", str(out), "--model", "demo",
            "--method", "paper", "--steps", str(steps), "--batch-size", str(batch), "--device", "cpu", "-q"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    per = max(1, threads // procs)
    env.update(OMP_NUM_THREADS=str(per), MKL_NUM_THREADS=str(per))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    import json

    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # The loop time: the explain seconds (batch share) summed per rank, plus writing; the slowest rank.
    per_rank: dict[int, float] = {}
    for r in recs:
        per_rank[r["rank"]] = per_rank.get(r["rank"], 0.0) + r["seconds"] + r.get("write_seconds", 0.0)
    m = re.search(r"this run: ([0-9.]+) s", res.stderr + res.stdout)
    loop = float(m.group(1)) if (m and procs == 1) else max(per_rank.values())
    return len(recs) / loop, len(recs) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images (default 64)")
    ap.add_argument("--steps", type=int, default=30, help="optimisation steps (default 30; the preset has 300)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads in all (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--dist-batch", type=int, default=8, help="batch size of the 1-vs-2-process rows")
    args = ap.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "imgs"
        make_images(src, args.n)
        configs = [(b, 1) for b in args.batches] + [(args.dist_batch, 1), (args.dist_batch, 2)]
        seen = set()
        for k, (batch, procs) in enumerate(configs):
            if (batch, procs) in seen:
                continue
            seen.add((batch, procs))
            loop, e2e = one(src, Path(tmp) / f"out{k}", batch, args.steps, procs, args.threads)
            rows.append((batch, procs, max(1, args.threads // procs), loop, e2e))
            print(f"  batch {batch:>2}, {procs} proc: {loop:.2f} img/s (loop), {e2e:.2f} img/s (end-to-end)",
                  file=sys.stderr, flush=True)
    print(f"mperturb run throughput: paper, demo model, CPU, {args.n} images of 64 px, --steps {args.steps}, "
          f"{args.threads} threads in all, torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    print()
    print("| batch | processes | threads/process | loop img/s | end-to-end img/s |")
    print("|---:|---:|---:|---:|---:|")
    for batch, procs, thr, loop, e2e in rows:
        print(f"| {batch} | {procs} | {thr} | {loop:.2f} | {e2e:.2f} |")


if __name__ == "__main__":
    main()
