"""Masks per second: the trained ``masker`` (one forward pass) against ``paper`` (300 steps of
optimisation), on the same images, model and device, side by side in one process.

Both go through the public ``explain`` with the demo model on N ShapeEvidence test images
(64 px) in batches of ``--batch-size``; each timed call is a full ``explain`` (clean forward,
target resolution, the method, the result's scores). Configurations alternate round-robin
after a warm-up of each; the table gives medians over ``--rounds`` rounds and the ratio of
masks per second (the issue's bar: masker >= 100x paper on CPU). ``masker`` builds the full
Explanation (its scores cost one forward of 3N images); ``masker scores=False`` only the masks
(one classifier pass for the clean scores, one for the features, one decoder pass).

Usage:
    python benchmarks/masker_speed.py [--n 16] [--batch-size 16] [--rounds 3] [--device cpu]
        [--masker PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="images (default 16)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per explain() call (default 16)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per method (median; default 3)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    ap.add_argument("--masker", default="demo", help="masker file (default: the one shipped for the demo model)")
    ap.add_argument("--paper-steps", type=int, default=300, help="paper's steps (default 300, the preset's)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import meaningful_perturbation as mp
    from meaningful_perturbation.data import make_shape_evidence
    from meaningful_perturbation.demo import load_demo_model

    device = torch.device(args.device)
    model = load_demo_model(device=device)
    t = make_shape_evidence(args.n, size=64, split="test", seed=7).to_tensors()
    x, y = t.images.to(device), t.labels.to(device)
    configs = {
        "masker": dict(method="masker", masker=args.masker),
        "masker scores=False": dict(method="masker", masker=args.masker, scores=False),
        "paper": dict(method="paper", steps=args.paper_steps),
    }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def once(kw: dict) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(0, args.n, args.batch_size):
            mp.explain(model, x[i : i + args.batch_size], y[i : i + args.batch_size], **kw)
        sync()
        return time.perf_counter() - t0

    for kw in configs.values():  # warm-up: loads, caches, allocator
        mp.explain(model, x[: min(2, args.n)], y[: min(2, args.n)], **{**kw, **({"steps": 2} if kw["method"] == "paper" else {})})
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, kw in configs.items():
            times[name].append(once(kw))
    rate = {name: args.n / statistics.median(v) for name, v in times.items()}
    print(f"device {device}, {torch.get_num_threads()} threads, n = {args.n}, batch {args.batch_size}, "
          f"median of {args.rounds} rounds, paper {args.paper_steps} steps\n")
    print("| method | masks/s | ms/mask | speed-up vs paper |")
    print("|---|---|---|---|")
    for name in configs:
        print(f"| {name} | {rate[name]:.4g} | {1000 / rate[name]:.4g} | {rate[name] / rate['paper']:.1f}x |")


if __name__ == "__main__":
    main()
