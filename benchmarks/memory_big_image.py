"""Peak memory of ``mperturb explain`` on large, highly compressible images (issue 13 §2).

For each side S and format, writes a flat grey S x S image (PNG: 24 KB to ~170 KB, the kind of
file that is tiny on disk but large once decoded; JPEG: decoded reduced by DCT scaling), runs ``mperturb explain FILE --steps 3 -q`` with the
bundled demo model (224 px input) in a fresh subprocess, and prints the subprocess's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) next to the size of one decoded 8-bit RGB copy
of the image (3 bytes per pixel) and the peak of the same run on a 64 x 64 image (the cost of
importing torch and the model, which any run pays).

    python benchmarks/memory_big_image.py [--sides 4000 12000] [--formats png jpeg] [--src PATH]

``--src`` puts another checkout's ``src`` first on ``PYTHONPATH`` (e.g. to compare with an
older version). Each size runs in its own process, one after the other.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import resource, sys
from meaningful_perturbation.cli import main
rc = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "RC", rc)
"""


def run_one(image: Path, out: Path, src: str) -> tuple[float, float, int]:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "explain", str(image), "--out", str(out), "--steps", "3", "-q"],
        capture_output=True, text=True, env=env,
    )
    wall = time.perf_counter() - t0
    if "PEAK_KB" not in proc.stdout:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise SystemExit(f"{image.name}: run failed ({tail[0]})")
    parts = proc.stdout.split("PEAK_KB")[1].split()
    return int(parts[0]) / 1024.0, wall, int(parts[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[4000, 12000])
    parser.add_argument("--formats", nargs="+", default=["png", "jpeg"], choices=["png", "jpeg"])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args()

    from PIL import Image

    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, src={args.src}")
    print(f"{'image':>17} {'file KB':>8} {'RGB copy MB':>12} {'peak RSS MB':>12} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt in args.formats:
            for side in [64, *args.sides]:
                image = folder / f"flat{side}.{'jpg' if fmt == 'jpeg' else 'png'}"
                Image.new("L", (side, side), 128).save(image)
                peak, wall, rc = run_one(image, folder / f"out{side}{fmt}", args.src)
                rgb_mb = side * side * 3 / 2**20
                label = f"{side}x{side} {fmt}"
                print(f"{label:>17} {image.stat().st_size / 1024:8.0f} {rgb_mb:12.1f} {peak:12.0f} {wall:7.1f}"
                      + ("" if rc == 0 else f"  (exit {rc})"), flush=True)
                image.unlink()


if __name__ == "__main__":
    main()
