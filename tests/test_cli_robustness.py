"""Option checking and file safety of `mperturb report`, `benchmark` and `--config` / `--device`.

Probe B items 1, 3, 4, 12 and probe C items 1, 7, 12: `report --output` never replaces a file
mperturb did not write; every `benchmark` option is checked (naming the option) before any
line is printed or `--out` exists, and `--device auto` works there; `--config` / `--from`
read only bounded regular UTF-8 files; `--device ""` and `cpu:N` are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "disc.png"


def _only_error(capsys, prefix: str) -> str:
    """The single stderr line, which must be `mperturb: error: <prefix>...`; nothing on stdout."""
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith(f"mperturb: error: {prefix}"), lines[0]
    assert "Traceback" not in cap.err and cap.out == ""
    return lines[0]


# -- report --output -------------------------------------------------------------------------

def _run_folder(tmp_path: Path) -> Path:
    """A finished run folder as `mperturb run` leaves it (marker, settings, results, one item)."""
    from meaningful_perturbation.runner.owner import CONTROL, MARKER, MARKER_FORMAT

    run = tmp_path / "RO"
    (run / CONTROL).mkdir(parents=True)
    (run / "items").mkdir()
    (run / CONTROL / MARKER).write_text(json.dumps({
        "format": MARKER_FORMAT, "version": 1, "tag": "mpr-00ff00ff",
        "files": ["settings.json", "results.jsonl", "failures.jsonl"]}))
    (run / "settings.json").write_text('{"format": "meaningful-perturbation/run"}\n')
    (run / "results.jsonl").write_text('{"id": "a", "path": "a.png", "scores": {"clean": 0.9}}\n')
    (run / "items" / "a.npz").write_bytes(b"PK\x03\x04 an explanation")
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_output_refuses_files_it_did_not_write(tmp_path, capsys):
    run = _run_folder(tmp_path)
    notes = tmp_path / "mynotes.txt"
    notes.write_text("precious\n")
    fake_html = tmp_path / "page.html"
    fake_html.write_text("<!DOCTYPE html><html><title>my page</title></html>")
    before_run, before_notes = _snapshot(run), notes.read_bytes()
    cases = {
        notes: "exists and is not a report written by mperturb",
        fake_html: "exists and is not a report written by mperturb",
        run / "settings.json": "inside the run folder and does not end in .html",
        run / "results.jsonl": "inside the run folder and does not end in .html",
        run / "failures.jsonl": "inside the run folder and does not end in .html",  # recorded, not yet written
        run / "items" / "a.npz": "inside the run's items/ folder",
        run / "items" / "new.html": "inside the run's items/ folder",
        run / ".mperturb" / "run.json": "inside the run's control folder",
    }
    for target, reason in cases.items():
        assert main(["report", str(run), "--output", str(target)]) == 2, target
        line = _only_error(capsys, f"--output: {str(target)!r}")
        assert reason in line, line
    assert _snapshot(run) == before_run  # not one byte of the run changed, nothing added
    assert notes.read_bytes() == before_notes
    assert "my page" in fake_html.read_text()


def test_report_output_refuses_links_and_special_files(tmp_path, capsys):
    run = _run_folder(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    link = tmp_path / "link.html"
    link.symlink_to(notes)
    assert main(["report", str(run), "--output", str(link)]) == 2
    assert "is a symbolic link" in _only_error(capsys, "--output:")
    assert link.is_symlink() and notes.read_text() == "keep me"
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    assert main(["report", str(run), "--output", str(fifo)]) == 2  # returns: never opens the pipe
    assert "not a regular file" in _only_error(capsys, "--output:")


def test_report_output_replaces_only_its_own_reports(tmp_path, capsys):
    run = _run_folder(tmp_path)
    outside = tmp_path / "reports" / "r.html"
    assert main(["report", str(run), "--output", str(outside)]) == 0
    assert main(["report", str(run), "--output", str(outside)]) == 0  # a report it wrote: replaced
    assert '<meta name="generator" content="mperturb report">' in outside.read_text()
    inside = run / "summary.html"
    assert main(["report", str(run), "--output", str(inside)]) == 0
    marker = json.loads((run / ".mperturb" / "run.json").read_text())
    assert "summary.html" in marker["files"]  # recorded as the run's own before it was written
    assert main(["report", str(run), "--output", str(inside)]) == 0
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    # A report-looking file the run did not record is still not the run's: refused.
    stray = run / "stray.html"
    stray.write_text(outside.read_text())
    assert main(["report", str(run), "--output", str(stray)]) == 2
    assert "exists and was not written by mperturb" in _only_error(capsys, "--output:")


def test_report_default_refuses_foreign_report_html(tmp_path, capsys):
    run = _run_folder(tmp_path)
    (run / "report.html").write_text("my own notes")
    assert main(["report", str(run)]) == 2
    assert "exists and was not written by mperturb" in _only_error(capsys, "DIR:")
    assert (run / "report.html").read_text() == "my own notes"


def test_write_report_api_refuses_too(tmp_path):
    from meaningful_perturbation.runner import write_report
    from meaningful_perturbation.runner.report import is_mperturb_report

    run = _run_folder(tmp_path)
    with pytest.raises(InputError, match=r"^--output: .*settings\.json"):
        write_report(run, path=run / "settings.json")
    assert (run / "settings.json").read_text().startswith('{"format"')
    path = write_report(run, path=tmp_path / "ok.html")
    assert is_mperturb_report(path) and not is_mperturb_report(run / "settings.json")
    assert not is_mperturb_report(tmp_path / "missing.html")


# -- benchmark: every option checked up front ------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if the benchmark loads or times a model (the checks must come first)."""
    import meaningful_perturbation.demo as demo
    import meaningful_perturbation.evaluation.benchmark as bench

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(demo, "load_demo_model", boom)
    monkeypatch.setattr(bench, "estimate_seconds", boom)
    monkeypatch.setattr(bench, "run_benchmark", boom)


