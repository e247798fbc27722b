"""Fuzz tests (hypothesis) of the promises of issue 13's bar, over four kinds of hostile input:
image bytes, manifests, a run folder's ``settings.json`` / marker files, and ``.npz``
explanation files.

For every generated input:

* no exception outside the project's family (:mod:`meaningful_perturbation.errors`): the
  Python API raises only ``MeaningfulPerturbationError`` subclasses, the CLI
  (:func:`meaningful_perturbation.cli.main`, in-process) returns 0, 1 or 2 and never raises,
  and an exit 2 is one ``mperturb: error: ...`` line;
* no write outside ``--out``: every example works in a fresh folder (also the current
  directory) whose files outside ``--out`` are snapshotted (names, sizes, mtimes, bytes)
  before and after;
* no file lost: files the "user" put inside and outside ``--out`` are unchanged, byte for byte.

Deterministic and CI-sized: ``derandomize=True`` (the same examples on every run), no example
database, a fixed number of examples per test (whole file ~30-60 s on 2 cores).
Table of the kinds tried and the tests proving each promise: docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import InputError, MeaningfulPerturbationError
from meaningful_perturbation.explanation import Explanation
from meaningful_perturbation.io import load_image

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

FAST = ["--model", "demo", "--steps", "1", "--input-size", "32", "-q"]


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
    )


# ------------------------------------------------------------------------------ harness
def _state(root: Path, skip: Path | None = None) -> dict[str, Any]:
    """Every entry under ``root`` except ``skip`` and what is below it: name -> kind, size,
    mtime and (files) bytes."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if skip is None or d / n != skip)
        for n in dirnames:
            found[str((d / n).relative_to(root)) + "/"] = "dir"
        for n in sorted(filenames):
            p = d / n
            if skip is not None and p == skip:
                continue
            st_ = p.lstat()
            found[str(p.relative_to(root))] = (st_.st_size, st_.st_mtime_ns,
                                               None if p.is_symlink() else p.read_bytes())
    return found


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    """A fresh folder, also the current directory, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mpfuzz-"))
    old = os.getcwd()
    os.chdir(base)
    try:
        yield base
    finally:
        os.chdir(old)
        shutil.rmtree(base, ignore_errors=True)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``mperturb ARGV`` in-process: (exit status, stdout, stderr). Any exception escaping
    ``main`` fails the test (that is the point)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _check_exit(rc: int, err: str, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    event(f"exit {rc}" + (f": {err.split(':')[2].strip()[:40]}" if rc == 2 and err.count(":") >= 2 else ""))
    assert rc in allowed, (rc, err)
    if rc == 2:
        lines = [ln for ln in err.splitlines() if not ln.startswith("mperturb: warning: ")]
        assert len(lines) == 1 and lines[0].startswith("mperturb: error: "), err
    assert "Traceback" not in err, err


def _png_bytes(array: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", **kw)
    return buf.getvalue()


def _seed_images() -> dict[str, bytes]:
    """Small valid files of every format and several modes, the starting points of mutation."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    seeds: dict[str, bytes] = {}

    def save(name: str, image: Image.Image, fmt: str, **kw: Any) -> None:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        seeds[name] = buf.getvalue()

    base = Image.fromarray(rgb)
    save("rgb.png", base, "PNG")
    save("rgba.png", base.convert("RGBA"), "PNG")
    save("p.png", base.convert("P"), "PNG", transparency=3)
    save("i16.png", Image.fromarray((rng.integers(0, 65535, (10, 12))).astype(np.uint16)), "PNG")
    save("rgb.jpg", base, "JPEG", quality=80)
    save("cmyk.jpg", base.convert("CMYK"), "JPEG")
    save("p.gif", base.convert("P"), "GIF")
    save("rgb.tif", base, "TIFF")
    save("f.tif", Image.fromarray(rng.random((10, 12)).astype(np.float32)), "TIFF")
    save("rgb.bmp", base, "BMP")
    save("rgb.webp", base, "WEBP", quality=80)
    return seeds


