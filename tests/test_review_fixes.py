"""Files and runs: findings of a fresh-user probe (symlink loops under a quoted ** glob, a
--target the model cannot have, ImageFolder labels that are not the model's classes, tampered
explanation files, raw library warnings, mp.load_model)."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import InputError
from meaningful_perturbation.io import expand_images


def _png(path, colour=(200, 30, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), colour).save(path)


def test_a_recursive_glob_does_not_follow_folder_links(tmp_path, monkeypatch):
    # Two links back up the tree made glob.glob(recursive=True) enumerate ~2^40 paths.
    root = tmp_path / "loop"
    _png(root / "a.png")
    _png(root / "sub" / "b.png")
    _png(root / "sub" / "deep" / "c.png")
    _png(root / "sub" / ".hidden.png")
    os.symlink("..", root / "sub" / "up")
    os.symlink("../..", root / "sub" / "up2")
    monkeypatch.chdir(tmp_path)
    found = expand_images(["loop/**/*.png"])
    assert [p.as_posix() for p in found] == ["loop/a.png", "loop/sub/b.png", "loop/sub/deep/c.png"]
    assert [p.as_posix() for p in expand_images(["loop/sub/.*.png"])] == ["loop/sub/.hidden.png"]
    assert [p.name for p in expand_images([str(tmp_path / "loop" / "*" / "*.png")])] == ["b.png"]
    with pytest.raises(InputError, match="pattern matches no image files"):
        expand_images(["loop/**/*.jpg"])


def test_run_refuses_a_target_index_the_model_does_not_have_before_any_output(tmp_path, capsys):
    src = tmp_path / "imgs"
    _png(src / "a.png")
    out = tmp_path / "r"
    for target in ("99", "2,99"):
        rc = main(["run", str(src), "--out", str(out), "--target", target, "--steps", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == ["mperturb: error: --target: class index 99 out of range for a model with 6 classes"]
        assert not out.exists()


def test_imagefolder_labels_by_index_are_named_in_a_warning(tmp_path, capsys):
    src = tmp_path / "tree"
    _png(src / "cats" / "a.png")
    _png(src / "dogs" / "b.png")
    rc = main(["run", str(src), "--out", str(tmp_path / "r"), "--steps", "2", "-q"])
    err = capsys.readouterr().err
    assert rc == 0
    assert ("mperturb: warning: SOURCE: the sub-folder names are not the model's class names, so each sub-folder's "
            "label is its index in sorted order (torchvision's ImageFolder rule): cats -> 0 (disc), dogs -> 1 (square)"
            ) in err and "--target top1" in err
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in rows) == [[0], [1]]
    # with --target the labels are not used: no warning
    rc = main(["run", str(src), "--out", str(tmp_path / "r2"), "--steps", "2", "-q", "--target", "top1"])
    assert rc == 0 and "ImageFolder rule" not in capsys.readouterr().err


@pytest.mark.parametrize("member", ["saliency", "masks"])
def test_explanation_load_refuses_non_finite_maps(tmp_path, member):
    ex = mp.explain(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten()), torch.randn(1, 3, 16, 16), steps=2)
    good = tmp_path / "ex.npz"
    ex.save(good)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == f"{member}.npy":
                arr = np.load(__import__("io").BytesIO(data))
                arr[(0,) * arr.ndim] = np.nan
                buf = __import__("io").BytesIO()
                np.save(buf, arr)
                data = buf.getvalue()
            zout.writestr(info, data)
    with pytest.raises(InputError, match=f"{member} contains NaN or inf values"):
        mp.Explanation.load(bad)
    assert torch.equal(mp.Explanation.load(good).saliency, ex.saliency)


def test_a_plain_pickle_as_weights_is_one_error_line_without_torch_warnings(tmp_path, capsys):
    f = tmp_path / "w.pt"
    with open(f, "wb") as fh:
        pickle.dump({"a": [1, 2]}, fh, protocol=4)
    img = tmp_path / "a.png"
    _png(img)
    rc = main(["explain", str(img), "--weights", str(f), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mperturb: error:") and "pickle protocol" not in err[0]


def test_load_model_is_top_level_and_lazy():
    code = ("import sys, meaningful_perturbation as mp; assert 'meaningful_perturbation.models.hub' not in sys.modules; "
            "f = mp.load_model; assert f.__module__.startswith('meaningful_perturbation.models'); "
            "print(mp.load_model('demo').class_names[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "disc"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mp.nope  # noqa: B018


def test_pipes_devices_and_broken_links_are_named_and_counted(tmp_path, capsys):
    src = tmp_path / "imgs"
    _png(src / "ok.png")
    os.mkfifo(src / "pipe.png")  # reading it would block forever
    os.symlink("missing.png", src / "dangling.png")
    rc = main(["explain", str(src), "--steps", "2", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert f"mperturb: skipping: {src / 'dangling.png'}: broken symbolic link (-> missing.png)" in err
    assert f"mperturb: skipping: {src / 'pipe.png'}: a FIFO (named pipe), not a regular file; expected an image file" in err
    assert err[-1] == "mperturb: 2 of 3 image(s) could not be read or explained"
    rc = main(["run", str(src), "--steps", "2", "--out", str(tmp_path / "r"), "-q"])
    capsys.readouterr()
    fails = [json.loads(line) for line in (tmp_path / "r" / "failures.jsonl").read_text().splitlines()]
    assert rc == 1 and sorted(f["path"] for f in fails) == ["dangling.png", "pipe.png"]
    rc = main(["explain", str(src / "ok.png"), "--weights", "/dev/zero", "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["mperturb: error: /dev/zero: a device, not a regular file; expected a weights file"]


def test_explain_out_is_never_an_input_folder_or_an_input_file(tmp_path, capsys, monkeypatch):
    d = tmp_path / "io"
    _png(d / "cat.png")
    _png(d / "cat_overlay.png", (10, 200, 10))  # the user's own image, named like an output
    before = (d / "cat_overlay.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    rc = main(["explain", "io", "--out", "io"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["mperturb: error: --out: 'io' is the input folder 'io'; its overlays and panels would be "
                               "explained as images by the next run on that folder: choose another --out"]
    rc = main(["explain", "io/cat.png", "io/cat_overlay.png", "--out", "io", "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["mperturb: error: --out: the output file 'io/cat_overlay.png' would replace an input "
                               "image of the same name; choose another --out"]
    assert (d / "cat_overlay.png").read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["cat.png", "cat_overlay.png"]


def test_cli_messages_drop_the_python_spelling_of_an_option(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    f = tmp_path / "m.py"
    f.write_text("def build():\n    import torch\n    return torch.nn.Linear(2, 2)\n")
    img = tmp_path / "a.png"
    _png(img)
    for argv in (["explain", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                 ["explain", str(img), "--model", f"python:{f}:build", "--out", str(tmp_path / "o")]):
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "(Python" not in err[0], err
    assert "--trust-code" in err[0]
    # the Python API keeps both spellings
    with pytest.raises(mp.ConfigError, match=r"\(Python API: load_model\(\.\.\., trust_code=True\)\)"):
        mp.load_model(f"python:{f}:build")


def test_sigterm_ends_a_run_like_ctrl_c_with_one_line(tmp_path):
    import signal
    import time

    src = tmp_path / "imgs"
    for i in range(6):
        _png(src / f"im{i}.png", (40 * i, 100, 200))
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "meaningful_perturbation", "run", str(src), "--out", str(out),
                             "--steps", "100", "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "results.jsonl").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("mperturb: terminated (SIGTERM); finished items are kept "
                                            "(mperturb run: --resume continues)")
    assert "Traceback" not in err
    assert not list((out / "items").glob("*.tmp*"))  # no partial file; the lock is released (the resume below runs)
    rc = main(["run", str(src), "--out", str(out), "--steps", "100", "--batch-size", "1", "--resume", "-q"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rc == 0 and sorted(r["path"] for r in rows) == [f"im{i}.png" for i in range(6)]


def test_small_api_and_option_errors_are_project_errors(tmp_path, capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 6))
    x = torch.rand(2, 3, 16, 16)
    ex = mp.explain(net, x, steps=2)
    with pytest.raises(InputError, match=r"image index 5 out of range for 2 images"):
        ex.degenerate_reason(5)
    with pytest.raises(InputError, match="is a folder; expected a file name"):
        ex.save(tmp_path)
    assert not (tmp_path.parent / f"{tmp_path.name}.npz").exists()
    with pytest.raises(InputError) as err:
        mp.explain(net, x.numpy(), steps=2)
    assert str(err.value) == ("x: expected a torch.Tensor of shape (N, C, H, W), got a ndarray of shape (2, 3, 16, 16) "
                              "and dtype float32 (convert with torch.from_numpy(x))")
    # a top_k the model cannot give is said, with the value used
    with pytest.warns(mp.MeaningfulPerturbationWarning, match="top_k=100 but the model gives at most 5 classes"):
        ex = mp.explain(net, x[:1], steps=2, top_k=100)
    assert len(ex.target[0]) == 5
    img = tmp_path / "a.png"
    _png(img)
    rc = main(["explain", str(img), "--resize", "-1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["mperturb: error: --resize: expected 0 (just cover the input size) or a short side "
                               "up to 4096 pixels, got -1"]


def test_a_model_failing_on_the_first_clean_pass_is_one_error_naming_the_input_size(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _png(a)
    _png(b)
    rc = main(["explain", str(a), str(b), "--input-size", "1", "--resize", "0", "--out", str(tmp_path / "o"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err  # one line, not a "skipping" line per image
    assert err[0].startswith("mperturb: error: model: calling it on x of shape (1, 3, 1, 1) failed")
    assert err[0].endswith("the images are fed at 1x1 (--input-size): too small, or not the size this model takes?")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["P", "P+transparency", "1", "I;16"])
@pytest.mark.parametrize("factor", [2, 3, 7])
def test_modes_pillow_cannot_reduce_are_reduced_in_bands_exactly(mode, factor):
    # palette, 1-bit, 16-bit and colour-keyed images: no full-size RGB copy, same pixels
    from meaningful_perturbation.io.images import _reduce_in_bands, to_rgb

    rng = np.random.default_rng(0)
    if mode.startswith("P"):
        im = Image.fromarray(rng.integers(0, 255, (203, 157), dtype=np.uint8), "L").convert("P")
        if "transparency" in mode:
            im.info["transparency"] = 5
    elif mode == "1":
        im = Image.fromarray(rng.integers(0, 2, (203, 157), dtype=np.uint8) * 255, "L").convert("1")
    else:
        im = Image.fromarray(rng.integers(0, 65535, (203, 157), dtype=np.uint16))
    banded = _reduce_in_bands(im, factor, (255, 255, 255), band_pixels=500)  # many bands
    assert np.array_equal(np.asarray(banded), np.asarray(to_rgb(im, (255, 255, 255)).reduce(factor)))


def test_a_big_palette_png_is_reduced_on_load(tmp_path):
    from meaningful_perturbation.io import load_image
    from meaningful_perturbation.io.images import ORIGINAL_SIZE_KEY

    f = tmp_path / "big.png"
    Image.new("P", (3000, 2000), 3).save(f)
    im = load_image(f, min_size=lambda hw: (224, 224))  # factor 8 still covers 224
    assert im.mode == "RGB" and im.size == (375, 250)
    assert im.info[ORIGINAL_SIZE_KEY] == ((2000, 3000), (250, 375))