@pytest.mark.parametrize("argv, option, text", [
    (["--size", "0"], "--size", "expected an int in [32, 1024], got 0"),
    (["--size", "100000"], "--size", "got 100000"),
    (["--size", "1024", "--n", "1000"], "--n", "more than the 268435456"),
    (["--n", "0"], "--n", "expected an int >= 1, got 0"),
    (["--n", "-1"], "--n", "got -1"),
    (["--steps-scale", "nan"], "--steps-scale", "expected a number in (0, 1000], got nan"),
    (["--steps-scale", "inf"], "--steps-scale", "got inf"),
    (["--steps-scale", "0"], "--steps-scale", "got 0.0"),
    (["--steps-scale", "-1"], "--steps-scale", "got -1.0"),
    (["--steps-scale", "1e308"], "--steps-scale", "got 1e+308"),
    (["--batch-size", "0"], "--batch-size", "expected an int >= 1, got 0"),
    (["--curve-steps", "0"], "--curve-steps", "got 0"),
    (["--curve-steps", "5000"], "--curve-steps", "expected an int in [1, 4096]"),
    (["--seed", "-1"], "--seed", "got -1"),
    (["--methods", "nope"], "--methods", "unknown method 'nope'"),
    (["--methods", "paper:steps=0"], "--methods", "'paper:steps=0'"),
    (["--methods", "paper,paper"], "--methods", "given twice"),
    (["--family", "nope"], "--family", "expected one of shapes, textures"),
    (["--device", ""], "--device", "got an empty value"),
    (["--device", "cpu:7"], "--device", "1 cpu device"),
    (["--device", "foo"], "--device", "'foo' is not a device name"),
    (["--device", "meta"], "--device", "hold no data"),
])
def test_benchmark_bad_option_is_one_line_before_anything(tmp_path, capsys, no_model, argv, option, text):
    out = tmp_path / "deep" / "BO"
    assert main(["benchmark", *argv, "--out", str(out)]) == 2
    line = _only_error(capsys, f"{option}: ")
    assert text in line, line
    assert not (tmp_path / "deep").exists()  # neither --out nor its parents were created


