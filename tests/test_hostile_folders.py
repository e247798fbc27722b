"""Run folders and files an attacker (or an accident) arranged: links out of --out, reports on
folders that are not runs, file names that are not UTF-8 or hold terminal escapes, damaged
Hugging Face folders (issue 13, found by the fresh-user review)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation.cli import main
from meaningful_perturbation.runner import read_jsonl

FAST = ["--steps", "1", "-q", "--input-size", "32", "--device", "cpu"]


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mperturb: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("link", ["items", "results.jsonl", ".mperturb/lock"])
def test_links_in_a_run_folder_are_refused_and_nothing_outside_is_touched(tmp_path, capsys, link):
    src = _images(tmp_path / "imgs")
    out = tmp_path / "r"
    assert main(["run", str(src), "--out", str(out), *FAST]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("precious")
    target = victim if link == "items" else victim / "precious.txt"
    path = out / link
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.symlink(target, path)
    for extra in (["--force"], ["--resume"]):
        assert main(["run", str(src), "--out", str(out), *FAST, *extra]) == 2
        line = _error_line(capsys)
        assert "holds symbolic links" in line and repr(link) in line
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "precious"


def test_report_refuses_a_folder_that_is_not_a_run_and_leaves_it_alone(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {"results.jsonl": 'my notes\n{"id": "a"}\n', "results.rank3.jsonl": '{"id": "b"}\n',
             "failures.jsonl": "mine\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    assert main(["report", str(folder)]) == 2
    line = _error_line(capsys)
    assert line.startswith("mperturb: error: DIR: ") and "mperturb did not write" in line
    assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_a_file_name_that_is_not_utf8_is_one_item_and_resume_works(tmp_path, capsys):
    src = _images(tmp_path / "imgs", 1)
    bad = os.fsencode(str(src)) + b"/bad\xff\xfe.png"
    with open(bad, "wb") as f:
        f.write((src / "im0.png").read_bytes())
    out = tmp_path / "o"
    assert main(["run", str(src), "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 2 and any(r["path"].startswith("bad") for r in rows)
    assert (out / "results.jsonl").read_bytes().decode("utf-8")  # still valid UTF-8
    assert main(["run", str(src), "--out", str(out), *FAST, "--resume"]) == 0
    assert len(read_jsonl(out / "results.jsonl")) == 2


def test_run_skip_lines_escape_terminal_sequences(tmp_path, capsys):
    src = _images(tmp_path / "imgs", 1)
    (src / "\x1b[2Jcorrupt.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["run", str(src), "--out", str(tmp_path / "o"), "--steps", "1", "--input-size", "32",
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2Jcorrupt.png" in err


def test_a_damaged_hugging_face_folder_is_one_error_line(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    folder = tmp_path / "hf"
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    img = _images(tmp_path / "imgs", 1) / "im0.png"
    assert main(["explain", str(img), "--model", f"hf:{folder}", "--out", str(tmp_path / "o"), *FAST]) == 2
    line = _error_line(capsys)
    assert f"model spec 'hf:{folder}': transformers could not read the model's files" in line


def test_explanation_load_forged_header_and_history_shape_are_input_errors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    good = mp.explain(model, torch.randn(1, 3, 16, 16), target=1, steps=2).save(tmp_path / "g.npz")
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    # A history member of the right N but a wrong K (masks have K = 1).
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 1, 7), np.float32))
    forged = dict(members, **{"history/loss.npy": buf.getvalue()})
    # A header whose dict is cut off mid-token (tokenize.TokenError inside numpy).
    head = b"\x93NUMPY\x01\x00" + (16).to_bytes(2, "little") + b"{'descr': '<f4\n"
    cut = dict(members, **{"saliency.npy": head})
    for name, content in (("k.npz", forged), ("t.npz", cut)):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for n, data in content.items():
                z.writestr(n, data)
        with pytest.raises(mp.InputError, match=rf"{name}"):
            mp.Explanation.load(tmp_path / name)
    assert json.loads(bytes(np.load(good)["__meta__"]).decode())["history"]


def test_an_out_folder_inside_an_imagefolder_tree_is_not_explained(tmp_path, capsys):
    tree = tmp_path / "tree"
    for c in ("a", "b"):
        _images(tree / c, 2)
    out = tree / "zz_out"
    assert main(["run", str(tree), "--out", str(out), *FAST]) == 0
    assert main(["run", str(tree), "--out", str(out), *FAST, "--resume"]) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 4 and not any(r["path"].startswith("zz_out") for r in rows)


def test_a_manifest_row_that_is_not_utf8_does_not_refuse_the_others(tmp_path, capsys):
    src = _images(tmp_path / "imgs", 2)
    bad = os.fsencode(str(src)) + b"/lat\xe9.png"
    with open(bad, "wb") as f:
        f.write((src / "im0.png").read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"path\n" + os.fsencode(str(src / "im1.png")) + b"\n" + bad + b"\n")
    out = tmp_path / "o"
    assert main(["run", str(manifest), "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    assert len(read_jsonl(out / "results.jsonl")) == 2


def test_oversized_or_special_run_records_are_refused_before_reading(tmp_path, capsys):
    src = _images(tmp_path / "imgs", 1)
    out = tmp_path / "r"
    assert main(["run", str(src), "--out", str(out), *FAST]) == 0
    with open(out / "settings.json", "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    assert main(["run", str(src), "--out", str(out), *FAST, "--resume"]) == 2
    assert "far more than a run writes there" in _error_line(capsys)
    (out / "settings.json").unlink()
    os.mkfifo(out / "settings.json")
    assert main(["run", str(src), "--out", str(out), *FAST, "--resume"]) == 2
    assert "neither files nor folders" in _error_line(capsys)


def test_an_absurd_step_count_is_refused_before_any_work(tmp_path, capsys):
    src = _images(tmp_path / "imgs", 1)
    out = tmp_path / "o"
    assert main(["run", str(src), "--out", str(out), "-q", "--steps", str(10**20)]) == 2
    assert "steps: expected a value <= 1000000" in _error_line(capsys)
    assert not (out / "items").exists()
