"""Start-up cost of ``mperturb run`` for a large manifest: reading it and giving every row an id.

For each case a fresh subprocess writes a CSV manifest of ``--rows`` rows (default
1,000,000), then times :func:`meaningful_perturbation.runner.load_source` (parse + ids) and
the per-rank work done before the first item (sharding, the set of done ids of an empty
folder), and reports the process's peak RSS above its RSS after imports
(``resource.getrusage``, Linux: KiB). Cases: every row the same image (the worst case of the
old quadratic id search: 10,000 such rows took 81 s), 1,000 images repeated 1,000 times, and
all rows distinct. The images need not exist: ids are given before any image is read.

Usage:
    python benchmarks/manifest_scale.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from meaningful_perturbation.runner import load_source
from meaningful_perturbation.runner.dist import DistContext, shard
from meaningful_perturbation.runner.merge import done_ids
path, out = Path(sys.argv[1]), Path(sys.argv[2])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
items, info = load_source(path)
t1 = time.perf_counter()
mine = shard(items, DistContext(rank=1, world_size=4))
finished = done_ids(out)
todo = [it for it in mine if it.id not in finished]
t2 = time.perf_counter()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert len({it.id.lower() for it in items}) == len(items)
print(json.dumps({"rows": len(items), "load_s": t1 - t0, "shard_s": t2 - t1, "peak_mib": (rss1 - rss0) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.rows
    cases = {
        "one image, repeated": lambda i: "same.png",
        "1,000 images x repeats": lambda i: f"img{i % 1000:04d}.png",
        "all distinct": lambda i: f"dir{i // 1000:04d}/img{i:07d}.png",
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    print(f"manifest start-up: {n:,} CSV rows, python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible\n")
    print("| manifest | rows | load_source (parse + ids) s | shard + done ids s | peak RSS above imports MiB |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path_of in cases.items():
            manifest = os.path.join(tmp, "m.csv")
            with open(manifest, "w") as f:
                f.write("path,target\n")
                f.writelines(f"{path_of(i)},{i % 10}\n" for i in range(n))
            res = subprocess.run([sys.executable, "-c", CHILD, manifest, os.path.join(tmp, "out")], env=env,
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {name} | {r['rows']:,} | {r['load_s']:.1f} | {r['shard_s']:.2f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