SEEDS = _seed_images()
# A forged PNG header may claim any size; sizes between these two would make Pillow allocate
# up to ~0.7 GB before finding the data missing (legitimate, but too slow for a unit test).
SMALL_PIXELS = 1 << 20
MAX_PIXELS_HERE = 1 << 22


def _forge_ihdr(data: bytearray, width: int, height: int, depth: int, color: int, interlace: int) -> bytearray:
    """Rewrite a PNG's IHDR fields and recompute its CRC, so decoders parse the forged values."""
    assert data[12:16] == b"IHDR"
    data[16:29] = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return data


@st.composite
def image_bytes(draw: st.DrawFn, forge_sizes: bool = True) -> tuple[str, bytes]:
    """``(file name, bytes)``: a seed image mutated by byte flips, truncation, spliced random
    bytes, forged PNG IHDR fields (with a valid CRC), overwritten header bytes, or random data."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "ihdr", "header", "random", "none"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "splice":
        i = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 16))
        data[i : i + cut] = draw(st.binary(min_size=0, max_size=64))
    elif kind == "ihdr" and data[12:16] == b"IHDR":
        dims = st.integers(0, 2048)
        if forge_sizes:
            dims = st.one_of(dims, st.integers(0, 2**32 - 1))
        width, height = draw(dims), draw(dims)
        if SMALL_PIXELS < width * height <= MAX_PIXELS_HERE * 64:  # keep to small or refused sizes
            width, height = width % 1024, height % 1024
        depth = draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 32, 255]))
        color = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7, 255]))
        data = _forge_ihdr(data, width, height, depth, color, draw(st.sampled_from([0, 1, 2])))
    elif kind == "header":
        i = draw(st.integers(0, min(40, len(data) - 1)))
        data[i : i + 4] = draw(st.binary(min_size=1, max_size=4))
    elif kind == "random":
        magic = draw(st.sampled_from([b"", bytes(SEEDS[name][:8]), b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM"]))
        data = bytearray(magic + draw(st.binary(min_size=0, max_size=300)))
    return name, bytes(data)


# ------------------------------------------------------------------------------ 1. image bytes
@fuzz_settings(400)
@given(image=image_bytes(), channels=st.sampled_from([1, 3]), reduce=st.booleans())
def test_load_image_raises_only_the_projects_errors(image, channels, reduce):
    name, data = image
    with _workdir() as work:
        path = work / name
        path.write_bytes(data)
        before = _state(work)
        min_size = (lambda hw: (2, 2)) if reduce else None
        try:
            result = load_image(path, channels=channels, min_size=min_size, max_pixels=MAX_PIXELS_HERE)
        except MeaningfulPerturbationError as e:
            assert isinstance(e, InputError), repr(e)
            text = str(e)
            event("refused: " + text[len(str(path)) + 2 :][:25])
            assert text.startswith(str(path)) and "\n" not in text, text
        else:
            event("loaded")
            assert result.mode == ("L" if channels == 1 else "RGB")
            assert result.width >= 1 and result.height >= 1
            pixels = np.asarray(result)
            assert pixels.dtype == np.uint8 and pixels.shape[:2] == (result.height, result.width)
        assert _state(work) == before  # reading never writes


@fuzz_settings(40)
@given(image=image_bytes(forge_sizes=False), overwrite=st.booleans())
def test_explain_on_mutated_images_exits_cleanly_and_writes_only_into_out(image, overwrite):
    name, data = image
    with _workdir() as work:
        (work / "data").mkdir()
        (work / "data" / name).write_bytes(data)
        out = work / "out"
        out.mkdir()
        (out / "mine.txt").write_bytes(b"user file\n")  # a user file inside --out
        (work / "victim.txt").write_bytes(b"user file\n")
        before = _state(work, skip=out)
        rc, _, err = _cli(["explain", str(work / "data" / name), "--out", str(out), *FAST,
                           *(["--overwrite"] if overwrite else [])])
        _check_exit(rc, err)
        assert _state(work, skip=out) == before
        assert (out / "mine.txt").read_bytes() == b"user file\n"
        if rc == 0:  # the image was readable: its explanation is there and loads
            ex = Explanation.load(out / (Path(name).stem + ".npz"))
            assert len(ex) == 1 and ex.saliency.shape[1:] == ex.masks.shape[2:]


# ------------------------------------------------------------------------------ 2. manifests
_GOOD = {"a.png": (24, 20), "b.jpg": (18, 22), "ünï cødé.png": (20, 20), "new\nline\x1b[31m.png": (16, 16)}


def _manifest_data(work: Path) -> Path:
    data = work / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for name, (w, h) in _GOOD.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            data / name, "JPEG" if name.endswith(".jpg") else "PNG")
    Image.fromarray((rng.random((20, 24)) > 0.5).astype(np.uint8) * 255).save(data / "mask.png")
    (data / "bad.png").write_bytes(SEEDS["rgb.png"][:60])
    (data / "text.png").write_text("not an image")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(work / "outside.png")
    return data


_PATHS = sorted(_GOOD) + ["bad.png", "text.png", "missing.png", "../outside.png", "", ".", "data",
                          "/dev/null", "/nonexistent/x.png", "mask.png", "a.png\x00", "..", "a.png "]
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_NUMBERS = st.one_of(st.integers(-(10**400), 10**400), st.integers(-50, 50), _FLOATS,
                     st.sampled_from([0, 1, 5, 20, 1e308, -1e308, 2**63]))
_BOX = st.one_of(
    st.none(),
    st.lists(_NUMBERS, min_size=0, max_size=6),
    st.lists(_NUMBERS, min_size=4, max_size=4),
    st.tuples(st.integers(-5, 20), st.integers(-5, 20), st.integers(-5, 40), st.integers(-5, 40)).map(list),
    st.text(max_size=20),
    st.sampled_from(["0,0,10,10", "inf,0,1,1", "nan nan nan nan", "1e400,0,2,2", "0,0,10", "a,b,c,d",
                     "10,10,0,0", "-5,-5,1000000,1000000"]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_TARGET = st.one_of(st.none(), st.integers(-3, 8), st.integers(-(10**30), 10**30), _FLOATS, st.booleans(),
                    st.text(max_size=10), st.sampled_from(["disc", "square", "x", "top1", "DISC", "-1"]),
                    st.lists(st.integers(0, 5), max_size=2))
_MASK = st.one_of(st.none(), st.sampled_from(["mask.png", "a.png", "bad.png", "missing.png", "../outside.png",
                                              "data", "", "/dev/null"]))


@st.composite
def manifest_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        if rows and draw(st.booleans()) and draw(st.booleans()):
            rows.append(dict(draw(st.sampled_from(rows))))  # a duplicate row
            continue
        row: dict[str, Any] = {}
        # (hypothesis favours small integers: "== top" is the rare branch)
        if draw(st.integers(0, 9)) != 9:  # mostly good images, so that most runs also explain some
            row["path"] = draw(st.one_of(st.sampled_from(sorted(_GOOD)), st.sampled_from(sorted(_GOOD)),
                                         st.sampled_from(_PATHS), st.text(max_size=12),
                                         st.integers(), st.lists(st.integers(), max_size=2)))
        if draw(st.booleans()):
            row["box"] = draw(_BOX)
        elif draw(st.integers(0, 6)) == 6:
            for k in ("x0", "y0", "x1", "y1"):
                row[k] = draw(_NUMBERS)
        if draw(st.booleans()):
            row["target"] = draw(_TARGET)
        if draw(st.integers(0, 3)) == 3:
            row["mask"] = draw(_MASK)
        if draw(st.integers(0, 5)) == 5:
            row[draw(st.text(max_size=5))] = draw(st.text(max_size=5))
        rows.append(row)
    return rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _write_manifest(path: Path, rows: list[dict[str, Any]], kind: str, ascii_json: bool,
                    junk: list[str]) -> int:
    """Write ``rows`` (plus ``junk`` lines for JSONL); returns how many items the runner must
    account for (one per data row / non-blank, non-comment JSONL line)."""
    if kind == "csv":
        fields = ["path", "box", "target", "mask", "x0", "y0", "x1", "y1"]
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            for row in rows:
                writer.writerow([_csv_cell(row.get(k)) for k in fields])
        return len(rows)
    lines = [json.dumps(r, ensure_ascii=ascii_json) for r in rows] + junk
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sum(1 for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]


@fuzz_settings(150)
@given(rows=manifest_rows(), kind=st.sampled_from(["csv", "jsonl"]), ascii_json=st.booleans(),
       junk=st.lists(st.sampled_from(["{", "[1, 2]", "null", '"path"', "# comment", "   ", '{"path": ',
                                      "[" * 5000, '{"path": "a.png", "box": [1e999, 0, 1, 1]}']), max_size=2),
       metrics=st.booleans())
def test_run_accounts_for_every_manifest_row(rows, kind, ascii_json, junk, metrics):
    with _workdir() as work:
        data = _manifest_data(work)
        manifest = data / f"manifest.{kind}"
        expected = _write_manifest(manifest, rows, kind, ascii_json, junk)
        out = work / "out"
        before = _state(work, skip=out)
        rc, _, err = _cli(["run", str(manifest), "--out", str(out), *FAST,
                           *(["--metrics"] if metrics else []), "--batch-size", "2"])
        _check_exit(rc, err)
        assert _state(work, skip=out) == before
        results, failures = _jsonl(out / "results.jsonl"), _jsonl(out / "failures.jsonl")
        if rc == 2:  # a clean refusal before any item
            assert not results and not failures, err
            return
        ids = [r["id"] for r in results + failures]
        assert len(ids) == expected and len(set(ids)) == expected, (expected, results, failures)
        assert (rc == 0) == (not failures)
        for r in results:
            assert (out / r["files"]["npz"]).is_file()
        # A clean row (an existing image, nothing else) is always explained.
        clean = [r for r in rows if set(r) == {"path"} and r["path"] in ("a.png", "b.jpg")]
        done = {r["path"] for r in results}
        event(f"{len(results)} of {expected} done")
        assert all(r["path"] in done for r in clean), (clean, done, failures)


# ------------------------------------------------------------------------------ 3. settings.json, markers
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30), _FLOATS, st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children,
                                                                               max_size=4)),
    max_leaves=12,
)


@st.composite
def mutated_json_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """A JSON document mutated at the value level (a key set to random JSON, deleted, a nested
    value replaced, the whole replaced) or the byte level (flips, truncation, random bytes)."""
    op = draw(st.sampled_from(["set", "delete", "nested", "whole", "flip", "truncate", "random", "deep"]))
    if op in ("set", "delete", "nested"):
        doc = json.loads(original)
        keys = sorted(doc)
        key = draw(st.one_of(st.sampled_from(keys), st.text(max_size=6)))
        if op == "delete":
            doc.pop(key, None)
        elif op == "nested" and isinstance(doc.get(key), dict) and doc[key]:
            inner = draw(st.sampled_from(sorted(doc[key])))
            doc[key][inner] = draw(_JSON)
        else:
            doc[key] = draw(_JSON)
        return json.dumps(doc, allow_nan=True).encode("utf-8")
    if op == "whole":
        return json.dumps(draw(_JSON)).encode("utf-8")
    if op == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    data = bytearray(original)
    if op == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            i = _position(draw, len(data))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    if op == "truncate" and data:
        return bytes(data[: _position(draw, len(data))])
    return draw(st.binary(max_size=200))


def _position(draw: st.DrawFn, n: int) -> int:
    """An index in ``range(n)`` drawn as a fraction, so that the same draws fit documents whose
    length varies between runs (timings, temporary paths): hypothesis needs stable draws."""
    return draw(st.integers(0, 1 << 16)) * n // ((1 << 16) + 1)


def _run_folder(work: Path) -> tuple[Path, Path]:
    data = work / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    (data / "broken.png").write_bytes(SEEDS["rgb.png"][:50])
    out = work / "out"
    rc, _, err = _cli(["run", str(data), "--out", str(out), *FAST])
    assert rc == 1, err  # broken.png is a failure
    return data, out


_FOREIGN = {"notes.txt": b"mine\n", "results-final.jsonl": b"mine\n", ".draft.tmp.txt": b"mine\n",
            "items/holiday.png": b"\x89PNG mine", "items/.x.tmp.npz": b"mine", "sub/keep.txt": b"mine"}


@fuzz_settings(80)
@given(data=st.data(), target=st.sampled_from(["settings.json", ".mperturb/run.json", ".mperturb/owned.txt",
                                               "results.jsonl", "failures.jsonl"]),
       extra=st.sampled_from([["--resume"], ["--resume", "--force"], ["--force"],
                              ["--resume", "--retry-failures"]]))
def test_resume_after_tampered_settings_or_marker_loses_no_file(data, target, extra):
    with _workdir() as work:
        source, out = _run_folder(work)
        for name, content in _FOREIGN.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(content)
        (work / "victim.txt").write_bytes(b"mine\n")
        original = (out / target).read_bytes()
        if target.endswith(".txt"):  # claimed ids: random lines, some aiming outside the folder
            lines = data.draw(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(
                ["../../victim", "../victim.txt", "holiday", "notes", "/etc/passwd", "..", "*"])), max_size=4))
            mutated = original + "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
        elif target.endswith(".jsonl"):  # one record line mutated, the others kept
            lines = original.split(b"\n")
            i = data.draw(st.integers(0, len(lines) - 2))
            lines[i] = data.draw(mutated_json_bytes(lines[i]))
            mutated = b"\n".join(lines)
        else:
            mutated = data.draw(mutated_json_bytes(original))
        (out / target).write_bytes(mutated)
        before = _state(work, skip=out)
        rc, _, err = _cli(["run", str(source), "--out", str(out), *FAST, *extra])
        _check_exit(rc, err)
        assert _state(work, skip=out) == before
        for name, content in _FOREIGN.items():
            assert (out / name).read_bytes() == content, name
        # The report of the (possibly still tampered) folder: one line or a page, never a traceback.
        rc_report, _, err_report = _cli(["report", str(out), "--output", str(out / "page.html")])
        _check_exit(rc_report, err_report, (0, 2))
        assert _state(work, skip=out) == before
        if rc in (0, 1) and not target.endswith(".jsonl"):  # a correct resume / restart: every item
            # exactly once, results loadable (a tampered record may make an item done again)
            results, failures = _jsonl(out / "results.jsonl"), _jsonl(out / "failures.jsonl")
            assert sorted(r["path"] for r in results) == ["img0.png", "img1.png"], (results, err)
            assert [f["path"] for f in failures] == ["broken.png"] and rc == 1, (failures, err)
            for r in results:
                ex = Explanation.load(out / r["files"]["npz"])
                assert len(ex) == 1


# ------------------------------------------------------------------------------ 4. .npz files
@pytest.fixture(scope="module")
def saved_npz(tmp_path_factory) -> bytes:
    work = tmp_path_factory.mktemp("npz")
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(work / "x.png")
    rc, _, err = _cli(["explain", str(work / "x.png"), "--out", str(work / "out"), *FAST, "--method",
                       "extremal", "--areas", "0.1", "0.2"])
    assert rc == 0, err
    return (work / "out" / "x.npz").read_bytes()


_DTYPES = ["<f4", ">f4", "<f8", "<f2", "|u1", "|i1", "<i8", "|b1", "<c8", "O", "<U3", "|V4", "<M8[s]",
           "<f16" if hasattr(np, "float128") else "<f8"]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@st.composite
def random_array_bytes(draw: st.DrawFn, like: tuple[int, ...]) -> bytes:
    kind = draw(st.sampled_from(["array", "like", "raw", "header"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "header":  # a forged .npy header: huge or odd shapes over little data
        shape = draw(st.lists(st.sampled_from([0, 1, 3, 2**31, 2**62, -1]), max_size=4))
        dtype = draw(st.sampled_from(["<f4", "|u1", "|O", "<f8", "bogus"]))
        header = repr({"descr": dtype, "fortran_order": draw(st.booleans()), "shape": tuple(shape)}).encode()
        header += b" " * (-(len(header) + 11) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + draw(st.binary(max_size=64))
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    if kind == "like":  # the original shape with one axis changed (or kept)
        shape = list(like)
        if shape and draw(st.booleans()):
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 4))
    else:
        shape = draw(st.lists(st.integers(0, 4), max_size=5))
    size = int(np.prod(shape)) if shape else 1
    if dtype.kind == "O":
        arr = np.empty(size, dtype=object)
        for i in range(size):
            arr[i] = {"x": i}
    else:
        raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        arr = np.frombuffer(raw, dtype=dtype) if dtype.itemsize else np.zeros(size, dtype)
    return _npy(arr.reshape(shape))


def _members(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes], compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


@st.composite
def mutated_npz(draw: st.DrawFn, blob: bytes) -> bytes:
    op = draw(st.sampled_from(["flip", "truncate", "member", "meta", "drop", "add", "meta-bytes"]))
    if op == "flip":
        data = bytearray(blob)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    if op == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    members = _members(blob)
    names = sorted(members)
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    if op == "member":
        name = draw(st.sampled_from([n for n in names if n != "__meta__.npy"]))
        like = np.load(io.BytesIO(members[name])).shape
        members[name] = draw(random_array_bytes(like))
    elif op == "drop":
        members.pop(draw(st.sampled_from(names)))
    elif op == "add":
        members[draw(st.text(min_size=1, max_size=10)) + ".npy"] = draw(random_array_bytes(()))
    else:
        meta = np.load(io.BytesIO(members["__meta__.npy"])).tobytes()
        new = draw(mutated_json_bytes(meta)) if op == "meta" else draw(st.binary(max_size=100))
        members["__meta__.npy"] = _npy(np.frombuffer(new, dtype=np.uint8))
    return _zip(members, compression)


@fuzz_settings(500)
@given(data=st.data())
def test_explanation_load_accepts_consistent_files_or_raises_input_error(saved_npz, data):
    blob = data.draw(mutated_npz(saved_npz))
    with _workdir() as work:
        path = work / "x.npz"
        path.write_bytes(blob)
        try:
            ex = Explanation.load(path)
        except InputError as e:
            event("refused: " + str(e)[len(str(path)) + 8 :][:30])
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            return
        event("loaded")
        n, h, w = ex.saliency.shape
        assert ex.masks.ndim == 4 and ex.masks.shape[0] == n and tuple(ex.masks.shape[2:]) == (h, w)
        assert ex.saliency.is_floating_point() and ex.masks.is_floating_point()
        assert len(ex.target) == n and all(isinstance(t, list) and t for t in ex.target)
        for v in ex.history.values():
            assert v.ndim == 3 and v.shape[1] == n and v.is_floating_point()
        for v in ex.scores.values():
            assert v.ndim >= 1 and v.shape[0] == n and v.is_floating_point()
        assert isinstance(ex.method, str) and isinstance(ex.config, dict) and isinstance(ex.extra, dict)
        if n:  # what load accepted can be used: indexed and saved again
            one = ex[0]
            assert len(one) == 1
            again = Explanation.load(one.save(work / "again.npz"))
            assert again.target == one.target


# ------------------------------------------------------------------------------ regressions the fuzz found
DEEP = "[" * 100_000 + "]" * 100_000  # nesting beyond the json module's recursion limit


def test_manifest_box_beyond_float_range_is_one_failed_item(tmp_path):
    data = _manifest_data(tmp_path)
    manifest = data / "m.jsonl"
    big = 10**400  # a JSON integer float() cannot hold: was an OverflowError traceback
    manifest.write_text(json.dumps({"path": "a.png", "box": [0, 0, 0, big]}) + "\n" + json.dumps({"path": "b.jpg"}) + "\n")
    rc, _, err = _cli(["run", str(manifest), "--out", str(tmp_path / "out"), *FAST])
    assert rc == 1, err
    (failure,) = _jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["error"] == f"SOURCE: m.jsonl line 1: box coordinates must be finite numbers, got [0, 0, 0, {big}]"
    assert [r["path"] for r in _jsonl(tmp_path / "out" / "results.jsonl")] == ["b.jpg"]


def test_manifest_records_split_only_at_real_line_ends(tmp_path):
    from meaningful_perturbation.runner import load_source

    names = ["new\nline.png", "cr\rname.png", "sep\x1ename.png", "ls\u2028name.png", "nel\x85name.png"]
    for name in names:
        Image.new("RGB", (8, 8)).save(tmp_path / name, "PNG")
    with open(tmp_path / "m.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "target"])
        writer.writerows([name, "1"] for name in names)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"path": n, "target": 1}, ensure_ascii=False)
                                                for n in names) + "\r\n", encoding="utf-8")
    for manifest in ("m.csv", "m.jsonl"):
        # Was: str.splitlines() cut records inside fields (5 rows read as 10 or more, newlines lost).
        items, _ = load_source(tmp_path / manifest)
        assert [it.rel for it in items] == names and all(it.error is None and it.label == 1 for it in items)
        assert all(it.path.is_file() for it in items)


def test_deeply_nested_json_is_one_error_line_everywhere(tmp_path):
    data, out = _run_folder(tmp_path)
    marker = out / ".mperturb" / "run.json"
    marker.write_text(DEEP)
    rc, _, err = _cli(["run", str(data), "--out", str(out), *FAST, "--resume"])
    assert rc == 2 and err == (
        f"mperturb: error: --out: cannot read the run marker {str(marker)!r} (maximum recursion depth exceeded "
        "while decoding a JSON array from a unicode string); move the folder away or delete the marker if this "
        "is no longer a run\n")
    config = tmp_path / "deep.json"
    config.write_text(DEEP)
    rc, _, err = _cli(["explain", str(data / "img0.png"), "--out", str(tmp_path / "e"), *FAST, "--config", str(config)])
    assert rc == 2 and err.startswith(f"mperturb: error: --config: {str(config)!r} is not valid JSON (maximum "
                                      "recursion depth exceeded"), err
    npz = next((out / "items").glob("*.npz"))
    members = _members(npz.read_bytes())
    members["__meta__.npy"] = _npy(np.frombuffer(DEEP.encode(), dtype=np.uint8))
    npz.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
    with pytest.raises(InputError) as info:
        Explanation.load(npz)
    assert str(info.value) == (f"path: '{npz}': metadata is not valid JSON (maximum recursion depth exceeded "
                               "while decoding a JSON array from a unicode string)")


@pytest.mark.parametrize("content", ["[1, 2]", '{"compared": [1], "format": "meaningful-perturbation/run"}',
                                     '{"compared": {"settings": "x", "config": 3}}', DEEP, "\udcff"])
def test_report_of_a_run_with_a_tampered_settings_file_still_renders(tmp_path, content):
    _, out = _run_folder(tmp_path)
    (out / "settings.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    rc, _, err = _cli(["report", str(out)])  # was: AttributeError ('list' object has no attribute 'get')
    assert rc == 0, err
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "method <b></b>, model <b></b>, steps –" in page and "img0.png" in page


def test_deeply_nested_json_in_weights_header_and_set_values(tmp_path):
    from meaningful_perturbation.methods.registry import parse_setting
    from meaningful_perturbation.models.weights import load_state_dict_file

    header = DEEP.encode()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(InputError) as info:
        load_state_dict_file(weights)
    assert str(info.value).startswith(f"{weights}: not a readable safetensors file (header is not JSON: maximum "
                                      "recursion depth exceeded"), str(info.value)
    assert parse_setting("lr=" + DEEP) == ("lr", DEEP)  # not JSON it can read: kept as the plain string
