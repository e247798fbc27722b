"""Every fault the CLI knows of ends in one ``mperturb: error: ...`` line and exit 2 (issue 13
§7): devices this build or machine lacks, seeds outside the generator's range, output folders
that cannot be created or written (no partial files left), ``report --output`` into a missing
folder, and file names with control characters printed escaped."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meaningful_perturbation import explain
from meaningful_perturbation._atomic import atomic_write_text, os_error_text
from meaningful_perturbation._runtime import check_device, check_seed
from meaningful_perturbation._terminal import escape_text
from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError, InputError

TINY = """
import torch
def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6))
    return m, {"input_size": 32, "resize": 32}
"""


@pytest.fixture()
def setup(tmp_path):
    f = tmp_path / "tiny_model.py"
    f.write_text(TINY)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    return f"python:{f}:build", img


def _explain(setup, out, *extra):
    spec, img = setup
    return main(["explain", str(img), "--model", spec, "--trust-code", "--method", "gradient", "--out", str(out), "-q", *extra])


def _one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mperturb: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -- devices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device, says", [
    ("meta", "'meta' tensors hold no data"),
    ("bogus", "'bogus' is not a device name"),
    ("cuda:x", "'cuda:x' is not a device name"),
    ("hpu", "device type 'hpu' is not supported"),
])
def test_device_refused_up_front(setup, tmp_path, capsys, device, says):
    out = tmp_path / "o"
    assert _explain(setup, out, "--device", device) == 2
    _one_error(capsys, "--device: ", says, "available: cpu")
    assert not out.exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this build and machine have CUDA")
def test_cuda_on_a_cpu_machine(setup, tmp_path, capsys):
    assert _explain(setup, tmp_path / "o", "--device", "cuda") == 2
    line = _one_error(capsys, "--device: 'cuda' is not available", "available: cpu")
    assert ("built without CUDA" in line) != torch.backends.cuda.is_built()


def test_device_index_beyond_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device(torch.device("cuda")) == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda:2': this machine has 2 cuda device\(s\), indices 0\.\.1; "
                                          r"available: cpu, cuda:0, cuda:1"):
        check_device("cuda:2", "--device")
    with pytest.raises(ConfigError, match=r"^device: expected a device name .* got 0"):
        check_device(0)


def test_benchmark_device_and_seed(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["benchmark", "--n", "2", "--device", "meta", "--out", str(out), "-q"]) == 2
    _one_error(capsys, "--device: 'meta'")
    assert main(["benchmark", "--n", "4", "--batch-size", "2", "--seed", str(2**64 - 1), "--out", str(out)]) == 2
    _one_error(capsys, f"--seed: expected an int in [0, {2**64 - 2}]", f"got {2**64 - 1}")
    assert main(["benchmark", "--n", "2", "--seed", "-1", "--out", str(out)]) == 2
    _one_error(capsys, "--seed: expected an int in [0, ")
    assert not out.exists()


# -- seeds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1180591620717411303424])
def test_seed_out_of_range(setup, tmp_path, capsys, seed):
    assert _explain(setup, tmp_path / "o", "--seed", str(seed)) == 2
    _one_error(capsys, "--seed: expected an int in [-9223372036854775808, 18446744073709551615]", f"got {seed}")
    with pytest.raises(InputError, match=rf"^seed: expected an int in \[-9223372036854775808, "
                                         rf"18446744073709551615\] .* got {seed}$"):
        explain(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), torch.rand(1, 3, 8, 8),
                method="gradient", seed=seed)


def test_seed_range_ends_are_accepted():
    assert check_seed(2**64 - 1) == 2**64 - 1 and check_seed(-(2**63)) == -(2**63)
    for s in (2**64 - 1, -(2**63)):  # exactly what torch.Generator.manual_seed takes
        torch.Generator().manual_seed(s)
    for s in (2**64, -(2**63) - 1):
        with pytest.raises((ValueError, RuntimeError)):
            torch.Generator().manual_seed(s)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    ex = explain(model, torch.rand(1, 3, 8, 8), target=0, steps=1, seed=2**64 - 1)
    assert torch.isfinite(ex.saliency).all()
    with pytest.raises(InputError, match=r"^seed: expected an int, got True$"):
        explain(model, torch.rand(1, 3, 8, 8), seed=True)


# -- output folders --------------------------------------------------------------------------

def test_out_under_a_file(setup, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert _explain(setup, blocker / "o") == 2
    _one_error(capsys, f"--out: cannot create folder {str(blocker / 'o')!r}: Not a directory",
               "a file is in the way of a folder on that path; choose another --out")
    assert main(["benchmark", "--from", "nothing.json", "--out", str(blocker / "b")]) == 2
    _one_error(capsys, "--out: cannot create folder", "Not a directory")


def _fail_on(monkeypatch, suffix, code=errno.ENOSPC):
    """``os.replace`` raises ``code`` (as a full disk would) for targets ending in ``suffix``."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            # the partly written temporary file exists at this point
            raise OSError(code, os.strerror(code), str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_disk_full_mid_image_leaves_no_partial_files(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    _fail_on(monkeypatch, "_panel.png")
    assert _explain(setup, out) == 2
    _one_error(capsys, f"--out: cannot write {str(out / 'img_panel.png')!r}: No space left on device; "
                       "free some space or choose another --out")
    # config.json is complete; the image's .npz and overlay (written before the panel) are gone,
    # and no temporary file is left.
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_failed_write_keeps_files_that_existed_before(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    assert _explain(setup, out) == 0
    before = sorted(p.name for p in out.iterdir())
    _fail_on(monkeypatch, "_summary.json", errno.EACCES)
    assert _explain(setup, out, "--overwrite") == 2
    _one_error(capsys, "cannot write", "img_summary.json", "Permission denied; choose a folder you can write to")
    assert sorted(p.name for p in out.iterdir()) == before  # the old complete set, no temporaries


def test_atomic_write_names_the_target_and_cleans_up(tmp_path, monkeypatch):
    _fail_on(monkeypatch, "x.txt", errno.EROFS)
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "x.txt", "hello")
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []
    assert os_error_text(info.value, name="--out").endswith("Read-only file system; the file system is read-only; "
                                                            "choose another --out")


def _run_folder(tmp_path):
    """A minimal run folder: the marker `mperturb run` writes (reports refuse other folders)."""
    import json

    from meaningful_perturbation.runner.owner import CONTROL, MARKER, MARKER_FORMAT

    run = tmp_path / "run"
    (run / CONTROL).mkdir(parents=True)
    (run / CONTROL / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "version": 1, "tag": "mpr-0123abcd",
                                                    "files": ["settings.json", "results.jsonl"]}))
    (run / "settings.json").write_text("{}")
    (run / "results.jsonl").write_text("")
    return run