def test_benchmark_device_auto_is_the_default_and_announced_once(tmp_path, capsys):
    from meaningful_perturbation._runtime import check_device

    expected = str(check_device("auto"))
    for extra in ([], ["--device", "auto"]):
        out = tmp_path / f"b{len(extra)}"
        argv = ["benchmark", "--n", "2", "--methods", "center", "--curve-steps", "2", "--out", str(out), *extra]
        assert main(argv) == 0
        err = capsys.readouterr().err
        notes = [ln for ln in err.splitlines() if ln.startswith("mperturb: note: device")]
        assert notes == [f"mperturb: note: device {expected} (--device auto: "
                         + {"cuda": "CUDA is available", "mps": "MPS is available"}.get(expected, "no CUDA or MPS device")
                         + ")"], err
        assert err.index("mperturb: note: device") < err.index("mperturb benchmark: 2 image(s)")  # before the estimate
        settings = json.loads((out / "benchmark.json").read_text())["settings"]
        assert settings["device"] == expected and settings["n"] == 2
    assert main(["benchmark", "--n", "2", "--methods", "center", "--curve-steps", "2", "--device", "cpu", "-q",
                 "--out", str(tmp_path / "q")]) == 0
    assert capsys.readouterr().err == ""  # an explicit device: no note; -q: no estimate, no bar


