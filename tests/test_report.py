"""`mperturb report`: static HTML, escaping, safe embedded JSON, headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meaningful_perturbation.cli import main
from meaningful_perturbation.data import make_shape_evidence
from meaningful_perturbation.runner import read_jsonl, render_report
from meaningful_perturbation.runner.report import safe_json

EVIL = "<script>alert(1)</script>.png"  # a sub-folder '<script>alert(1)<' holding 'script>.png'
EVIL2 = "<img src=x onerror=alert(2)>.png"


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    ds = make_shape_evidence(4, size=40, seed=5)
    names = ["a.png", "b.png", EVIL, EVIL2]
    with open(root / "m.jsonl", "w") as f:
        for i, name in enumerate(names):
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((ds.images[i].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(p)
            ys, xs = np.nonzero(ds.masks[i])
            f.write(json.dumps({"path": name, "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                      int(ys.max()) + 1]}) + "\n")
        f.write(json.dumps({"path": "missing <b>bold</b>.png"}) + "\n")
    out = root / "out"
    code = main(["run", str(root / "m.jsonl"), "--out", str(out), "--model", "demo", "--steps", "2",
                 "--input-size", "32", "--batch-size", "4", "--metrics", "--report", "-q"])
    assert code == 1  # the missing file is a failure
    return out


def test_report_html_is_escaped(run_dir):
    text = (run_dir / "report.html").read_text()
    assert len(read_jsonl(run_dir / "results.jsonl")) == 4
    assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text  # the failure, escaped
    assert text.count('class="item"') == 4
    # Exactly the two scripts of the page: the JSON data and the sorting code.
    assert len(re.findall(r"<script\b", text)) == 2
    data = re.search(r'<script type="application/json" id="mp-data">(.*?)</script>', text, re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    assert {r["path"] for r in json.loads(data)["rows"]} >= {EVIL, EVIL2}
    for m in ("energy_box", "pointing_hit", "seconds"):
        assert f'data-key="{m}"' in text


def test_safe_json():
    s = safe_json({"a": "</script><script>alert(1)</script>&"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"a": "</script><script>alert(1)</script>&"}


def test_report_cli_and_embed(run_dir, tmp_path):
    assert main(["report", str(run_dir)]) == 0
    single = tmp_path / "single.html"
    assert main(["report", str(run_dir), "--output", str(single), "--embed"]) == 0
    text = single.read_text()
    assert text.count("data:image/png;base64,") == 8  # thumbnail + overlay per item
    other = tmp_path / "elsewhere.html"
    assert main(["report", str(run_dir), "--output", str(other)]) == 0
    srcs = re.findall(r'<img src="([^"]+)"', other.read_text())
    assert srcs and all((tmp_path / s).resolve().is_file() for s in srcs)
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "bold" in render_report(run_dir)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.attrs: list[dict] = []
        self.text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.attrs.append(d)
        if tag == "script":
            self.scripts.append(d)
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if not self._in_script:
            self.text += data


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) if not os.path.isabs(name) else (name if os.access(name, os.X_OK) else None)
        if path:
            return path
    return None


def _chrome(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_report_in_headless_chromium(run_dir, tmp_path):
    url = (run_dir / "report.html").resolve().as_uri()
    res = _chrome(tmp_path, "--dump-dom", url)
    dom = res.stdout
    assert "<table" in dom and 'id="gallery"' in dom, res.stderr[-2000:]
    assert dom.count('class="item"') == len(read_jsonl(run_dir / "results.jsonl")) == 4
    assert "sorting enabled (4 items)" in dom  # the page's own script ran
    parsed = _Elements()
    parsed.feed(dom)
    # Only the page's two scripts exist; the hostile names are text (and attribute values), never elements.
    assert [a.get("type") for a in parsed.scripts] == ["application/json", None]
    assert not any(k.startswith("on") for attrs in parsed.attrs for k in attrs)
    assert EVIL in parsed.text and EVIL2 in parsed.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in dom
    assert "ALERT" not in dom
    # Sorting: #sort=-clean orders the rows by descending clean score.
    dom2 = _chrome(tmp_path, "--dump-dom", url + "#sort=-clean").stdout
    order = re.findall(r'<tr class="item" data-index="(\d+)"', dom2)
    recs = read_jsonl(run_dir / "results.jsonl")
    expected = sorted(range(4), key=lambda i: (-recs[i]["scores"]["clean"], i))
    assert [int(i) for i in order] == expected
    shot = tmp_path / "report.png"
    _chrome(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert shot.is_file() and shot.stat().st_size > 10_000
    artifacts = os.environ.get("MPERTURB_TEST_ARTIFACTS")
    if artifacts:
        shutil.copy(shot, Path(artifacts) / "report.png")