def test_report_output_in_missing_folder_is_created(tmp_path, capsys):
    run = _run_folder(tmp_path)
    target = tmp_path / "missing" / "dir" / "x.html"
    assert main(["report", str(run), "--output", str(target)]) == 0
    assert target.is_file() and "<html" in target.read_text()
    assert capsys.readouterr().out.strip() == str(target)


def test_report_output_errors(tmp_path, capsys, monkeypatch):
    run = _run_folder(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["report", str(run), "--output", str(blocker / "x.html")]) == 2
    _one_error(capsys, f"--output: cannot create folder {str(blocker)!r}", "choose another --output")
    assert main(["report", str(run), "--output", str(tmp_path)]) == 2
    _one_error(capsys, f"--output: {str(tmp_path)!r} is a folder; give the report's file name")
    _fail_on(monkeypatch, "report.html")
    assert main(["report", str(run)]) == 2
    _one_error(capsys, f"DIR: cannot write {str(run / 'report.html')!r}: No space left on device")
    assert sorted(p.name for p in run.iterdir()) == [".mperturb", "results.jsonl", "settings.json"]


# -- last resort and escaping ----------------------------------------------------------------

def test_last_resort_oserror_is_one_line_and_other_errors_stay_bugs(monkeypatch, capsys):
    import meaningful_perturbation.cli as cli

    def raise_(exc):
        def f(args):
            raise exc
        return f

    monkeypatch.setattr(cli, "_cmd_models", raise_(PermissionError(errno.EACCES, "Permission denied", "a\x1b[31mb")))
    assert main(["models"]) == 2
    assert _one_error(capsys) == "mperturb: error: cannot use 'a\\x1b[31mb': Permission denied"
    monkeypatch.setattr(cli, "_cmd_models", raise_(KeyError("a bug")))
    with pytest.raises(KeyError):  # no blanket catch: a bug keeps its traceback
        main(["models"])


