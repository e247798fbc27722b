"""`mperturb run`: sources, outputs, resume (incl. SIGKILL), failures, torchrun shards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meaningful_perturbation import Explanation
from meaningful_perturbation.cli import main
from meaningful_perturbation.data import make_shape_evidence
from meaningful_perturbation.runner import load_source, merge_results, read_jsonl
from meaningful_perturbation.runner.merge import append_line, done_ids, repair_tail

FAST = ["--model", "demo", "--steps", "2", "--input-size", "32", "-q"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_images(folder: Path, n: int = 6, size: int = 48) -> list[dict]:
    """ShapeEvidence PNGs + mask PNGs; returns manifest rows (relative to folder.parent)."""
    ds = make_shape_evidence(n, size=size, seed=3)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = (ds.images[i].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
        mask = ds.masks[i]
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder.parent / f"mask{i:02d}.png")
        ys, xs = np.nonzero(mask)
        rows.append({
            "path": f"{folder.name}/img{i:02d}.png", "label": int(ds.labels[i]), "name": ds.classes[ds.labels[i]],
            "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "mask": f"mask{i:02d}.png",
        })
    return rows


def results(out: Path) -> list[dict]:
    return read_jsonl(out / "results.jsonl")


def check_complete(out: Path, n: int) -> list[dict]:
    recs = results(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == n and len(set(ids)) == n
    for r in recs:
        ex = Explanation.load(out / "items" / f"{r['id']}.npz")
        assert ex.saliency.shape[0] == 1 and ex.target == [r["target"]]
        assert (out / "items" / f"{r['id']}_overlay.png").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert sorted(p.name for p in (out / "items").glob("*.npz")) == sorted(f"{i}.npz" for i in ids)
    # Every line of results.jsonl is complete JSON.
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == n and all(json.loads(line)["id"] for line in lines)
    return recs


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("runner-data")
    return root, make_images(root / "imgs")


def test_folder_source(data, tmp_path):
    root, rows = data
    out = tmp_path / "out"
    assert main(["run", str(root / "imgs"), "--out", str(out), "--batch-size", "4", *FAST]) == 0
    recs = check_complete(out, len(rows))
    assert all(r["label"] is None and r["target"] == [r["predicted"]] for r in recs)
    assert {"clean", "masked", "perturbed"} <= set(recs[0]["scores"])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["compared"]["config"]["steps"] == 2 and settings["runtime"]["batch_size"] == 4
    # Not empty: refused without --resume / --force.
    assert main(["run", str(root / "imgs"), "--out", str(out), *FAST]) == 2
    # --resume: nothing left to do, nothing rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "items").iterdir()}
    assert main(["run", str(root / "imgs"), "--out", str(out), "--resume", *FAST]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "items").iterdir()} == before
    check_complete(out, len(rows))
    # Different settings: refused, unless --force.
    assert main(["run", str(root / "imgs"), "--out", str(out), "--resume", *FAST, "--seed", "1"]) == 2
    assert main(["run", str(root / "imgs"), "--out", str(out), "--resume", "--force", *FAST, "--seed", "1"]) == 0
    assert json.loads((out / "settings.json").read_text())["compared"]["settings"]["seed"] == 1


def test_csv_manifest_with_metrics(data, tmp_path, capsys):
    root, rows = data
    manifest = root / "manifest.csv"
    with open(manifest, "w") as f:
        f.write("path,target,box,mask\n")
        for r in rows:
            f.write(f"{r['path']},{r['label']},\"{','.join(map(str, r['box']))}\",{r['mask']}\n")
    out = tmp_path / "out"
    code = main(["run", str(manifest), "--out", str(out), "--batch-size", "3", "--metrics", *FAST[:-1]])
    assert code == 0
    assert "6 of 6 item(s) done" in capsys.readouterr().out
    recs = check_complete(out, len(rows))
    by_path = {r["path"]: r for r in recs}
    for row in rows:
        rec = by_path[row["path"]]
        assert rec["target"] == [row["label"]] and rec["label_name"] == row["name"]
        m = rec["metrics"]
        assert set(m) >= {"pointing_hit", "energy_box", "energy_mask"}
        assert 0.0 <= m["energy_box"] <= 1.0 and 0.0 <= m["energy_mask"] <= 1.0 and m["pointing_hit"] in (0.0, 1.0)


def test_jsonl_manifest_class_names_and_box_keys(data, tmp_path):
    root, rows = data
    manifest = root / "manifest.jsonl"
    with open(manifest, "w") as f:
        for r in rows[:4]:
            x0, y0, x1, y1 = r["box"]
            f.write(json.dumps({"path": r["path"], "target": r["name"], "x0": x0, "y0": y0, "x1": x1, "y1": y1}) + "\n")
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out), "--batch-size", "4", "--metrics", "energy", *FAST]) == 0
    recs = check_complete(out, 4)
    for rec, row in zip(sorted(recs, key=lambda r: r["path"]), rows[:4]):
        assert rec["target"] == [row["label"]] and rec["box"] == row["box"]
        assert set(rec["metrics"]) == {"energy_box"}


def test_imagefolder_tree(data, tmp_path):
    root, rows = data
    tree = tmp_path / "tree"
    for r in rows:
        d = tree / r["name"]
        d.mkdir(parents=True, exist_ok=True)
        (d / Path(r["path"]).name).write_bytes((root / r["path"]).read_bytes())
    out = tmp_path / "out"
    assert main(["run", str(tree), "--out", str(out), "--batch-size", "6", *FAST]) == 0
    recs = check_complete(out, len(rows))
    assert sorted((r["path"].split("/")[0], r["target"][0]) for r in recs) == sorted(
        (r["name"], r["label"]) for r in rows)
    # Sub-folders that are not class names: labels are the sorted sub-folder indices.
    other = tmp_path / "other"
    for name in ("b_dogs", "a_cats"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(other / name / "x.png")
    items, info = load_source(other, class_names=("disc", "square"))
    assert info["kind"] == "imagefolder" and info["label_rule"] == "sorted sub-folder index"
    assert [(i.rel, i.label) for i in items] == [("a_cats/x.png", 0), ("b_dogs/x.png", 1)]


def test_ids_stable_unique_and_safe(tmp_path):
    (tmp_path / "a b").mkdir()
    rows = [{"path": "a b/x y.png"}, {"path": "a b/x y.png"}, {"path": "a b/x_y.png"}, {"path": "../evil.png"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, _ = load_source(tmp_path / "m.jsonl")
    ids = [i.id for i in items]
    assert len(set(ids)) == 4 and all(all(c.isalnum() or c in "._-" for c in i) for i in ids)
    assert ids == [i.id for i in load_source(tmp_path / "m.jsonl")[0]]


def test_unreadable_image_is_a_failure(data, tmp_path):
    root, rows = data
    src = tmp_path / "src"
    src.mkdir()
    for r in rows[:2]:
        (src / Path(r["path"]).name).write_bytes((root / r["path"]).read_bytes())
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--report", *FAST]) == 1
    check_complete(out, 2)
    fails = read_jsonl(out / "failures.jsonl")
    assert [f["path"] for f in fails] == ["broken.png"] and "broken.png" in fails[0]["error"]
    assert (out / "report.html").is_file()


def test_merge_dedupes_and_ignores_partial_lines(tmp_path):
    (tmp_path / "items").mkdir()
    for i in ("a", "b", "c"):
        (tmp_path / "items" / f"{i}.npz").write_bytes(b"x")
    append_line(tmp_path / "results.jsonl", {"id": "a", "v": 1})
    append_line(tmp_path / "results.rank1.jsonl", {"id": "b", "v": 1})
    append_line(tmp_path / "results.rank0.jsonl", {"id": "a", "v": 2})
    append_line(tmp_path / "results.rank0.jsonl", {"id": "z", "v": 1})  # no npz: not done
    with open(tmp_path / "results.rank1.jsonl", "a") as f:
        f.write('{"id": "c", "v"')  # killed mid-line
    assert done_ids(tmp_path) == {"a", "b"}
    repair_tail(tmp_path / "results.rank1.jsonl")
    assert (tmp_path / "results.rank1.jsonl").read_text().endswith("}\n")
    kept, _ = merge_results(tmp_path)
    assert sorted((r["id"], r["v"]) for r in kept) == [("a", 2), ("b", 1)]
    assert not list(tmp_path.glob("results.rank*.jsonl"))
    first = (tmp_path / "results.jsonl").read_bytes()
    merge_results(tmp_path)
    assert (tmp_path / "results.jsonl").read_bytes() == first


def _env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def test_sigkill_then_resume(tmp_path):
    src = tmp_path / "imgs"
    make_images(src, n=12, size=40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "meaningful_perturbation", "run", str(src), "--out", str(out),
           "--batch-size", "2", "--model", "demo", "--steps", "5", "--input-size", "32", "-q"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            p = out / "results.jsonl"
            if p.exists() and p.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = read_jsonl(out / "results.jsonl")
    assert 1 <= len(partial) < 12
    res = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "12 of 12 item(s) done" in res.stderr  # -q: the summary goes to stderr
    check_complete(out, 12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(data, tmp_path):
    root, rows = data
    args = ["run", str(root / "imgs"), "--batch-size", "2", "--model", "demo", "--steps", "2",
            "--input-size", "32", "--device", "cpu", "-q"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "meaningful_perturbation", *args, "--out", str(two)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = check_complete(one, len(rows)), check_complete(two, len(rows))
    assert sorted((r["id"], r["target"][0]) for r in a) == sorted((r["id"], r["target"][0]) for r in b)
    assert sorted(r["rank"] for r in b) == [0, 0, 0, 1, 1, 1]
    assert not list(two.glob("*.rank*.jsonl"))


def test_area_warnings_name_the_files_not_batch_indices(data, tmp_path, capsys):
    """An AreaWarning of a batch said "image 0", "image 1": the runner names each item's file."""
    root, rows = data
    out = tmp_path / "out"
    assert main(["run", str(root / "imgs"), "--out", str(out), "--batch-size", "3", "--method", "extremal",
                 "--steps", "1", "--set", "jitter=none"]) == 0
    err = capsys.readouterr().err
    assert "masks miss their target area" in err, err
    assert "img00.png area 0.025" in err and "img05.png area" in err and "image 0 area" not in err, err
