"""Hostile files and sizes: memory bounded by the work, not by what a file claims (issue 13 §2),
and every damaged explanation file an InputError (issue 13 §7)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meaningful_perturbation import Explanation, figures
from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.io import (
    MAX_INPUT_SIDE,
    Geometry,
    Preprocessing,
    bounded_size,
    load_image,
    map_to_original,
    preprocess,
    resolve_preprocessing,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ----------------------------------------------------------------------------------------------
# Explanation.load
# ----------------------------------------------------------------------------------------------


def _good(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict]:
    g = torch.Generator().manual_seed(0)
    ex = Explanation(
        saliency=torch.rand(2, 8, 6, generator=g),
        masks=torch.rand(2, 1, 8, 6, generator=g),
        target=[[1], [2, 3]],
        history={"loss": torch.rand(3, 2, 1, generator=g)},
        scores={"clean": torch.rand(2, generator=g), "masked": torch.rand(2, 1, generator=g)},
        method="paper",
        config={"steps": 3},
        head="sigmoid",
    )
    path = ex.save(tmp_path / "good.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    return path, arrays, meta


def _write(path: Path, arrays: dict[str, np.ndarray], meta=None, blob: bytes | None = None) -> Path:
    a = dict(arrays)
    if meta is not None or blob is not None:
        a["__meta__"] = np.frombuffer(blob if blob is not None else json.dumps(meta).encode(), np.uint8)
    np.savez(path, **a)
    return path


def test_load_round_trip_keeps_every_field(tmp_path):
    path, arrays, _ = _good(tmp_path)
    back = Explanation.load(path)
    assert torch.equal(back.saliency, torch.from_numpy(arrays["saliency"]))
    assert torch.equal(back.masks, torch.from_numpy(arrays["masks"]))
    assert back.target == [[1], [2, 3]] and back.head == "sigmoid" and back.config == {"steps": 3}
    assert torch.equal(back.history["loss"], torch.from_numpy(arrays["history/loss"]))
    assert set(back.scores) == {"clean", "masked"}


def test_load_damaged_archives_are_input_errors(tmp_path):
    path, _, _ = _good(tmp_path)
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "zero.npz").write_bytes(b"")
    for name in ("trunc.npz", "zero.npz"):
        with pytest.raises(InputError, match=r"is not a readable explanation \.npz file \(not a zip archive"):
            Explanation.load(tmp_path / name)
    with pytest.raises(InputError, match="is a folder"):
        Explanation.load(tmp_path)
    # A flipped byte inside the compressed saliency: zlib or the CRC check catches it.
    flipped = bytearray(raw)
    off = raw.index(b"saliency.npy") + 60
    flipped[off] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"(member 'saliency'|not a readable explanation)"):
        Explanation.load(tmp_path / "flip.npz")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: {k: v for k, v in m.items() if k != "target"}, "metadata has no 'target' entry"),
        (lambda m: {**m, "history": m["history"] + ["ghost"]},
         "member 'history/ghost' is missing (the metadata refers to it)"),
        (lambda m: {**m, "method": 3}, "metadata 'method' is a int, expected a str"),
        (lambda m: {**m, "target": [[1], ["a"]]}, "metadata 'target' must be one non-empty list"),
        (lambda m: {**m, "target": [[1]]}, "metadata 'target' has 1 entries but the saliency has 2 images"),
        (lambda m: {**m, "head": "softmax"}, "metadata 'head' is 'softmax', expected one of logits"),
        (lambda m: {**m, "version": 99}, "has format version 99; this library reads 1 to 1"),
        (lambda m: {**m, "format": "x"}, "has format 'x', expected"),
        (lambda m: {**m, "extra": [1]}, "metadata 'extra' is a list, expected a dict"),
    ],
)
def test_load_tampered_metadata(tmp_path, change, message):
    path, arrays, meta = _good(tmp_path)
    bad = _write(tmp_path / "bad.npz", arrays, change(meta))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        Explanation.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    "blob, message",
    [(b"\xff\xfe", "metadata is not UTF-8 text"), (b"[1, 2]", "metadata is a JSON list, expected an object"),
     (b"{", "metadata is not valid JSON")],
)
def test_load_metadata_not_a_json_object(tmp_path, blob, message):
    _, arrays, _ = _good(tmp_path)
    with pytest.raises(InputError, match=message):
        Explanation.load(_write(tmp_path / "bad.npz", arrays, blob=blob))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("saliency", np.zeros(5, np.int64), "member 'saliency' has dtype int64, expected a float array"),
        ("saliency", np.zeros((2, 8), np.float32), r"member 'saliency' has shape \(2, 8\), expected \(N, H, W\)"),
        ("masks", np.zeros((2, 1, 8, 5), np.float32), r"member 'masks' has shape \(2, 1, 8, 5\), expected \(N, K, H, W\) = \(2, K, 8, 6\)"),
        ("masks", np.zeros((3, 1, 8, 6), np.float32), r"member 'masks' has shape \(3, 1, 8, 6\)"),
        ("history/loss", np.zeros((3, 1, 1), np.float32), r"member 'history/loss' has shape \(3, 1, 1\), expected \(steps, N, K\) with N = 2"),
        ("scores/clean", np.zeros(3, np.float32), r"member 'scores/clean' has shape \(3,\), expected \(N, ...\) with N = 2"),
        ("scores/clean", np.array(["a", "b"]), "member 'scores/clean' has dtype <U1, expected a float array"),
    ],
)
def test_load_wrong_shapes_and_dtypes(tmp_path, key, value, message):
    _, arrays, _ = _good(tmp_path)
    with pytest.raises(InputError, match=message):
        Explanation.load(_write(tmp_path / "bad.npz", {**arrays, key: value}))


def test_load_refuses_pickled_object_members(tmp_path):
    _, arrays, _ = _good(tmp_path)
    bad = _write(tmp_path / "bad.npz", {**arrays, "scores/clean": np.array([{}, {}], dtype=object)})
    with pytest.raises(InputError, match="member 'scores/clean' has dtype object"):
        Explanation.load(bad)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    text = ("{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, shape)).ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_load_forged_header_refused_before_allocation(tmp_path):
    _, arrays, _ = _good(tmp_path)
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    # saliency claims 100000^3 float32 values (4 PB); the data is 16 bytes.
    members["saliency.npy"] = _npy_header((100000, 100000, 100000)) + b"\0" * 16
    with pytest.raises(InputError, match=r"member 'saliency' is corrupt: its header declares shape "
                                         r"\(100000, 100000, 100000\) \(4000000000000000 bytes\) but the archive holds 16 bytes"):
        Explanation.load(_zip(tmp_path / "forged.npz", members))


def test_load_never_reads_unreferenced_members(tmp_path, monkeypatch):
    _, arrays, _ = _good(tmp_path)
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    members["junk.npy"] = _npy_header((4_000_000,)) + b"\0" * 16_000_000  # 16 MB, ~16 KB zipped
    path = _zip(tmp_path / "junk.npz", members)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *a, **k):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    ex = Explanation.load(path)
    assert len(ex) == 2
    assert "junk.npy" not in opened
    assert sorted(opened) == sorted(f"{k}.npy" for k in arrays)


def test_load_budget_on_referenced_members(tmp_path):
    path, _, _ = _good(tmp_path)
    with pytest.raises(InputError, match=r"member 'masks' needs 384 bytes, over the \d+ still allowed by max_bytes"):
        Explanation.load(path, max_bytes=700)  # metadata (~170 bytes) and saliency (384) fit, masks do not
    assert len(Explanation.load(path, max_bytes=2000)) == 2


# ----------------------------------------------------------------------------------------------
# Sizes checked before allocation
# ----------------------------------------------------------------------------------------------


def test_input_size_and_resize_capped_with_the_option_named():
    names = {"input_size": "--input-size", "resize": "--resize"}
    with pytest.raises(ConfigError, match=r"^--input-size: expected a positive int or \(height, width\), each "
                                          r"side from 1 to 4096 \(MAX_INPUT_SIDE, checked before allocating\), got 100000$"):
        resolve_preprocessing(None, names=names, input_size=100000)
    with pytest.raises(ConfigError, match=r"^--input-size: .* got \(224, 5000\)$"):
        resolve_preprocessing(None, names=names, input_size=(224, 5000))
    with pytest.raises(ConfigError, match=r"^--resize: expected at most 4096"):
        resolve_preprocessing(None, names=names, resize=100000)
    with pytest.raises(ConfigError, match=r"^Preprocessing.input_size: .* got 4097$"):
        Preprocessing(input_size=MAX_INPUT_SIDE + 1)
    assert Preprocessing(input_size=MAX_INPUT_SIDE, resize=MAX_INPUT_SIDE).size == (4096, 4096)


def test_cli_input_size_too_large_is_one_line(tmp_path):
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    proc = subprocess.run(
        [sys.executable, "-m", "meaningful_perturbation", "explain", str(tmp_path / "a.png"), "--out",
         str(tmp_path / "out"), "--input-size", "100000", "-q"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mperturb: error: --input-size: expected a positive int or (height, width), each side from 1 "
        "to 4096 (MAX_INPUT_SIDE, checked before allocating), got 100000"
    ]


def test_elongated_image_refused_before_resizing():
    # 1 x 100000 px passes the pixel limit, but covering a 224 x 224 crop needs 224 x 22.4 M px.
    image = Image.new("L", (1, 100_000), 7)
    with pytest.raises(InputError, match=r"^preprocess: a 1x100000 image \(width x height\) would be resized to "
                                         r"256x25600000 = 6553600000 pixels before the 224x224 crop, over "
                                         r"MAX_RESIZED_PIXELS=67108864"):
        preprocess(image, Preprocessing())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_image_with_nan_or_inf_refused(tmp_path, bad):
    a = np.full((20, 30), 0.5, np.float32)
    a[3, 4] = bad
    Image.fromarray(a, mode="F").save(tmp_path / "x.tif")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'x.tif'}: refused, float image \(mode 'F'\) has 1 NaN or "
                                         r"infinite pixel value\(s\) out of 600; expected finite values$"):
        load_image(tmp_path / "x.tif")
    with pytest.raises(InputError, match=r"^float image \(mode 'F'\) has 1 NaN"):
        preprocess(Image.fromarray(a, mode="F"), Preprocessing(input_size=8, resize=8))
    a[3, 4] = 0.25  # finite float images are still read: [0, 1] -> 0..255
    Image.fromarray(a, mode="F").save(tmp_path / "x.tif")
    assert load_image(tmp_path / "x.tif").getpixel((4, 3)) == (64, 64, 64)


# ----------------------------------------------------------------------------------------------
# Bounded figures
# ----------------------------------------------------------------------------------------------


def test_bounded_size_and_map_to_a_given_size():
    assert bounded_size((12000, 6000), 2048) == (2048, 1024)
    assert bounded_size((1, 100000), 2048) == (1, 2048)
    assert bounded_size((300, 200), 2048) == (300, 200)
    g = Geometry(original_size=(400, 600), resized_size=(64, 96), crop_box=(0, 16, 64, 64))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    sal = torch.sin(3 * yy) * torch.cos(2 * xx)  # smooth, so resampling orders agree
    full = map_to_original(sal, g)
    small = map_to_original(sal, g, size=(100, 150))
    assert tuple(small.shape) == (100, 150)
    # The same map seen at a quarter of the resolution: equal to the full map averaged 4x4.
    pooled = torch.nn.functional.avg_pool2d(full[None, None], 4)[0, 0]
    assert torch.allclose(small[10:-10, 35:-35], pooled[10:-10, 35:-35], atol=0.03)


def test_overlay_float32_matches_the_float64_blend():
    import matplotlib

    rng = np.random.default_rng(0)
    for rgb in (rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.random((40, 50, 3))):
        s = rng.random((40, 50))
        s[0, 0] = np.nan
        t = np.nan_to_num(s, nan=0.0)
        t = (t - t.min()) / (t.max() - t.min())
        base = rgb / 255.0 if rgb.dtype == np.uint8 else rgb
        ref = (np.clip(0.5 * base + 0.5 * matplotlib.colormaps["viridis"](t)[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)
        got = figures.overlay(rgb, s)
        assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref).max() <= 1


_PEAK = """
import resource, sys
from meaningful_perturbation.cli import main
rc = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "RC", rc)
"""


def test_big_flat_png_memory_is_bounded(tmp_path):
    # A 6000 x 6000 flat PNG is ~40 KB. Before the fix explaining it peaked at ~115 bytes per
    # pixel (~4.1 GB: float64 full-resolution saliency and blend); now the decoded image
    # (36 MB grey + 108 MB RGB) and a <= 2048 px overlay dominate, ~0.7 GB with torch loaded.
    Image.new("L", (6000, 6000), 128).save(tmp_path / "flat.png")
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, "explain", str(tmp_path / "flat.png"), "--out", str(tmp_path / "out"),
         "--steps", "1", "-q"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
    )
    assert "RC 0" in proc.stdout, proc.stderr
    peak_mb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"
    with Image.open(tmp_path / "out" / "flat_overlay.png") as im:
        assert im.size == (2048, 2048)  # OVERLAY_MAX_SIDE


def test_big_image_in_a_run_is_bounded_and_its_metrics_scaled(tmp_path):
    # `mperturb run` takes the same bounded path: decoded at what the model and a <= 2048 px
    # overlay need; boxes (original pixels) are scaled with the map for the metrics.
    src = tmp_path / "src"
    src.mkdir()
    Image.new("L", (6000, 6000), 128).save(src / "flat.png")
    (tmp_path / "m.csv").write_text(f"path,box\n{src / 'flat.png'},\"0,0,3000,6000\"\n")
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, "run", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
         "--steps", "1", "-q", "--metrics", "energy"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"},
    )
    assert "RC 0" in proc.stdout, proc.stderr
    peak_mb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 1000, f"peak RSS {peak_mb:.0f} MB"  # was 1616 MB before the runner took the bounded path
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert row["original_size"] == [6000, 6000]
    with Image.open(tmp_path / "out" / row["files"]["overlay"]) as im:
        assert im.size == (2048, 2048)
    # The left half of the image holds half the energy of a left-right symmetric map, up to the
    # map's own asymmetry: check against the saved saliency, mapped to the same half.
    ex = __import__("meaningful_perturbation").Explanation.load(tmp_path / "out" / row["files"]["npz"])
    sal = ex.saliency[0].double()
    expected = float(sal[:, : sal.shape[1] // 2].sum() / sal.sum())
    assert abs(row["metrics"]["energy_box"] - expected) < 0.02


# ----------------------------------------------------------------------------------------------
# Decoding at the size the model needs
# ----------------------------------------------------------------------------------------------


def _gradient(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    a = np.stack([xx * 255.0 / width, yy * 255.0 / height, (xx + yy) * 127.0 / (width + height)], -1)
    return Image.fromarray(a.astype(np.uint8))


@pytest.mark.parametrize("name, orientation", [("g.jpg", 1), ("r.jpg", 6), ("g.png", 1), ("r.png", 6)])
def test_reduced_decode_gives_the_same_model_input(tmp_path, name, orientation):
    from meaningful_perturbation.io import ORIGINAL_SIZE_KEY, needed_size

    image = _gradient(2400, 1800)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / name, exif=exif, **({"quality": 95} if name.endswith(".jpg") else {}))
    prep = Preprocessing()
    full = load_image(tmp_path / name)
    asked: list[tuple[int, int]] = []
    small = load_image(tmp_path / name, min_size=lambda hw: asked.append(hw) or needed_size(hw, prep))
    upright = (2400, 1800) if orientation == 6 else (1800, 2400)  # (height, width)
    assert asked == [upright] and (full.height, full.width) == upright
    # JPEG: DCT scale 1/4 (1/8 would be < 256 px); PNG: box-reduced by 1800 // 256 = 7.
    factor = 4 if name.endswith(".jpg") else 7
    assert (small.height, small.width) == tuple(-(-v // factor) for v in upright)
    assert small.info[ORIGINAL_SIZE_KEY] == (upright, (small.height, small.width))
    x_full, g_full = preprocess(full, prep)
    x_small, g_small = preprocess(small, prep)
    assert g_small == g_full and g_full.original_size == upright
    assert (x_full - x_small).abs().mean() < 0.02  # normalised units (~1/255 per pixel)
    # A resize by the caller makes the record stale: it is ignored.
    moved = small.resize((100, 80))
    assert preprocess(moved, prep)[1].original_size == (80, 100)


def test_palette_reduced_on_colours_not_indices_and_no_reduction_when_not_asked(tmp_path):
    _gradient(1200, 900).convert("P").save(tmp_path / "p.png")
    from meaningful_perturbation.io import ORIGINAL_SIZE_KEY
    from meaningful_perturbation.io.images import to_rgb

    image = load_image(tmp_path / "p.png", min_size=lambda hw: (10, 10))
    with Image.open(tmp_path / "p.png") as full:
        expected = to_rgb(full).reduce(90)  # the colours averaged, never the palette indices
    assert image.size == (14, 10) and image.info[ORIGINAL_SIZE_KEY] == ((900, 1200), (10, 14))
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    _gradient(1200, 900).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").size == (1200, 900)
    assert load_image(tmp_path / "g.png", min_size=lambda hw: (600, 700)).size == (1200, 900)  # < 2x


def test_load_fuzzed_bytes_only_ever_raise_input_error(tmp_path):
    # Seeded mutations (hypothesis is not a dependency): truncations, byte flips inside the
    # zip headers, the .npy headers and the compressed data. Each load either succeeds with
    # consistent arrays or raises one InputError line naming the file.
    path, _, _ = _good(tmp_path)
    raw = path.read_bytes()
    rng = np.random.default_rng(13)
    target = tmp_path / "fuzz.npz"
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(300):
        data = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=int(rng.integers(1, 4))):
            data[pos] ^= int(rng.integers(1, 256))
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(raw)))]
        target.write_bytes(bytes(data))
        try:
            ex = Explanation.load(target)
        except InputError as e:
            assert str(target) in str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
        else:
            assert ex.masks.shape[0] == ex.saliency.shape[0] == len(ex.target)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 100