def test_escape_text():
    assert escape_text("chat_é_猫.png") == "chat_é_猫.png"
    assert escape_text("a\x1b[31m\nb\r\t\x7f") == "a\\x1b[31m\\nb\\r\\t\\x7f"
    assert escape_text("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # bidi override
    assert escape_text("bad\udcff") == "bad\\udcff"  # undecodable byte of a file name
    assert escape_text(Path("x y.png")) == "x y.png"


NASTY = "red\x1b[31m\nforged line"


def test_file_names_printed_escaped(setup, tmp_path, capsys):
    spec, img = setup
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(img).save(folder / f"{NASTY}.png")
    (folder / f"{NASTY}2.png").write_bytes(b"not an image")
    rc = main(["explain", str(folder), "--model", spec, "--trust-code", "--method", "gradient", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "\x1b" not in err and "\nforged" not in err
    assert err.count("red\\x1b[31m\\nforged line") == 2  # the per-image line and the skipping line
    assert len(err.splitlines()) == 4  # + the "1 of 2 image(s)" summary and the --device auto note
    assert err.splitlines()[0].startswith("mperturb: note: device ")
    # An error naming a file with control characters is escaped too.
    blocker = tmp_path / NASTY
    blocker.write_text("x")
    assert main(["explain", str(img), "--model", spec, "--trust-code", "--device", "cpu", "--out", str(blocker / "o")]) == 2
    line = _one_error(capsys, "red\\x1b[31m\\nforged line")
    assert "\x1b" not in line


# -- --device auto ---------------------------------------------------------------------------

@pytest.mark.parametrize("cuda, mps, chosen, why", [
    (True, True, "cuda", "CUDA is available"),
    (False, True, "mps", "MPS is available"),
    (False, False, "cpu", "no CUDA or MPS device"),
])
def test_device_auto_is_the_default_and_said_once(monkeypatch, capsys, cuda, mps, chosen, why):
    import argparse

    from meaningful_perturbation import _runtime
    from meaningful_perturbation.cli.options import add_method_options, add_model_options, build_run_settings
    from meaningful_perturbation.cli.options import flush_device_note as flush

    monkeypatch.setattr(_runtime, "_count", lambda kind: {"cpu": 1, "cuda": int(cuda), "mps": int(mps)}.get(kind, 0))
    monkeypatch.delenv("RANK", raising=False)
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    add_method_options(parser)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args([])
    assert args.device == "auto"
    assert build_run_settings(args).device == chosen
    assert capsys.readouterr().err == ""  # kept until the command's checks have passed
    flush()
    assert capsys.readouterr().err == f"mperturb: note: device {chosen} (--device auto: {why})\n"
    flush()
    assert capsys.readouterr().err == ""  # once
    assert build_run_settings(parser.parse_args(["-q"])).device == chosen
    flush()
    assert capsys.readouterr().err == ""  # -q: silent
    assert build_run_settings(parser.parse_args(["--device", "cpu"])).device == "cpu"
    flush()
    assert capsys.readouterr().err == ""  # an explicit device is not announced
    monkeypatch.setenv("RANK", "1")
    build_run_settings(args)
    assert capsys.readouterr().err == ""  # under torchrun only rank 0 speaks
    assert check_device("auto") == torch.device(chosen)


def test_device_auto_under_torchrun_is_the_local_rank(monkeypatch):
    from meaningful_perturbation import _runtime
    from meaningful_perturbation.runner.dist import DistContext, local_device

    ctx = DistContext(rank=3, world_size=4, local_rank=1)
    monkeypatch.setattr(_runtime, "_count", lambda kind: {"cpu": 1, "cuda": 2}.get(kind, 0))
    assert local_device("auto", ctx) == "cuda:1"
    assert local_device("cuda", ctx) == "cuda:1"  # what the CLI resolves auto to
    assert local_device("auto", DistContext()) == "cuda"
    monkeypatch.setattr(_runtime, "_count", lambda kind: 1 if kind == "cpu" else 0)
    assert local_device("auto", ctx) == "cpu"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["nonsense"], "mperturb: error: argument COMMAND: invalid choice: 'nonsense'"),
        (["--bogus"], "mperturb: error: unrecognized arguments: --bogus"),
        (["explain", "--steps", "abc"], "mperturb: error: explain: argument --steps: invalid int value: 'abc'"),
    ],
)
def test_usage_errors_are_one_line_at_every_level(argv, expected, capsys):
    from meaningful_perturbation.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(expected), err[0]


