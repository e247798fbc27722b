"""TextureEvidence (the second ground-truth family), its demo model and ``--family``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from meaningful_perturbation.data import (
    FAMILIES,
    TEST_PHOTOS,
    TEXTURE_CLASSES,
    TRAIN_PHOTOS,
    get_family,
    make_shape_evidence,
    make_texture_evidence,
)
from meaningful_perturbation.data.textures import FLIP_PERMUTATION, ROT90_PERMUTATION
from meaningful_perturbation.errors import ConfigError, InputError, ModelError

ANGLES = np.array([0.0, 45.0, 90.0, 135.0])  # TEXTURE_CLASSES, degrees


def _structure(img: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(stripe angle in degrees on screen, coherence in [0, 1]) of ``img`` (3, S, S) on ``mask``
    from the gradient structure tensor summed over the colour channels."""
    gy, gx = np.gradient(img.astype(np.float64), axis=(1, 2))
    wx, wy = gx, -gy  # screen coordinates: x right, y up
    m = mask[None]
    jxx, jyy, jxy = (wx * wx * m).sum(), (wy * wy * m).sum(), (wx * wy * m).sum()
    wave = 0.5 * math.degrees(math.atan2(2 * jxy, jxx - jyy))  # dominant gradient direction
    coherence = math.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)
    return (wave + 90.0) % 180.0, coherence


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def _inner(mask: np.ndarray) -> np.ndarray:
    """The mask eroded by one pixel (gradients at the border mix in the background)."""
    m = mask.copy()
    m[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    m[0], m[-1], m[:, 0], m[:, -1] = False, False, False, False
    return m


@pytest.fixture(scope="module")
def test_draw():
    return make_texture_evidence(48, size=64, split="test", seed=3)


# ----------------------------------------------------------------------------- the data
def test_same_arguments_give_identical_arrays_and_a_prefix_for_smaller_n() -> None:
    a = make_texture_evidence(5, size=48, split="train", seed=7)
    b = make_texture_evidence(5, size=48, split="train", seed=7)
    c = make_texture_evidence(3, size=48, split="train", seed=7)
    for field in ("images", "labels", "masks", "boxes", "distractors", "counterfactuals"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
        assert np.array_equal(getattr(a, field)[:3], getattr(c, field)), field
    assert a.backgrounds == b.backgrounds
    other = make_texture_evidence(5, size=48, split="train", seed=8)
    assert not np.array_equal(a.images, other.images)


def test_images_differ_from_counterfactuals_exactly_on_the_mask(test_draw) -> None:
    ds = test_draw
    assert ds.images.dtype == np.float32 and 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert np.array_equal((ds.images != ds.counterfactuals).any(axis=1), ds.masks)
    assert not (ds.masks & ds.distractors).any()
    assert ds.masks.any(axis=(1, 2)).all()
    for i in range(len(ds)):  # boxes are the masks' end-exclusive bounding boxes
        rows, cols = np.nonzero(ds.masks[i].any(1))[0], np.nonzero(ds.masks[i].any(0))[0]
        assert tuple(ds.boxes[i]) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    assert set(ds.labels.tolist()) == {0, 1, 2, 3} and ds.classes == TEXTURE_CLASSES


def test_the_label_is_the_stripe_orientation_and_distractors_have_none(test_draw) -> None:
    ds = test_draw
    errors, coherent, iso = [], [], []
    for i in range(len(ds)):
        angle, coh = _structure(ds.images[i], _inner(ds.masks[i]))
        errors.append(_angle_error(angle, ANGLES[ds.labels[i]]))
        coherent.append(coh)
        d = _inner(ds.distractors[i])
        if d.sum() > 30:
            iso.append(_structure(ds.images[i], d)[1])
    assert max(errors) < 10.0, errors  # classes are 45° apart
    assert min(coherent) > 0.6
    assert len(iso) >= 10 and np.median(iso) < 0.4 < np.median(coherent)


def test_mirrors_and_quarter_turns_move_the_label_as_declared(test_draw) -> None:
    ds = test_draw
    for i in range(12):
        img, m, y = ds.images[i], _inner(ds.masks[i]), int(ds.labels[i])
        flipped = _structure(img[:, :, ::-1], m[:, ::-1])[0]
        turned = _structure(np.rot90(img, 1, axes=(1, 2)), np.rot90(m, 1))[0]
        assert _angle_error(flipped, ANGLES[FLIP_PERMUTATION[y]]) < 10.0
        assert _angle_error(turned, ANGLES[ROT90_PERMUTATION[y]]) < 10.0


def _nearest_centroid_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-9
    tx, ex = (train_x - mu) / sd, (test_x - mu) / sd
    cent = np.stack([tx[train_y == k].mean(0) for k in range(4)])
    pred = np.argmin(((ex[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    return float((pred == test_y).mean())


def _region_features(ds) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the evidence region, and its outline's moments (area, centre,
    second moments: elongation and axis direction)."""
    colour, outline = [], []
    s = ds.size
    yy, xx = np.mgrid[0:s, 0:s] / s
    for img, m in zip(ds.images, ds.masks):
        colour.append(img[:, m].mean(1))
        w = m / m.sum()
        cy, cx = (w * yy).sum(), (w * xx).sum()
        syy, sxx, sxy = (w * (yy - cy) ** 2).sum(), (w * (xx - cx) ** 2).sum(), (w * (yy - cy) * (xx - cx)).sum()
        outline.append([m.mean(), cy, cx, syy - sxx, sxy, syy + sxx])
    return np.array(colour), np.array(outline)


def test_the_class_is_not_in_the_mean_colour_nor_in_the_outline() -> None:
    """A classifier that sees only the region's mean colour, or only its outline's moments,
    is at chance (1/4) on held-out images: the class is the orientation, nothing else."""
    train = make_texture_evidence(400, size=32, split="train", seed=11)
    test = make_texture_evidence(400, size=32, split="test", seed=12)
    (c_tr, o_tr), (c_te, o_te) = _region_features(train), _region_features(test)
    se = math.sqrt(0.25 * 0.75 / 400)  # ≈ 0.022
    for name, xtr, xte in (("colour", c_tr, c_te), ("outline", o_tr, o_te)):
        acc = _nearest_centroid_accuracy(xtr, train.labels, xte, test.labels)
        assert abs(acc - 0.25) < 3.5 * se, (name, acc)
    # and per-class mean colours are equal within noise (each channel, each class)
    for k in range(4):
        sel = c_tr[train.labels == k]
        assert np.all(np.abs(sel.mean(0) - c_tr.mean(0)) < 4 * c_tr.std(0) / math.sqrt(len(sel)))


def test_train_and_test_splits_use_disjoint_photos() -> None:
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    train = make_texture_evidence(60, size=32, split="train", seed=0)
    test = make_texture_evidence(60, size=32, split="test", seed=0)
    photos_train = {b.split(":", 1)[1] for b in train.backgrounds if b.startswith("photo:")}
    photos_test = {b.split(":", 1)[1] for b in test.backgrounds if b.startswith("photo:")}
    assert photos_train and photos_test
    assert photos_train <= set(TRAIN_PHOTOS) and photos_test <= set(TEST_PHOTOS)
    assert not photos_train & photos_test


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(InputError, match=r"^size: expected an int >= 32 \(image side in pixels\), got 16$"):
        make_texture_evidence(2, size=16)
    with pytest.raises(InputError, match=r"^split: expected one of \('train', 'test'\), got 'val'$"):
        make_texture_evidence(2, split="val")


def test_families_table_and_bad_family_name() -> None:
    assert tuple(FAMILIES) == ("shapes", "textures")
    assert get_family("textures").make is make_texture_evidence
    with pytest.raises(ConfigError, match=r"^family: expected one of shapes, textures, got 'stripes'$"):
        get_family("stripes")


# --------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def texture_model():
    from meaningful_perturbation.demo import load_demo_model

    return load_demo_model(family="textures")


def test_texture_model_is_accurate_and_uses_the_evidence(texture_model) -> None:
    """>= 95% on a fresh held-out draw; at chance when the evidence region shows the
    background instead (the counterfactual), i.e. the label lives in the evidence patch."""
    ds = make_texture_evidence(300, size=64, split="test", seed=4242)
    t = ds.to_tensors()
    with torch.no_grad():
        acc = float((texture_model(t.images).argmax(1) == t.labels).float().mean())
        cf = float((texture_model(t.counterfactuals).argmax(1) == t.labels).float().mean())
    assert acc >= 0.95
    assert cf <= 0.40  # chance 0.25; 300 images: SE 0.025


def test_demo_textures_model_spec(texture_model) -> None:
    from meaningful_perturbation.models import load_model

    loaded = load_model("demo:textures")
    assert loaded.class_names == TEXTURE_CLASSES
    assert loaded.preprocessing.size == (64, 64)
    x = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), texture_model(x))
    with pytest.raises(ConfigError, match=r"expected demo or demo:FAMILY with FAMILY one of shapes, textures, got 'stripes'"):
        load_model("demo:stripes")
    from meaningful_perturbation.demo import load_demo_model

    with pytest.raises(InputError, match=r"^family: expected one of shapes, textures, got 'x'$"):
        load_demo_model(family="x")


# ----------------------------------------------------------------------- the benchmark
def test_benchmark_runs_on_textures_and_records_the_family() -> None:
    from meaningful_perturbation.evaluation import BenchmarkResult, run_benchmark

    res = run_benchmark(n=4, methods=["gradient", "center"], family="textures", batch_size=4, curve_steps=4, progress=False)
    assert res.settings["family"] == "textures" and res.settings["model"] == "demo:textures"
    assert res.settings["model_accuracy"] >= 0.75
    assert res.heading().startswith("## TextureEvidence (--family textures): 4 held-out test images")
    assert set(res.images["class"]) <= set(TEXTURE_CLASSES)
    for row in res.rows:
        for key in ("exact_pointing", "rank_accuracy", "deletion_auc", "insertion_auc", "min_sufficient_area"):
            mean, lo, hi = row[key]
            assert 0.0 <= lo <= mean <= hi <= 1.0, (row["method"], key, row[key])
    assert res.rows[0]["passes_per_image"] >= 1.0
    # a saved result regenerates its images from the family it names
    data = json.loads(json.dumps(res.to_json()))
    del data["images"]
    assert BenchmarkResult.from_json(data).images == res.images
    shapes = run_benchmark(n=4, methods=["center"], batch_size=4, curve_steps=2, progress=False)
    assert shapes.settings["family"] == "shapes"
    with pytest.raises(ConfigError, match="expected the same images"):
        BenchmarkResult.combine([res.select(["gradient"]), shapes])


def test_benchmark_bad_family_is_refused_before_any_work(tmp_path, capsys) -> None:
    from meaningful_perturbation.cli import main
    from meaningful_perturbation.evaluation import run_benchmark

    with pytest.raises(ConfigError, match=r"^family: expected one of shapes, textures, got 'stripes'$"):
        run_benchmark(n=2, methods=["center"], family="stripes", progress=False)
    out = tmp_path / "never"
    assert main(["benchmark", "--family", "stripes", "--n", "2", "--methods", "center", "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err.strip() == "mperturb: error: --family: expected one of shapes, textures, got 'stripes'"
    assert not out.exists()


def test_train_command_takes_the_family_and_is_deterministic(tmp_path) -> None:
    from meaningful_perturbation.demo import ShapeNet, load_demo_model
    from meaningful_perturbation.demo.__main__ import main

    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "t.safetensors"
        argv = ["train", "--family", "textures", "--n", "64", "--epochs", "1", "--eval-n", "20", "--quiet", "--out", str(out)]
        assert main(argv) == 0
        outs.append(out)
        metrics = json.loads(out.with_name("textures_metrics.json").read_text())
        assert metrics["config"]["family"] == "textures" and metrics["evaluation"]["family"] == "textures"
        assert len(metrics["evaluation"]["per_class_accuracy"]) == 4
        assert metrics["parameters"] == sum(p.numel() for p in ShapeNet(num_classes=4).parameters())
    assert outs[0].read_bytes() == outs[1].read_bytes()  # same seed → byte-identical weights
    assert isinstance(load_demo_model(weights=outs[0], family="textures"), ShapeNet)
    with pytest.raises(ModelError, match="is not a ShapeNet state dict"):
        load_demo_model(weights=outs[0])  # 4 outputs are not the 6-class shapes model


# ------------------------------------------------------- fix15: mirror invariance is declared
def test_textures_model_declares_it_is_not_mirror_invariant_and_flip_jitter_is_off_by_default() -> None:
    import warnings

    import meaningful_perturbation as mp
    from meaningful_perturbation.api import mirror_invariant
    from meaningful_perturbation.demo import load_demo_model
    from meaningful_perturbation.errors import MeaningfulPerturbationWarning
    from meaningful_perturbation.models import load_model

    tex, shapes = load_demo_model(family="textures"), load_demo_model()
    assert mirror_invariant(tex) is False and mirror_invariant(shapes) is True
    assert mirror_invariant(load_model("demo:textures").model) is False
    x = torch.rand(1, 3, 32, 32)
    for method in ("extremal", "extremal-fast", "extremal-sweep"):
        kw = {"areas": (0.1, 0.2, 0.4)} if method == "extremal-sweep" else {}
        with pytest.warns(MeaningfulPerturbationWarning, match=rf"^{method}: jitter 'flip' -> 'none': the model declares it is not mirror-invariant"):
            ex = mp.explain(tex, x, target=1, method=method, steps=2, **kw)
        assert ex.config["jitter"] == "none"
        # an explicit flip is honoured, with a warning
        with pytest.warns(MeaningfulPerturbationWarning, match=rf"^{method}: jitter='flip' on a model that declares it is not mirror-invariant"):
            ex = mp.explain(tex, x, target=1, method=method, steps=2, jitter="flip", **kw)
        assert ex.config["jitter"] == "flip"
        # other models keep the flip default, silently
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = mp.explain(shapes, x, target=1, method=method, steps=2, **kw)
        assert ex.config["jitter"] == "flip"
        assert not [w for w in caught if "mirror" in str(w.message)]


def test_benchmark_on_textures_runs_extremal_without_flip() -> None:
    from meaningful_perturbation.errors import MeaningfulPerturbationWarning
    from meaningful_perturbation.evaluation import run_benchmark

    with pytest.warns(MeaningfulPerturbationWarning, match=r"^extremal: jitter 'flip' -> 'none'"):
        run_benchmark(n=2, methods=["extremal:steps=2"], family="textures", batch_size=2, curve_steps=2, progress=False)


def test_cli_explain_and_run_on_demo_textures_record_no_flip(tmp_path, capsys) -> None:
    from PIL import Image

    from meaningful_perturbation.cli import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(imgs / "a.png")
    out = tmp_path / "e"
    assert main(["explain", str(imgs / "a.png"), "--model", "demo:textures", "--method", "extremal-fast", "--steps", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "mperturb: warning: extremal-fast: jitter 'flip' -> 'none': the model declares it is not mirror-invariant" in err
    assert json.loads((out / "config.json").read_text())["config"]["jitter"] == "none"
    assert json.loads((out / "a_summary.json").read_text())["config"]["jitter"] == "none"
    run = tmp_path / "r"
    assert main(["run", str(imgs), "--model", "demo:textures", "--method", "extremal-fast", "--steps", "2",
                 "--out", str(run), "--device", "cpu", "-q"]) == 0
    assert json.loads((run / "settings.json").read_text())["compared"]["config"]["jitter"] == "none"
    capsys.readouterr()
    out2 = tmp_path / "e2"
    assert main(["explain", str(imgs / "a.png"), "--model", "demo:textures", "--method", "extremal-fast", "--steps", "2",
                 "--set", 'jitter="flip"', "--out", str(out2), "--device", "cpu"]) == 0
    assert "jitter='flip' on a model that declares it is not mirror-invariant" in capsys.readouterr().err
    assert json.loads((out2 / "config.json").read_text())["config"]["jitter"] == "flip"