def test_benchmark_progress_counts_images_and_names_the_running_method(capsys):
    from meaningful_perturbation.evaluation import run_benchmark

    run_benchmark(n=3, methods=["center", "random"], batch_size=2, curve_steps=2, progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "batch" not in err
    assert "6/6" in err and "image" in err  # 2 methods x 3 images
    assert "method 1/2 center: explaining" in err and "method 2/2 random: scoring" in err
    # Method 2 is named only once method 1 has explained all its images.
    first = err.index("method 2/2")
    assert "3/6" in err[:first] and "4/6" not in err[:first]


def test_benchmark_library_checks_before_work(monkeypatch):
    import meaningful_perturbation.demo as demo
    from meaningful_perturbation.evaluation import benchmark as bench

    monkeypatch.setattr(demo, "load_demo_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ConfigError, match=r"^n: expected an int >= 1, got 0$"):
        bench.estimate_seconds(["center"], n=0)
    with pytest.raises(ConfigError, match=r"^steps_scale: expected a number in \(0, 1000\], got 1e\+308$"):
        bench.run_benchmark(n=2, methods=["paper"], steps_scale=1e308, progress=False)  # was an OverflowError
    with pytest.raises(ConfigError, match=r"^--size: "):
        bench.check_benchmark_settings(size=16, names={"size": "--size"})
    checked = bench.check_benchmark_settings(n=3, methods=["paper:steps=4", "center"], steps_scale=0.5, device="auto")
    assert checked.variants["paper:steps=4"] == ("paper", {"steps": 4})  # explicit settings win over the scale
    assert checked.device == torch.device(str(checked.device)) and checked.methods == ("paper:steps=4", "center")


def test_estimate_accepts_device_auto():
    from meaningful_perturbation.evaluation.benchmark import estimate_seconds

    est = estimate_seconds(["center"], n=2, curve_steps=2, device="auto")  # was a RuntimeError from torch
    assert set(est) == {"center"} and est["center"] > 0


def _unreadable_json(tmp_path, big_text):
    """A non-UTF-8 file, a FIFO and an oversized file (``big_text``), all named ``*.json``."""
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x80\x04junk")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text(big_text)
    return bad, fifo, big


def test_benchmark_from_reads_only_bounded_regular_utf8_files(tmp_path, capsys, monkeypatch):
    import meaningful_perturbation.cli.benchmark as cli_bench

    bad, fifo, big = _unreadable_json(tmp_path, " " * 200 + "{}")
    monkeypatch.setattr(cli_bench, "MAX_FROM_BYTES", 100)
    for path, text in ((bad, "is not UTF-8 text"), (fifo, "is a FIFO"), (big, "holds more than 100 bytes"),
                       (tmp_path, "is a folder")):
        out = tmp_path / "never"
        assert main(["benchmark", "--from", str(path), "--out", str(out)]) == 2
        assert text in _only_error(capsys, f"--from: {str(path)!r}")
        assert not out.exists()


# -- --config --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["explain", "run"])
def test_config_reads_only_bounded_regular_utf8_files(tmp_path, capsys, monkeypatch, command):
    import meaningful_perturbation.cli.options as options

    bad, fifo, big = _unreadable_json(tmp_path, " " * 100 + '{"steps": 2}')
    monkeypatch.setattr(options, "MAX_CONFIG_BYTES", 64)
    cases = [(bad, "is not UTF-8 text (byte 0"), (fifo, "is a FIFO (named pipe), not a regular file"),
             (big, "holds more than 64 bytes"), (tmp_path, "is a folder, not a regular file"),
             (tmp_path / "missing.json", "cannot read")]
    if os.path.exists("/dev/zero"):
        cases.append((Path("/dev/zero"), "is a device, not a regular file"))  # was unbounded memory
    src = tmp_path / "src"
    src.mkdir()
    (src / "disc.png").write_bytes(EXAMPLE.read_bytes())
    for path, text in cases:
        out = tmp_path / "out"
        target = str(src / "disc.png") if command == "explain" else str(src)
        assert main([command, target, "--config", str(path), "--out", str(out), "--steps", "1"]) == 2
        assert text in _only_error(capsys, f"--config: {str(path)!r}" if text != "cannot read" else "--config: ")
        assert not out.exists()


def test_config_with_utf8_bom_is_read():
    import argparse

    from meaningful_perturbation.cli.options import build_run_settings, read_option_text

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.json"
        path.write_bytes(b"\xef\xbb\xbf" + b'{"steps": 7}')
        assert read_option_text(str(path), "--config", limit=100) == '{"steps": 7}'
        settings = build_run_settings(argparse.Namespace(config=str(path), device="cpu"))
        assert settings.config["steps"] == 7


# -- --device --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    ("", "--device: expected a device name such as auto, cpu, cuda or cuda:1, got an empty value"),
    ("   ", "got an empty value"),
    ("cpu:7", "--device: 'cpu:7': this machine has 1 cpu device"),
    ("cpu:1", "'cpu:1'"),
])
@pytest.mark.parametrize("command", ["explain", "run"])
def test_device_empty_or_cpu_index_refused(tmp_path, capsys, command, value, text):
    out = tmp_path / "out"
    target = str(EXAMPLE) if command == "explain" else str(EXAMPLE.parent)
    assert main([command, target, "--device", value, "--out", str(out)]) == 2
    assert text in _only_error(capsys, "--device: ")
    assert not out.exists()


def test_device_option_resolution():
    from meaningful_perturbation._runtime import check_device
    from meaningful_perturbation.cli.options import resolve_device_option

    assert resolve_device_option("cpu") == ("cpu", False)
    assert resolve_device_option("cpu:0") == ("cpu:0", False)  # index 0 is the one CPU device
    assert resolve_device_option(None) == (str(check_device("auto")), True)
    assert resolve_device_option("AUTO") == (str(check_device("auto")), True)


# -- docs ------------------------------------------------------------------------------------

def test_cli_md_agrees_with_the_panel_and_the_measured_benchmark_time():
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    figures = (ROOT / "docs" / "figures.md").read_text(encoding="utf-8")
    assert "**deleted region** (deletion game)" in figures
    assert "the fourth tile is the *deleted* region" in cli and "fourth tile is the *kept*" not in cli
    bench = cli[cli.index("## `benchmark`"):]
    assert "about 3 minutes on 2 CPU cores" not in bench
    assert "8 min 20 s" in bench and "14 min 18 s" in bench and "estimate line" in bench
    assert "[--device auto|cpu|cuda|mps]" in bench
