"""`mperturb run` under hostile folders and faults (issue 13 §3-§7): ownership, lock, per-item
failures, options checked first, manifest scale, tampered settings.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meaningful_perturbation.cli import main
from meaningful_perturbation.runner import load_source, read_jsonl
from meaningful_perturbation.runner.owner import CONTROL, FolderLock

FAST = ["--model", "demo", "--steps", "2", "--input-size", "32", "-q"]

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

NAN_MODEL = '''
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__(); self.conv = nn.Conv2d(3, 4, 3, padding=1); self.fc = nn.Linear(4, 6)
    def forward(self, x):
        y = self.fc(self.conv(x).mean((2, 3)))
        white = (x.flatten(1).mean(1) > 1.5).view(-1, 1)   # NaN only for (near) white images
        return torch.where(white, torch.full_like(y, float("nan")), y)
def build(): return M(), {"input_size": 32, "resize": 32}
'''


def _images(folder: Path, n: int, white: tuple[int, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if i in white:
            Image.new("RGB", (40, 40), (255, 255, 255)).save(folder / f"img{i}.png")
        else:
            Image.fromarray(rng.integers(0, 200, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ §3 ownership
def test_force_and_resume_refuse_a_folder_with_foreign_files(tmp_path, capsys):
    data = _images(tmp_path / "data", 2)
    out = tmp_path / "out"
    (out / "items").mkdir(parents=True)
    for name in ("results-2024-final.jsonl", "failures_notes.jsonl", "report.html", ".notes.tmp.txt",
                 "results.jsonl", "settings.json"):
        (out / name).write_text("mine\n")
    (out / "items" / "holiday.png").write_bytes(b"\x89PNG mine")
    before = _snapshot(out)
    for extra in (["--force"], ["--resume"], ["--resume", "--force"], []):
        capsys.readouterr()
        assert main(["run", str(data), "--out", str(out), *FAST, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"mperturb: error: --out: {str(out)!r} holds files mperturb "
                                                   "did not write (.notes.tmp.txt, failures_notes.jsonl, items/, "
                                                   "report.html, results-2024-final.jsonl, ... (2 more))")
        assert _snapshot(out) == before and not (out / CONTROL).exists()  # byte for byte, nothing added


def test_force_removes_only_the_runs_own_files(tmp_path):
    data = _images(tmp_path / "data", 3)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), "--report", *FAST]) == 0
    # The user adds files to the run folder (some named like the run's own patterns).
    foreign = {"results-final.jsonl": b"mine", "failures.rank9.jsonlx": b"mine", ".x.tmp.txt": b"mine",
               "notes.txt": b"mine", "items/holiday.png": b"mine", "items/.draft.tmp.npz": b"mine"}
    for name, content in foreign.items():
        (out / name).write_bytes(content)
    own = sorted(p.name for p in (out / "items").iterdir() if p.name not in ("holiday.png", ".draft.tmp.npz"))
    assert len(own) == 9
    # A killed run's tagged temporary file is the run's own; an untagged look-alike is not.
    tag = json.loads((out / CONTROL / "run.json").read_text())["tag"]
    (out / "items" / f".{tag}.x.npz").write_bytes(b"tmp")
    assert main(["run", str(data), "--out", str(out), "--resume", *FAST]) == 0
    assert not (out / "items" / f".{tag}.x.npz").exists()
    assert main(["run", str(data), "--out", str(out), "--force", "--seed", "3", *FAST]) == 0
    for name, content in foreign.items():
        assert (out / name).read_bytes() == content, name
    assert not (out / "report.html").exists()  # the run's own report: removed by --force
    assert sorted(p.name for p in (out / "items").iterdir() if p.name not in ("holiday.png", ".draft.tmp.npz")) == own


def test_an_item_file_the_run_did_not_write_is_never_replaced(tmp_path):
    data = _images(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), *FAST]) == 0
    recs = read_jsonl(out / "results.jsonl")
    victim = recs[0]["id"]
    # Forget the run wrote it (results line and claim gone) and put a user file there.
    (out / "results.jsonl").write_text(json.dumps(recs[1]) + "\n")
    (out / CONTROL / "owned.txt").write_text(recs[1]["id"] + "\n")
    (out / "items" / f"{victim}.npz").write_bytes(b"user's own")
    assert main(["run", str(data), "--out", str(out), "--resume", *FAST]) == 1
    assert (out / "items" / f"{victim}.npz").read_bytes() == b"user's own"
    (fail,) = read_jsonl(out / "failures.jsonl")
    assert fail["id"] == victim and fail["stage"] == "write"
    assert fail["error"] == (f"items/{victim}.npz exists and was not written by a run in this folder; "
                             "move it away and --resume")


# ------------------------------------------------------------------------------------- §5 lock
def test_a_second_run_is_refused_with_the_holders_pid(tmp_path, capsys):
    data = _images(tmp_path / "data", 1)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), *FAST]) == 0
    before = _snapshot(out)
    held = FolderLock(out).acquire()  # another run holds the folder (flock: per open file)
    try:
        capsys.readouterr()
        assert main(["run", str(data), "--out", str(out), "--force", *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"mperturb: error: --out: {str(out)!r} is in use by another mperturb run (pid {os.getpid()} on host ")
        assert err[0].endswith("; wait for it to end, or choose another --out")
        after = _snapshot(out)
        assert {k: v for k, v in after.items() if k != f"{CONTROL}/lock"} == {
            k: v for k, v in before.items() if k != f"{CONTROL}/lock"}
    finally:
        held.release()
    # Released (or its process killed: the kernel drops a flock with its process): taken over.
    (out / CONTROL / "lock").write_text('{"pid": 999999, "host": "gone"}\n')  # a stale record
    assert main(["run", str(data), "--out", str(out), "--resume", *FAST]) == 0
    assert json.loads((out / CONTROL / "lock").read_text())["pid"] == os.getpid()


def test_stale_lock_of_a_killed_process_is_recovered(tmp_path):
    import signal
    import subprocess
    import sys

    data = _images(tmp_path / "data", 1)
    out = tmp_path / "out"
    (out / CONTROL).mkdir(parents=True)
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys, time; from pathlib import Path; from meaningful_perturbation.runner.owner import FolderLock;"
            "FolderLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": src})
    try:
        assert proc.stdout.readline().strip() == "held"
        assert main(["run", str(data), "--out", str(out), *FAST]) == 2  # held by a live process
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert main(["run", str(data), "--out", str(out), *FAST]) == 0  # the dead holder's lock is gone


# --------------------------------------------------------------------------- §4 bad items
def test_nan_image_is_one_failure_and_the_rest_are_done(tmp_path, capsys):
    data = _images(tmp_path / "data", 5, white=(2,))
    model = tmp_path / "nanmodel.py"
    model.write_text(NAN_MODEL)
    out = tmp_path / "out"
    args = ["run", str(data), "--out", str(out), "--steps", "2", "-q", "--batch-size", "2",
            "--model", f"python:{model}:build", "--trust-code"]
    assert main(args) == 1
    done = sorted(r["path"] for r in read_jsonl(out / "results.jsonl"))
    assert done == ["img0.png", "img1.png", "img3.png", "img4.png"]
    (fail,) = read_jsonl(out / "failures.jsonl")
    assert fail["path"] == "img2.png" and fail["stage"] == "model"
    assert "NaN" in fail["error"]
    assert sorted(p.name for p in (out / "items").glob("*.npz")) == sorted(
        f"{r['id']}.npz" for r in read_jsonl(out / "results.jsonl"))
    # --resume: the failure is not retried (and still counted) unless asked.
    capsys.readouterr()
    assert main(args + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert "4 of 5 item(s) done (0 now, 4 already), 1 failure(s)" in err
    assert "1 item(s) failed in an earlier run and were not retried (pass --retry-failures" in err
    assert main(args + ["--resume", "--retry-failures"]) == 1  # retried: fails again, recorded once
    assert [f["path"] for f in read_jsonl(out / "failures.jsonl")] == ["img2.png"]
    # Fixed image + --retry-failures: done, failures.jsonl emptied.
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(data / "img2.png")
    assert main(args + ["--resume", "--retry-failures"]) == 0
    assert len(read_jsonl(out / "results.jsonl")) == 5 and read_jsonl(out / "failures.jsonl") == []


@pytest.mark.parametrize("row, reason", [
    ({"path": "b.png", "x0": 0, "y0": 0, "x1": "inf", "y1": 5}, "box coordinates must be finite numbers"),
    ({"path": "b.png", "box": [0, 0, "nan", 5]}, "box coordinates must be finite numbers"),
    ({"path": "b.png", "box": [5, 5, 1, 1]}, "box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0"),
    ({"path": "b.png", "target": True}, "target: expected a class index or name"),
    ({"box": [0, 0, 1, 1]}, "missing 'path'"),
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_manifest_row_is_one_failure(tmp_path, row, reason):
    _images(tmp_path, 3)
    lines = [json.dumps({"path": "img0.png", "box": [0, 0, 10, 10]}),
             row if isinstance(row, str) else json.dumps(row),
             json.dumps({"path": "img2.png", "box": [0, 0, 10, 10]})]
    (tmp_path / "b.png").write_bytes((tmp_path / "img1.png").read_bytes())
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "m.jsonl"), "--out", str(out), "--metrics", "--batch-size", "1", *FAST]
    assert main(args) == 1
    assert sorted(r["path"] for r in read_jsonl(out / "results.jsonl")) == ["img0.png", "img2.png"]
    (fail,) = read_jsonl(out / "failures.jsonl")
    assert fail["stage"] == "source" and reason in fail["error"]
    assert main(args + ["--resume"]) == 1  # the resume finishes too, without redoing anything
    assert len(read_jsonl(out / "results.jsonl")) == 2


@pytest.mark.parametrize("option, message", [
    (["--pointing-tolerance", "-5"], "--pointing-tolerance: expected a finite number of pixels >= 0, got -5.0"),
    (["--pointing-tolerance", "inf"], "--pointing-tolerance: expected a finite number of pixels >= 0, got inf"),
    (["--pointing-tolerance", "nan"], "--pointing-tolerance: expected a finite number of pixels >= 0, got nan"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--metrics", "bogus"], "--metrics: unknown metric(s) bogus; choose from pointing, energy"),
    (["--retry-failures"], "--retry-failures: only with --resume (a new run has no failures to retry)"),
])
def test_bad_option_refused_before_any_work(tmp_path, capsys, option, message):
    _images(tmp_path, 1)
    (tmp_path / "m.csv").write_text('path,box\nimg0.png,"1,1,20,20"\n')
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "m.csv"), "--out", str(out), "--metrics", *FAST, *option]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mperturb: error: {message}"]
    assert not out.exists()


def test_huge_pointing_tolerance_hits_everywhere(tmp_path):
    _images(tmp_path, 1)
    (tmp_path / "m.csv").write_text('path,box\nimg0.png,"1,1,3,3"\n')
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "m.csv"), "--out", str(out), "--metrics", "pointing",
                 "--pointing-tolerance", "1e308", *FAST]) == 0
    (rec,) = read_jsonl(out / "results.jsonl")
    assert rec["metrics"]["pointing_hit"] == 1.0


# --------------------------------------------------------------------- §7 tampered settings
@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "(expected a JSON object, got list)"),
    ('"text"', "(expected a JSON object, got str)"),
    ('{"format": "meaningful-perturbation/run", "compared": 3}', '(expected a "compared" object, got int)'),
    ('{"compared": {}}', "(expected \"format\": 'meaningful-perturbation/run', got None)"),
    ("{broken", "(JSONDecodeError: "),
    ("", "(JSONDecodeError: "),
])
def test_tampered_settings_json_is_one_error_line(tmp_path, capsys, content, why):
    data = _images(tmp_path / "data", 1)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), *FAST]) == 0
    (out / "settings.json").write_text(content)
    capsys.readouterr()
    assert main(["run", str(data), "--out", str(out), "--resume", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    path = str(out / "settings.json")
    assert len(err) == 1 and err[0].startswith(f"mperturb: error: --resume: ")
    assert repr(path) in err[0] and why in err[0]
    assert (out / "settings.json").read_text() == content
    # --force with --resume continues with the current settings (and rewrites the file).
    assert main(["run", str(data), "--out", str(out), "--resume", "--force", *FAST]) == 0
    assert json.loads((out / "settings.json").read_text())["format"] == "meaningful-perturbation/run"


@pytest.mark.parametrize("content", ["[]", '{"format": "meaningful-perturbation/run-folder", "tag": 5}', "\xff"])
def test_tampered_marker_is_one_error_line(tmp_path, capsys, content):
    data = _images(tmp_path / "data", 1)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), *FAST]) == 0
    (out / CONTROL / "run.json").write_text(content)
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", str(data), "--out", str(out), "--force", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out / CONTROL / "run.json") in err[0] and err[0].startswith("mperturb: error: --out: ")
    assert _snapshot(out) == before


# -------------------------------------------------------------------------- §6 manifest scale
def test_ids_of_repeated_rows_in_linear_time(tmp_path):
    n = 200_000
    (tmp_path / "m.csv").write_text("path\n" + "same.png\n" * n)
    t0 = time.perf_counter()
    items, _ = load_source(tmp_path / "m.csv")
    seconds = time.perf_counter() - t0
    ids = [it.id for it in items]
    assert len(set(i.lower() for i in ids)) == n
    # Same ids as before the fix: the k-th repeat is salted with "#k".
    from meaningful_perturbation.runner.sources import item_id

    salt = json.dumps([None, None, None])
    assert ids[:3] == [item_id("same.png", salt), item_id("same.png", salt + "#2"), item_id("same.png", salt + "#3")]
    assert seconds < 20, seconds  # quadratic took ~81 s for 10,000 rows

    # The ids equal those of the earlier (quadratic) search, collisions of the 8 hex digits included.
    def reference(rows: int) -> list[str]:
        used, out = set(), []
        for _ in range(rows):
            iid, k = item_id("same.png", salt), 2
            while iid.lower() in used:
                iid, k = item_id("same.png", f"{salt}#{k}"), k + 1
            used.add(iid.lower())
            out.append(iid)
        return out

    assert ids[:400] == reference(400)