def test_a_flag_and_set_giving_the_same_setting_differently_are_refused(tmp_path, capsys):
    """--steps / --areas / --masker and a --set (or --config) of the same key must agree."""
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    base = ["explain", str(img), "--device", "cpu", "-q"]
    capsys.readouterr()
    assert main([*base, "--method", "paper", "--steps", "5", "--set", "steps=6", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mperturb: error: --steps: --steps 5 and steps=6 from --set/--config disagree; give the setting once"]
    assert not (tmp_path / "a").exists()
    assert main([*base, "--method", "extremal-sweep", "--areas", "0.1", "0.2", "0.4", "--set", "areas=[0.1,0.2,0.3]",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mperturb: error: --areas: --areas (0.1, 0.2, 0.4) and areas=(0.1, 0.2, 0.3)"), err
    assert main([*base, "--method", "masker", "--masker", "demo", "--set", "masker=other.safetensors",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mperturb: error: --masker: --masker 'demo' and masker='other.safetensors'"), err
    # the same value twice is accepted
    assert main([*base, "--method", "paper", "--steps", "2", "--set", "steps=2", "--out", str(tmp_path / "d")]) == 0


@pytest.mark.parametrize("argv", [
    ["--method", "extremal-sweep", "--set", "start=foo"],
    ["--method", "extremal-sweep", "--areas", "0.3", "0.1", "0.5"],
    ["--method", "extremal-channels", "--layer", "nosuchlayer"],
])
def test_a_bad_setting_is_the_only_line_with_device_auto(argv, capsys, tmp_path):
    """The --device auto note waits until the settings (and the layer) are checked: a failing
    command prints its one error line and nothing else."""
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(img)
    out = tmp_path / "o"
    assert main(["explain", str(img), "--steps", "2", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mperturb: error: "), err
    assert not out.exists()


def test_a_method_whose_optional_dependency_is_missing_is_one_error(monkeypatch, capsys, tmp_path):
    """`--method gradient` without Captum: one line naming the extra, exit 2, no folder (was an
    ImportError traceback after config.json had been written)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(img)
    out = tmp_path / "o"
    assert main(["explain", str(img), "--method", "gradient", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("mperturb: error: --method: method 'gradient' needs captum, which is not installed: "
                   "pip install 'meaningful-perturbation[baselines]'\n")
    assert not out.exists()
    import meaningful_perturbation as mp
    from meaningful_perturbation import ConfigError

    with pytest.raises(ConfigError, match=r"^method 'occlusion' needs captum"):
        mp.explain(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), torch.rand(1, 3, 8, 8),
                   method="occlusion")


def test_explain_area_warning_names_the_file(capsys, tmp_path):
    img = tmp_path / "photo_a.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(img)
    assert main(["explain", str(img), "--method", "extremal", "--steps", "1", "--set", "start=constant",
                 "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "masks miss their target area" in err and f"{img} area 0.025" in err and "image 0 area" not in err, err


def test_a_bad_value_from_the_config_file_names_config_even_with_set(capsys, tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(img)
    cfg = tmp_path / "c.json"
    cfg.write_text('{"probe_stride": 16}')
    argv = ["explain", str(img), "--method", "extremal-fast", "--config", str(cfg), "--set", "start=constant",
            "--steps", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("mperturb: error: --config: probe_stride: used only by the occlusion start")
