"""``mperturb evaluate`` on tiny generated data sets, on any device: every protocol end to end.

Generates the test data sets of ``tests/eval_data.py`` (ImageNet XML and CSV, VOC 2007, COCO
2014; 64 px JPEGs, grey and CMYK among them) and a linear model whose gradient saliency is
known, runs each protocol on ``--device`` and prints a Markdown table of the results beside
the values checked by hand in ``tests/test_evaluate.py``. Exit status 1 if one differs.
This checks the plumbing on a device (CUDA included), not the papers' numbers: for those
see docs/reproduce.md.

Usage:
    python benchmarks/evaluate_smoke.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

# (protocol, data folder, extra args, model classes, what to read, expected value)
CASES = [
    ("imagenet-loc", "in_xml", ["--param", "heldout_every=2"], 3, ("rules", "value", "error"), 0.5),
    ("imagenet-loc", "in_csv", ["--param", "heldout_every=2"], 3, ("rules", "energy", "error"), 0.5),
    ("pointing", "voc", [], 20, ("all",), 2 / 3),
    ("pointing", "voc", [], 20, ("difficult",), 0.25),
    ("pointing", "coco", ["--dataset", "coco14"], 3, ("all",), 2 / 3),
    ("deletion-game", "in_xml", [], 3, ("pairs_scored",), 5),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import eval_data as d

    from meaningful_perturbation.cli import main as cli

    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d.write_imagenet(root / "in_xml", "xml")
        d.write_imagenet(root / "in_csv", "csv")
        d.write_voc(root / "voc")
        d.write_coco(root / "coco")
        d.write_model(root)
        for k, (protocol, folder, extra, classes, path, expected) in enumerate(CASES):
            out = root / f"out{k}"
            t0 = time.perf_counter()
            code = cli(["evaluate", protocol, "--data", str(root / folder), "--out", str(out), *extra,
                        "--model", f"python:{root / 'tiny_model.py'}:build{classes}", "--trust-code",
                        "--method", "gradient", "--device", args.device, "-q"])
            seconds = time.perf_counter() - t0
            value = None
            if code == 0:
                value = json.loads((out / "results.json").read_text())
                for key in path:
                    value = value[key]
            ok = value is not None and abs(float(value) - expected) < 1e-9
            bad += not ok
            rows.append(f"| {protocol} | {folder} {' '.join(extra)} | {'.'.join(path)} | {value} | {expected:.4g} | "
                        f"{'ok' if ok else 'DIFFERS'} | {seconds:.1f} |")
    print(f"mperturb evaluate smoke test, --device {args.device}\n")
    print("| protocol | data | result | value | expected | check | s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
