"""End-to-end tests of the ``mperturb`` CLI (tiny model, 2 optimisation steps)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from meaningful_perturbation import Explanation
from meaningful_perturbation.cli import main
from meaningful_perturbation.cli.explain import safe_stem
from meaningful_perturbation.cli.options import parse_set_value

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY = """
import torch
def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6))
    return m, {"input_size": 32, "resize": 32,
               "class_names": ["disc", "square", "triangle", "plus", "ring", "x"]}
"""


@pytest.fixture()
def model_spec(tmp_path):
    f = tmp_path / "tiny_model.py"
    f.write_text(TINY)
    return f"python:{f}:build"


def _outputs(out, stem):
    return [out / f"{stem}{s}" for s in ("_overlay.png", "_panel.png", ".npz", "_summary.json")]


def test_explain_examples_end_to_end(tmp_path, model_spec, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(EXAMPLES), "--model", model_spec, "--trust-code", "--steps", "2", "--out", str(out),
               "--target", "square", "--set", "l1=1e-3", "--set", 'game="preserve"'])
    assert rc == 0, capsys.readouterr().err
    pngs = sorted(EXAMPLES.glob("*.png"))
    assert len(pngs) == 3
    for p in pngs:
        for f in _outputs(out, p.stem):
            assert f.is_file(), f
        overlay = Image.open(out / f"{p.stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == Image.open(p).size  # original resolution
        summary = json.loads((out / f"{p.stem}_summary.json").read_text())
        assert summary["target"] == [1] and summary["target_names"] == ["square"]
        assert summary["method"] == "paper" and summary["image"] == str(p)
        assert set(summary["scores"]) >= {"clean", "masked", "perturbed"}
        assert summary["seconds"] >= 0 and summary["model"] == model_spec
        ex = Explanation.load(out / f"{p.stem}.npz")
        assert ex.saliency.shape == (1, 32, 32) and ex.config["game"] == "preserve"
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "paper" and config["config"]["l1"] == 1e-3 and config["config"]["steps"] == 2
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_overwrite_refused_then_allowed(tmp_path, model_spec, capsys):
    img = EXAMPLES / "disc.png"
    out = tmp_path / "o"
    args = ["explain", str(img), "--model", model_spec, "--trust-code", "--steps", "1", "--out", str(out), "-q"]
    assert main(args) == 0
    before = (out / "disc_summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mperturb: error:") and "--overwrite" in err and "Traceback" not in err
    assert (out / "disc_summary.json").stat().st_mtime_ns == before
    assert main(args + ["--overwrite", "--target", "top5"]) == 0
    assert len(json.loads((out / "disc_summary.json").read_text())["target"]) == 5


def test_broken_image_among_good_ones(tmp_path, model_spec, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(EXAMPLES / "x.png").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "o"
    rc = main(["explain", str(folder), "--model", model_spec, "--trust-code", "--steps", "1", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.png" in err and "Traceback" not in err
    assert all(f.is_file() for f in _outputs(out, "good"))
    assert not (out / "broken_summary.json").exists()


def test_stems_are_sanitised(tmp_path, model_spec):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(EXAMPLES / "x.png").save(folder / "..my cat (1).png")
    out = tmp_path / "o"
    assert main(["explain", str(folder / "..my cat (1).png"), "--model", model_spec, "--trust-code", "--steps", "1",
                 "--out", str(out), "-q"]) == 0
    assert (out / "my_cat_1_summary.json").is_file()
    assert safe_stem("../../etc/passwd") == "etc_passwd" and safe_stem("...") == "image"
    assert all(p.parent == out for p in out.iterdir())


def test_methods_and_models_listing(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "paper:" in text and "extremal:" in text and "steps=300" in text
    assert main(["methods", "paper"]) == 0
    assert "    l1 = 0.0001" in capsys.readouterr().out
    # A preset's overrides cite the preset's own source, not the base class's comment.
    assert main(["methods", "paper-loc"]) == 0
    text = capsys.readouterr().out
    assert "    l1 = 0.001  # λ1 = 1e-3: authors' code --loc_params" in text
    assert "    steps = 300  # authors' code: 300 iterations" in text
    assert main(["methods", "extremal-fast"]) == 0
    text = capsys.readouterr().out
    assert "    steps = 200  # a quarter of 800" in text and "2019 paper §4: 800" not in text
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "demo" in text and "python:FILE.py:FACTORY" in text


def test_set_parsing_and_errors(tmp_path, model_spec, capsys):
    assert parse_set_value("areas=[0.1,0.2]") == ("areas", [0.1, 0.2])
    assert parse_set_value("game=preserve") == ("game", "preserve")
    assert parse_set_value("l1=1e-3") == ("l1", 1e-3)
    base = ["explain", str(EXAMPLES / "x.png"), "--model", model_spec, "--trust-code", "--out", str(tmp_path / "o"), "-q"]
    for bad, needle in ([["--set", "nonsense=1"], "nonsense"], [["--set", "novalue"], "KEY=VALUE"],
                        [["--method", "nope"], "unknown method"], [["--areas", "0.1"], "areas"],
                        [["--target", "giraffe"], "giraffe"]):
        assert main(base + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("mperturb: error:") and needle in err and "Traceback" not in err
        assert err.count("\n") == 1
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"steps": 1, "tv": 0.05}')
    assert main(base + ["--config", str(cfg)]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["config"]["tv"] == 0.05


def test_missing_input_and_usage_errors(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["explain"]) == 2  # argparse usage error
    assert main([]) == 2


def test_demo_model_on_examples(tmp_path, capsys):
    demo = pytest.importorskip("meaningful_perturbation.demo")
    if not Path(demo.WEIGHTS_PATH).is_file():
        pytest.skip("demo weights not shipped yet")
    out = tmp_path / "o"
    assert main(["explain", str(EXAMPLES), "--steps", "2", "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    s = json.loads((out / "x_summary.json").read_text())
    assert s["model"] == "demo" and s["target_names"][0] in demo.DEMO_PREPROCESSING["class_names"]


def test_python_m_help():
    r = subprocess.run([sys.executable, "-m", "meaningful_perturbation", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "explain" in r.stdout and "methods" in r.stdout


def test_explain_leaves_no_config_json_after_a_target_error(tmp_path, model_spec, capsys):
    out = tmp_path / "o"
    base = ["explain", str(EXAMPLES / "x.png"), "--model", model_spec, "--trust-code", "--method", "gradient",
            "--target", "999", "-q"]
    assert main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (after the tiny model's head warning)
    assert err == "mperturb: error: --target: class index 999 out of range for a model with 6 classes"
    assert not out.exists()  # the folder and config.json this run created are removed
    kept = tmp_path / "k"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(base + ["--out", str(kept)]) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # only what this run wrote is removed
