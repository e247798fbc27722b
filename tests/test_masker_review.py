"""What a fresh-user review of the masker found (issue 16 review): bad training data, bad
maskers, resume, outputs, options. Every check here fails before any training step or write."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import meaningful_perturbation as mp
from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError, InputError, MeaningfulPerturbationWarning, ModelError
from meaningful_perturbation.masker import ArraySource, load_masker, train_masker
from meaningful_perturbation.masker.train import TrainConfig, quality_warnings

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
FAST = dict(width=4, batch_size=4, lr=1e-2, fake_rate=0.0, mask_blur=0.0, checkpoint_every=1)


def _net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)).eval()


def _arrays(n: int = 12, classes: int = 3, seed: int = 0, masks: bool = False) -> ArraySource:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.arange(n) % classes
    m = torch.rand(n, SIZE, SIZE, generator=g) > 0.5 if masks else None
    return ArraySource(x, y, m, seed=seed, holdout=6 if masks else 0)


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


# ----- 1. bad npz training data: one error line naming --data, before any training -----

@pytest.mark.parametrize("case, expected", [
    ("labels17", "--data: label 17 is out of range for a classifier with 6 classes (expected 0..5)"),
    ("nhwc", "look channels-last (N, H, W, C); expected (N, C, H, W)"),
    ("nan", "--data: images hold 1 NaN or infinite value(s)"),
    ("masks", "--data: expected masks (N, H, W) = (10, 64, 64) matching the images, got (10, 32, 32)"),
    ("bytes", "is not a readable .npz of plain arrays (not a zip of .npy arrays)"),
    ("intlabels", "labels have dtype torch.float32; expected integer class indices"),
])
def test_bad_npz_data_is_one_error_before_training(tmp_path, capsys, case, expected):
    f = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((10, 3, 64, 64)).astype(np.float32)
    y = np.arange(10) % 6
    if case == "labels17":
        y[3] = 17
    if case == "nhwc":
        x = x.transpose(0, 2, 3, 1).copy()
    if case == "nan":
        x[1, 0, 5, 5] = np.nan
    if case == "intlabels":
        y = y.astype(np.float32) + 0.5
    extra = {"masks": np.zeros((10, 32, 32), bool)} if case == "masks" else {}
    if case == "bytes":
        f.write_bytes(np.random.default_rng(1).bytes(500))
    else:
        np.savez(f, images=x, labels=y, **extra)
    rc, err = _cli(capsys, "train-masker", "--model", "demo", "--data", f"npz:{f}", "--out", str(tmp_path / "o"), "-q",
                   "--device", "cpu")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("mperturb: error: --data: "), err
    assert expected in err and "allow_pickle" not in err and "lower --lr" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_data_of_another_class_count_is_refused(tmp_path, capsys):
    rc, err = _cli(capsys, "train-masker", "--model", "demo", "--data", "textures", "--out", str(tmp_path / "o"), "-q",
                   "--device", "cpu")
    assert rc == 2 and err.count("\n") == 1
    assert "--data: TextureEvidence" in err and "has 4 classes, the classifier outputs 6" in err


def test_unknown_data_lists_every_source(tmp_path, capsys):
    rc, err = _cli(capsys, "train-masker", "--data", "imagenet", "--out", str(tmp_path / "o"), "-q", "--device", "cpu")
    assert rc == 2
    for form in ("shapes[:SIZE]", "npz:FILE", "run:DIR", "textures[:SIZE]"):
        assert form in err, err


# ----- 2. bad masker in explain / run / benchmark: refused before any output -----

def _png(path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype("uint8")).save(path)
    return path


def test_explain_with_a_bad_masker_writes_nothing(tmp_path, capsys):
    img = _png(tmp_path / "a.png")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 300)
    (tmp_path / "dir").mkdir()
    out = tmp_path / "out"
    for masker, needle in ((tmp_path / "bad.safetensors", "is not a safetensors file"),
                           (tmp_path / "dir", f"is a folder; pass FOLDER/masker.safetensors ('{tmp_path / 'dir' / 'masker.safetensors'}')")):
        rc, err = _cli(capsys, "explain", str(img), "--method", "masker", "--masker", str(masker), "--out", str(out), "-q",
                       "--device", "cpu")
        assert rc == 2 and err.startswith("mperturb: error: --masker: ") and needle in err and err.count("\n") == 1
        assert not out.exists()
    # the shipped demo masker used with another classifier (the textures demo model)
    rc, err = _cli(capsys, "explain", str(img), "--method", "masker", "--model", "demo:textures", "--out", str(out), "-q",
                   "--device", "cpu")
    assert rc == 2 and "--masker: " in err and "was trained for another classifier" in err and not out.exists()
    rc, err = _cli(capsys, "explain", str(img), "--masker", "x.safetensors", "--out", str(out), "-q")
    assert rc == 2 and err == "mperturb: error: --masker: --masker needs --method masker (got --method paper); add --method masker or drop --masker\n"


def test_run_and_benchmark_refuse_a_bad_masker_before_any_item(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png") if (tmp_path / "imgs").mkdir() is None else None
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 300)
    rc, err = _cli(capsys, "run", str(tmp_path / "imgs"), "--method", "masker", "--masker", str(bad), "--out",
                   str(tmp_path / "r"), "-q", "--device", "cpu")
    assert rc == 2 and err.startswith("mperturb: error: --masker: ") and not (tmp_path / "r").exists()
    rc, err = _cli(capsys, "benchmark", "--n", "2", "--methods", f"masker:masker={bad}", "--out", str(tmp_path / "b"), "-q",
                   "--device", "cpu")
    assert rc == 2 and f"methods: 'masker:masker={bad}': masker: " in err and not (tmp_path / "b").exists()


def test_a_checkpoint_passed_as_masker_points_to_the_masker_beside_it(tmp_path):
    model = _net()
    train_masker(model, _arrays(), out=tmp_path / "m", steps=2, eval_n=0, layers=("2", "0"), **FAST)
    with pytest.raises(InputError, match=r"is a training checkpoint, not a masker; pass the masker.safetensors beside it"):
        load_masker(tmp_path / "m" / "checkpoint.safetensors", option="--masker")


# ----- 4/5/6. the masker's perturbation; another classifier: missing layer, changed head -----

def test_explain_uses_the_perturbation_the_masker_was_trained_with(tmp_path):
    model = _net()
    r = train_masker(model, _arrays(), steps=2, eval_n=0, layers=("2", "0"), perturbation="fade", **FAST)
    x = _arrays().images[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = mp.explain(model, x, [0, 1], method="masker", masker=r.masker, head="logits")
    assert ex.config["perturbation"] == "fade"
    # fade: Φ(x, 0) is all zeros, so the "perturbed" score is the model's score of a zero image
    p0 = torch.softmax(model(torch.zeros(1, 3, SIZE, SIZE)), -1)[0, 0]
    assert torch.allclose(ex.scores["perturbed"][0], p0, atol=1e-5)
    with pytest.warns(MeaningfulPerturbationWarning, match="trained with perturbation='fade', got 'blur'"):
        ex = mp.explain(model, x, [0, 1], method="masker", masker=r.masker, perturbation="blur")
    assert ex.config["perturbation"] == "blur"


def test_a_changed_head_or_missing_layer_says_trained_for_another_classifier(tmp_path):
    model = _net()
    r = train_masker(model, _arrays(), steps=1, eval_n=0, layers=("2", "0"), **FAST)
    assert r.masker.fingerprint["head"] == "6" and len(r.masker.fingerprint["head_sha256"]) == 64
    x = _arrays().images[:1]
    mp.explain(model, x, 0, method="masker", masker=r.masker, head="logits")  # same classifier: fine
    with torch.no_grad():
        model[6].weight.add_(0.01)  # a fine-tuned head, same features
    with pytest.raises(ModelError, match=r"trained for another classifier: its head \('6', the last layer with weights\)"):
        mp.explain(model, x, 0, method="masker", masker=r.masker, head="logits")
    from collections import OrderedDict

    other = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                      fc=nn.Linear(4, 3)))
    r2 = train_masker(_net(), _arrays(), steps=1, eval_n=0, layers=("2",), **FAST)
    with pytest.raises(ModelError, match=r"was trained for another classifier: it needs the layer '2', which this model does not have"):
        mp.explain(other, x, 0, method="masker", masker=r2.masker, head="logits")


# ----- 3. resume -----

def test_resume_compares_data_and_steps_and_sums_wall_time(tmp_path):
    import time

    model, out = _net(), tmp_path / "m"
    slow = _arrays()
    real = slow.batch
    slow.batch = lambda step, size: (time.sleep(0.2), real(step, size))[1]  # a slow first session (same batches)
    train_masker(model, slow, out=out, steps=4, eval_n=0, stop_after=2, layers=("2", "0"), **FAST)
    with pytest.raises(InputError, match=r"--resume: the checkpoint was trained on other data"):
        train_masker(model, _arrays(seed=0, n=14), out=out, steps=4, eval_n=0, resume=True, layers=("2", "0"), **FAST)
    with pytest.raises(ConfigError, match=r"seed=0 vs 5"):
        train_masker(model, _arrays(), out=out, steps=4, eval_n=0, resume=True, layers=("2", "0"), **{**FAST}, seed=5)
    with pytest.raises(InputError, match=r"--steps: the checkpoint in .* already has 2 steps, got --steps 1; pass --steps 2 or more"):
        train_masker(model, _arrays(), out=out, steps=1, eval_n=0, resume=True, layers=("2", "0"), **FAST)
    done = train_masker(model, _arrays(masks=False), out=out, steps=4, eval_n=0, resume=True, layers=("2", "0"), **FAST)
    assert done.new_steps == 2 and done.steps_run == 4
    assert done.seconds >= 0.4 and done.masker.info["seconds"] == round(done.seconds, 3)  # both sessions' wall time
    assert "- steps: 4 of batch 4" in mp.masker.model_card(done.masker)
    before = (out / "masker.safetensors").stat().st_mtime_ns
    again = train_masker(model, _arrays(), out=out, steps=4, eval_n=0, resume=True, layers=("2", "0"), **FAST)
    assert again.new_steps == 0 and (out / "masker.safetensors").stat().st_mtime_ns == before


def test_npz_content_is_part_of_the_data_identity(tmp_path):
    f = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    np.savez(f, images=x, labels=np.arange(8) % 3)
    a = ArraySource.from_npz(str(f))
    np.savez(f, images=x + 1, labels=np.arange(8) % 3)
    b = ArraySource.from_npz(str(f))
    assert a.description != b.description and "SHA-256" in a.description


# ----- 7-12, 14 -----

def test_train_masker_options(tmp_path, capsys):
    o = str(tmp_path / "o")
    rc, err = _cli(capsys, "train-masker", "--data", "shapes", "--input-size", "48", "--out", o, "-q", "--device", "cpu")
    assert rc == 2 and "--input-size: the data gives 64x64 images, got 48x48" in err and "--data shapes:48" in err
    rc, err = _cli(capsys, "train-masker", "--mean", "0.5", "--out", o, "-q", "--device", "cpu")
    assert rc == 2 and err.startswith("mperturb: error: --mean: only with --data run:DIR")
    rc, err = _cli(capsys, "train-masker", "--steps", "0", "--out", o, "-q", "--device", "cpu")
    assert rc == 2 and err.startswith("mperturb: error: --steps: ")
    rc, err = _cli(capsys, "train-masker", "--batch-size", "0", "--out", o, "-q", "--device", "cpu")
    assert rc == 2 and err.startswith("mperturb: error: --batch-size: ")
    rc, err = _cli(capsys, "train-masker", "--layers", "features", "features", "--out", o, "-q", "--device", "cpu")
    assert rc == 2 and err.startswith("mperturb: error: --layers: each module may be tapped once")
    rc, err = _cli(capsys, "train-masker", "--steps", "x", "--out", o)
    assert rc == 2 and err.startswith("mperturb: error: train-masker: argument --steps") and err.count("\n") == 1
    (tmp_path / "file").write_text("x")
    rc, err = _cli(capsys, "train-masker", "--out", str(tmp_path / "file"), "-q", "--device", "cpu")
    assert rc == 2 and "--out: " in err and "is not a folder" in err
    TrainConfig(seed=-3).validate()  # negative seeds, as explain's --seed


def test_layers_are_sorted_deepest_first(tmp_path):
    with pytest.warns(MeaningfulPerturbationWarning, match=r"layers: expected deepest first .* using \['2', '0'\]"):
        r = train_masker(_net(), _arrays(), steps=1, eval_n=0, layers=("0", "2"), **FAST)
    assert r.masker.spec.layers == ("2", "0") and r.masker.info["config"]["layers"] == ["2", "0"]


def test_an_earlier_masker_or_a_busy_out_is_refused(tmp_path):
    from meaningful_perturbation.runner.owner import FolderLock

    out = tmp_path / "m"
    out.mkdir()
    (out / "MASKER_CARD.md").write_text("old")
    with pytest.raises(InputError, match=r"already holds MASKER_CARD.md of an earlier training; pass --overwrite"):
        train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), **FAST)
    lock = FolderLock(out, "train-masker.lock").acquire()
    try:
        with pytest.raises(InputError, match=r"--out: .* is in use by another mperturb run"):
            train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), overwrite=True, **FAST)
    finally:
        lock.release()
    train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), overwrite=True, **FAST)
    assert "Masker card" in (out / "MASKER_CARD.md").read_text()
    modes = {n: (out / n).stat().st_mode & 0o777 for n in ("MASKER_CARD.md", "masker.safetensors", "checkpoint.safetensors")}
    assert len(set(modes.values())) == 1, modes  # the weights as readable as the card (safetensors alone writes 0600)


def test_distillation_needs_teacher_masks():
    with pytest.raises(ConfigError, match=r"distil: 1.0 needs teacher masks, and the data .* has none"):
        train_masker(_net(), _arrays(), steps=1, eval_n=0, layers=("2",), distil=1.0, **FAST)
    src = _arrays()
    src.teacher = torch.rand(12, SIZE, SIZE)
    with pytest.warns(MeaningfulPerturbationWarning, match="teacher masks but distil is 0"):
        train_masker(_net(), src, steps=1, eval_n=0, layers=("2",), **FAST)


def test_ctrl_c_writes_a_checkpoint_to_resume(tmp_path, capsys):
    src = _arrays()
    real = src.batch

    def batch(step, size):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, size)

    src.batch = batch
    with pytest.raises(KeyboardInterrupt):
        train_masker(_net(), src, out=tmp_path / "m", steps=10, eval_n=0, layers=("2",), **{**FAST, "checkpoint_every": 100})
    assert "interrupted after step 3 of 10" in capsys.readouterr().err
    done = train_masker(_net(), _arrays(), out=tmp_path / "m", steps=4, eval_n=0, resume=True, layers=("2",),
                        **{**FAST, "checkpoint_every": 100})
    assert done.new_steps == 1 and done.steps_run == 4


def test_card_reports_accuracy_and_warns_on_empty_masks():
    r = train_masker(_net(), _arrays(n=20, masks=True), steps=1, eval_n=4, layers=("2",), **FAST)
    q = r.quality
    assert q is not None and 0.0 <= q["classifier_accuracy"] <= 1.0
    card = mp.masker.model_card(r.masker)
    assert f"classifies {q['classifier_accuracy']:.1%} of these images correctly" in card
    assert "spec: `Sequential (a Python module passed to train_masker)`" in card
    w = quality_warnings({"mean_mask_area": 0.001, "pointing_tol": 0.0, "rank_accuracy": 0.0, "classifier_accuracy": 0.2})
    assert len(w) == 3 and "almost) empty" in w[0]
    assert quality_warnings({"mean_mask_area": 0.3, "pointing_tol": 0.8, "rank_accuracy": 0.6, "classifier_accuracy": 0.9}) == []


def test_run_resume_compares_the_masker_by_content(tmp_path, capsys):
    import shutil

    from meaningful_perturbation.masker import DEMO_MASKER_PATH

    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "a.png")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    shutil.copy(DEMO_MASKER_PATH, a)
    shutil.copy(DEMO_MASKER_PATH, b)
    base = ["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--method", "masker", "--device", "cpu", "-q"]
    assert main(base + ["--masker", str(a)]) == 0
    assert main(base + ["--masker", str(b), "--resume"]) == 0  # same content, another path: the same masker
    m = load_masker(b)
    m.info = {**m.info, "note": "another file"}
    m.save(b)
    capsys.readouterr()
    rc, err = _cli(capsys, *base, "--masker", str(b), "--resume")
    assert rc == 2 and "--resume: the settings differ" in err and "sha256:" in err


def test_cli_resume_with_nothing_to_do_rewrites_nothing(tmp_path, capsys):
    out = tmp_path / "m"
    base = ["train-masker", "--model", "demo", "--data", "shapes:32", "--out", str(out), "--batch-size", "2", "--eval-n", "0",
            "-q", "--device", "cpu", "--seed", "-4"]
    assert main(base + ["--steps", "2"]) == 0
    card = (out / "MASKER_CARD.md").read_text()
    stamp = (out / "masker.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(base + ["--steps", "2", "--resume"]) == 0
    assert "already trained 2 steps; nothing to do" in capsys.readouterr().out
    assert (out / "MASKER_CARD.md").read_text() == card and (out / "masker.safetensors").stat().st_mtime_ns == stamp
    rc, err = _cli(capsys, *base, "--steps", "1", "--resume")
    assert rc == 2 and err.startswith("mperturb: error: --steps: the checkpoint in ") and "already has 2 steps" in err
    rc, err = _cli(capsys, *base, "--steps", "2")
    assert rc == 2 and "holds the checkpoint.safetensors of an earlier training; pass --resume" in err


def test_overwrite_replaces_a_finished_training_with_its_checkpoint(tmp_path):
    out = tmp_path / "m"
    train_masker(_net(), _arrays(), out=out, steps=2, eval_n=0, layers=("2",), **FAST)
    assert (out / "checkpoint.safetensors").is_file()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds the checkpoint.safetensors of an earlier training; pass --resume "
                                         r"to continue it, --overwrite to replace it"):
        train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), **FAST)
    before = {n: (out / n).read_bytes() for n in ("masker.safetensors", "checkpoint.safetensors")}
    with pytest.raises(InputError, match=r"--input-size"):  # a refused new training keeps the old one
        train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), overwrite=True,
                     input_size=(SIZE * 2, SIZE * 2), **FAST)
    assert {n: (out / n).read_bytes() for n in before} == before
    r = train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), overwrite=True, **FAST)
    assert r.steps_run == 1 and r.new_steps == 1  # a new training from step 0, not the old checkpoint's
    assert (out / "checkpoint.safetensors").read_bytes() != before["checkpoint.safetensors"]
    again = train_masker(_net(), _arrays(), out=out, steps=1, eval_n=0, layers=("2",), resume=True, **FAST)
    assert again.new_steps == 0 and again.steps_run == 1  # the checkpoint is the new training's (1 step)
    assert (out / "notes.txt").read_text() == "mine"  # nothing else is touched


def test_cli_errors_of_training_settings_name_the_option(tmp_path, capsys):
    rc, err = _cli(capsys, "train-masker", "--model", "demo", "--data", "shapes", "--out", str(tmp_path / "o"), "-q",
                   "--device", "cpu", "--set", "distil=1", "--steps", "1")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("mperturb: error: --set distil: 1") and "needs teacher masks" in err, err


def test_ctrl_c_inside_a_step_resumes_to_the_uninterrupted_weights_and_statistics(tmp_path):
    """Interrupted after a step's masker forward pass (its BatchNorm statistics already moved)
    and resumed: every weight and buffer equals an uninterrupted run's, num_batches_tracked
    included, and the history has one record per step."""
    from safetensors.torch import load_file

    kw = dict(eval_n=0, layers=("2",), **{**FAST, "checkpoint_every": 100})
    ref = train_masker(_net(), _arrays(), out=tmp_path / "ref", steps=5, **kw)

    src, state = _arrays(), {"step": -1, "calls": 0}
    real = src.batch

    def batch(step, size):
        state["step"], state["calls"] = step, 0
        return real(step, size)

    def hook(module, args):  # the classifier: first on the clean batch, then on the masked one
        if state["step"] == 3:
            state["calls"] += 1
            if state["calls"] == 2:
                raise KeyboardInterrupt

    src.batch = batch
    net = _net()
    net.register_forward_pre_hook(hook)
    with pytest.raises(KeyboardInterrupt):
        train_masker(net, src, out=tmp_path / "m", steps=5, **kw)
    assert state["calls"] == 2  # interrupted inside step 3, after the masker's forward pass
    done = train_masker(_net(), _arrays(), out=tmp_path / "m", steps=5, resume=True, **kw)
    assert done.new_steps == 2
    a, b = ref.masker.net.state_dict(), done.masker.net.state_dict()
    assert any("num_batches_tracked" in k for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    ha = load_file(str(tmp_path / "ref" / "checkpoint.safetensors"))["history"]
    hb = load_file(str(tmp_path / "m" / "checkpoint.safetensors"))["history"]
    assert ha.shape == hb.shape and ha.shape[0] == 5
