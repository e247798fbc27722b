"""Real-time masker (Dabkowski & Gal 2017): training, oracle, save/load, resume, errors."""

from __future__ import annotations

import pickle

import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation.errors import ConfigError, InputError, ModelError
from meaningful_perturbation.masker import ArraySource, load_masker, train_masker
from meaningful_perturbation.masker.net import FeatureTap

from oracles import BOXES, TextureOracle, region_masks, textured_image

SIZE = 32

# One intra-op thread: many small ops, shared CI cores (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _oracle_data(n_per_class: int = 12, seed: int = 0) -> ArraySource:
    xs, ys = [], []
    for i in range(n_per_class):
        for k in range(len(BOXES)):
            xs.append(textured_image(SIZE, k, seed=1000 * seed + 10 * i + k))
            ys.append(k)
    return ArraySource(torch.cat(xs), torch.tensor(ys), seed=seed)


# Small, fast settings for the oracle model: one tapped layer at full resolution.
FAST = dict(layers=("conv",), width=8, batch_size=8, lr=1e-2, fake_rate=0.0, mask_blur=0.0, checkpoint_every=2)


@pytest.fixture(scope="module")
def oracle(one_thread):
    return TextureOracle(SIZE).eval()


@pytest.fixture(scope="module")
def trained(oracle):
    torch.manual_seed(0)
    return train_masker(oracle, _oracle_data(), steps=120, eval_n=0, **FAST)


def test_training_lowers_the_objective(trained):
    h = [r["loss"] for r in trained.history]
    first, last = sum(h[:10]) / 10, sum(h[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_masker_on_an_oracle_finds_its_evidence_region(trained, oracle):
    """TextureOracle's class k looks only at region k: the mask must keep region k."""
    hits, contrast = 0, []
    for k in range(len(BOXES)):
        for s in range(3):
            x = textured_image(SIZE, k, seed=5000 + 7 * s + k)
            m = trained.masker.predict(oracle, x, torch.tensor([k]))[0, 0]
            reg = region_masks(SIZE, [BOXES[k]])[0].bool()
            contrast.append(float(m[reg].mean() - m[~reg].mean()))
            yx = divmod(int(m.argmax()), SIZE)
            hits += bool(reg[yx])
    assert hits == 12, hits
    assert min(contrast) > 0.3, contrast


def test_save_load_gives_the_same_masks(trained, oracle, tmp_path):
    path = trained.masker.save(tmp_path / "m.safetensors")
    again = load_masker(path)
    x = torch.cat([textured_image(SIZE, k, seed=77 + k) for k in range(4)])
    c = torch.arange(4)
    assert torch.equal(trained.masker.predict(oracle, x, c), again.predict(oracle, x, c))
    assert again.fingerprint == trained.masker.fingerprint
    # explain() with the path and with the object: the same Explanation masks, one forward.
    a = mp.explain(oracle, x, c, method="masker", masker=str(path))
    b = mp.explain(oracle, x, c, method="masker", masker=again)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.saliency, a.masks[:, 0])
    assert a.config["masker"] == str(path)
    assert (a.scores["masked"] > a.scores["masked_delete"]).all()


def test_resume_continues_exactly_as_uninterrupted(oracle, tmp_path):
    data = _oracle_data(4)
    full = train_masker(oracle, data, out=tmp_path / "a", steps=6, eval_n=0, **FAST)
    part = train_masker(oracle, data, out=tmp_path / "b", steps=6, eval_n=0, stop_after=3, **FAST)
    assert part.steps_run == 3 and not (tmp_path / "b" / "masker.safetensors").exists()
    done = train_masker(oracle, data, out=tmp_path / "b", steps=6, eval_n=0, resume=True, **FAST)
    assert done.steps_run == 6 and done.history == full.history
    sa, sb = full.masker.net.state_dict(), done.masker.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "b" / "MASKER_CARD.md").read_text().count("conv") >= 1
    with pytest.raises(ConfigError, match="--resume: the checkpoint was trained with other settings.*lr"):
        train_masker(oracle, data, out=tmp_path / "b", steps=8, eval_n=0, resume=True, **{**FAST, "lr": 0.5})
    with pytest.raises(InputError, match="--out: .* holds the checkpoint.safetensors of an earlier training; pass --resume"):
        train_masker(oracle, data, out=tmp_path / "b", steps=6, eval_n=0, **FAST)
    with pytest.raises(InputError, match="--resume: no checkpoint.safetensors"):
        train_masker(oracle, data, out=tmp_path / "c", steps=6, resume=True, **FAST)


def test_training_leaves_the_classifier_as_found(oracle):
    oracle.train()
    oracle.conv.weight.requires_grad_(True)
    before = oracle.conv.weight.detach().clone()
    train_masker(oracle, _oracle_data(2), steps=2, eval_n=0, **FAST)
    assert oracle.training and oracle.conv.weight.requires_grad
    assert torch.equal(oracle.conv.weight, before)
    oracle.eval()


def test_masker_for_another_classifier_is_refused(trained):
    other = TextureOracle(SIZE)
    with torch.no_grad():
        other.conv.weight.mul_(1.01)
    x = textured_image(SIZE, 0)
    with pytest.raises(ModelError, match=r"masker: '<module>' was trained for another classifier: the weights of layers conv differ"):
        mp.explain(other, x, 0, method="masker", masker=trained.masker)
    six = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 6))
    with pytest.raises(ModelError, match=r"masker: '<module>' was trained for another classifier: it needs the layer 'conv'"):
        mp.explain(six, x, 0, method="masker", masker=trained.masker)


def test_wrong_input_size_is_refused(trained, oracle):
    big = TextureOracle(48)
    big.conv.load_state_dict(oracle.conv.state_dict())
    with pytest.raises(InputError, match=r"x: the masker '<module>' was trained on 32x32 images, got 48x48"):
        mp.explain(big, textured_image(48, 0), 0, method="masker", masker=trained.masker)


def test_bad_masker_files_are_refused(tmp_path, oracle):
    x = textured_image(SIZE, 0)
    with pytest.raises(InputError, match=r"masker: file '.*nope.safetensors' not found"):
        mp.explain(oracle, x, 0, method="masker", masker=str(tmp_path / "nope.safetensors"))
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="is not a safetensors file .it looks like a pickle, which is never loaded"):
        mp.explain(oracle, x, 0, method="masker", masker=str(evil))
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(InputError, match="is a safetensors file but not a masker"):
        load_masker(plain)
    with pytest.raises(ConfigError, match="masker: expected a path to a .safetensors masker, 'demo' or a Masker, got int"):
        mp.explain(oracle, x, 0, method="masker", masker=3)


def test_bad_training_settings_are_refused(oracle):
    with pytest.raises(ConfigError, match="delete_power: expected a value > 0"):
        train_masker(oracle, _oracle_data(1), steps=1, delete_power=0.0, layers=("conv",))
    with pytest.raises(ModelError, match="layers: 'nope' is not a layer"):
        train_masker(oracle, _oracle_data(1), steps=1, layers=("nope",))
    with pytest.raises(InputError, match="--data: unknown source 'imagenet'"):
        train_masker(oracle, "imagenet", steps=1, layers=("conv",))


def test_feature_tap_removes_its_hooks(oracle):
    FeatureTap(oracle, ["conv"])(textured_image(SIZE, 0))
    assert not oracle.conv._forward_hooks


def _png(path, seed=3):
    import numpy as np
    from PIL import Image

    from meaningful_perturbation.data import make_shape_evidence

    ds = make_shape_evidence(1, size=64, seed=seed)
    Image.fromarray((ds.images[0].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def test_cli_train_masker_then_explain_with_it(tmp_path, capsys):
    from meaningful_perturbation.cli import main

    out = tmp_path / "m"
    rc = main(["train-masker", "--model", "demo", "--data", "shapes", "--out", str(out), "--steps", "2",
               "--batch-size", "2", "--eval-n", "4", "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert "mperturb train-masker: 2 steps" in capsys.readouterr().out
    card = (out / "MASKER_CARD.md").read_text()
    assert "`demo`" in card and "| delete_power | 0.3 |" in card and "rank accuracy" in card
    img = _png(tmp_path / "a.png")
    rc = main(["explain", str(img), "--method", "masker", "--masker", str(out / "masker.safetensors"), "--out",
               str(tmp_path / "e"), "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    ex = mp.Explanation.load(tmp_path / "e" / "a.npz")
    assert ex.method == "masker" and ex.masks.shape == (1, 1, 64, 64)
    assert ex.config["masker"] == str(out / "masker.safetensors")
    rc = main(["explain", str(img), "--method", "masker", "--masker", str(tmp_path / "missing.safetensors"), "--out",
               str(tmp_path / "f"), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mperturb: error: --masker: file ") and "not found" in err and err.count("\n") == 1
    rc = main(["train-masker", "--model", "demo", "--out", str(tmp_path / "g"), "--set", "area=-1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "mperturb: error: --set: area: expected a value >= 0, got -1\n"


def test_distillation_from_a_run_folder_moves_the_masks_towards_the_teacher(tmp_path):
    """`run:DIR` reads a `mperturb run` folder (here: the `center` prior as teacher, fast)."""
    from meaningful_perturbation.cli import main
    from meaningful_perturbation.masker import RunFolderSource
    from meaningful_perturbation.models import load_model

    for i in range(3):
        _png((tmp_path / "imgs").mkdir(exist_ok=True) or tmp_path / "imgs" / f"i{i}.png", seed=20 + i)
    assert main(["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--method", "center", "--device", "cpu", "-q"]) == 0
    lm = load_model("demo")
    src = RunFolderSource(str(tmp_path / "r"), lm.preprocessing)
    assert src.images.shape == (3, 3, 64, 64) and float(src.teacher.max()) == 1.0
    only = dict(area=0.0, tv=0.0, preserve=0.0, delete=0.0, distil=1.0, fake_rate=0.0, batch_size=3, lr=1e-2, width=8)
    r = train_masker(lm.model, src, steps=25, eval_n=0, **only)
    d = [h["distil"] for h in r.history]
    assert d[-1] < 0.5 * d[0], d
    with pytest.raises(InputError, match="--data: .* has no results"):
        RunFolderSource(str(tmp_path / "imgs"), lm.preprocessing)


def test_the_shipped_demo_masker_is_the_default_and_finds_the_shapes():
    from meaningful_perturbation.data import make_shape_evidence
    from meaningful_perturbation.demo import load_demo_model
    from meaningful_perturbation.masker import DEMO_MASKER_PATH
    from meaningful_perturbation.metrics import pointing_game, scaled_tolerance

    assert DEMO_MASKER_PATH.stat().st_size < 1_000_000
    model = load_demo_model()
    t = make_shape_evidence(16, size=64, split="test", seed=3).to_tensors()
    ex = mp.explain(model, t.images, t.labels, method="masker")
    assert ex.config["masker"].endswith("demo_masker.safetensors")
    assert float(ex.masks.min()) >= 0 and float(ex.masks.max()) <= 1
    assert pointing_game(ex.saliency, t.masks, tolerance=scaled_tolerance(64)).accuracy >= 0.9
    assert float(ex.masks.mean()) < 0.2  # a small region, not the whole image
    # keeping the mask keeps the class; deleting it removes it (down to the fully blurred level)
    assert (ex.scores["masked"][:, 0] > 0.5).float().mean() >= 0.9
    assert (ex.scores["masked_delete"][:, 0] < ex.scores["clean"]).all()
    # the same batch one image at a time: the same masks (one decoder pass per batch, eval mode)
    one = mp.explain(model, t.images[:1], t.labels[:1], method="masker")
    assert torch.allclose(one.masks, ex.masks[:1], atol=1e-5)
    with pytest.raises(InputError, match="trained on 64x64 images, got 96x96"):
        mp.explain(model, torch.zeros(1, 3, 96, 96), 0, method="masker")


def test_scores_false_gives_the_same_masks_without_the_scoring_pass(trained, oracle):
    x = torch.cat([textured_image(SIZE, k, seed=90 + k) for k in range(4)])
    a = mp.explain(oracle, x, torch.arange(4), method="masker", masker=trained.masker)
    b = mp.explain(oracle, x, torch.arange(4), method="masker", masker=trained.masker, scores=False)
    assert torch.equal(a.masks, b.masks) and set(b.scores) == {"clean"}


def test_feature_tap_reads_a_layer_before_a_later_in_place_change():
    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Identity()

        def forward(self, x):
            y = self.a(x * 1.0)
            y.mul_(0)  # a later in-place op on the tapped output
            return y.mean(dim=(2, 3))

    _, feats = FeatureTap(InPlace(), ["a"])(torch.ones(1, 2, 4, 4))
    assert float(feats[0].min()) == 1.0


def test_a_target_set_gets_the_pixelwise_max_of_its_classes_masks(trained, oracle):
    x = textured_image(SIZE, 1, seed=123)
    both = mp.explain(oracle, x, [[0, 1]], method="masker", masker=trained.masker)
    one = [mp.explain(oracle, x, k, method="masker", masker=trained.masker).masks for k in (0, 1)]
    assert torch.allclose(both.masks, torch.maximum(*one), atol=1e-6)


def test_a_tampered_masker_header_is_one_input_error(trained, tmp_path):
    import json as _json

    from safetensors.torch import save_file

    path = trained.masker.save(tmp_path / "m.safetensors")
    from meaningful_perturbation.masker.model import read_safetensors

    tensors, meta = read_safetensors(path, what="m", option="masker")
    for key, value in [("fingerprint", "[1, 2]"), ("fingerprint", "[" * 100000 + "]" * 100000), ("config", "{}"),
                       ("info", "3")]:
        bad = tmp_path / f"bad_{key}.safetensors"
        save_file(tensors, str(bad), metadata={**meta, key: value})
        with pytest.raises(InputError, match="has a damaged masker header or weights"):
            load_masker(bad)
    short = dict(tensors)
    short.pop(next(iter(short)))
    save_file(short, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="has a damaged masker header or weights"):
        load_masker(tmp_path / "short.safetensors")
    assert _json.loads(meta["fingerprint"]) == trained.masker.fingerprint


def test_a_ground_truth_family_of_the_data_package_is_a_data_source(monkeypatch):
    """After `data.families` exists (a table of ShapeEvidence-like generators), `--data NAME`
    trains on any family with no other change."""
    import sys
    import types

    import meaningful_perturbation.data as data_pkg
    from meaningful_perturbation.data import make_shape_evidence
    from meaningful_perturbation.masker import data_source

    fake = types.ModuleType("meaningful_perturbation.data.families")
    fake.FAMILIES = {"fake": types.SimpleNamespace(make=make_shape_evidence, title="FakeEvidence")}
    monkeypatch.setitem(sys.modules, "meaningful_perturbation.data.families", fake)
    monkeypatch.setattr(data_pkg, "families", fake, raising=False)
    src = data_source("fake:32", seed=1)
    x, y, teacher = src.batch(0, 2)
    assert x.shape == (2, 3, 32, 32) and teacher is None and src.description.startswith("FakeEvidence train split, 32 px")
    assert torch.equal(x, make_shape_evidence(2, size=32, split="train", seed=100_003).to_tensors().images)
    with pytest.raises(InputError, match="--data: fake takes an image size"):
        data_source("fake:big")


def test_benchmark_runs_the_masker(tmp_path, capsys):
    import json

    from meaningful_perturbation.cli import main

    rc = main(["benchmark", "--methods", "masker", "--n", "4", "--curve-steps", "2", "--out", str(tmp_path), "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "benchmark.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["masker"]
    assert "| masker |" in (tmp_path / "benchmark.md").read_text()


def test_the_runner_calls_the_masker_once_per_batch(tmp_path, monkeypatch):
    from meaningful_perturbation.cli import main
    from meaningful_perturbation.masker.net import MaskerNet

    calls = []
    real = MaskerNet.forward

    def counting(self, feats, classes):
        calls.append(int(classes.shape[0]))
        return real(self, feats, classes)

    monkeypatch.setattr(MaskerNet, "forward", counting)
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        _png(tmp_path / "imgs" / f"i{i}.png", seed=40 + i)
    assert main(["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--method", "masker", "--batch-size", "4",
                 "--device", "cpu", "-q"]) == 0
    assert sorted(calls) == [1, 4]
    assert len(list((tmp_path / "r" / "items").glob("*.npz"))) == 5


def test_distilling_a_run_of_another_classifier_is_warned_about(tmp_path, capsys):
    from meaningful_perturbation.cli import main

    for i in range(2):
        _png((tmp_path / "imgs").mkdir(exist_ok=True) or tmp_path / "imgs" / f"i{i}.png", seed=30 + i)
    assert main(["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--method", "center", "--device", "cpu", "-q"]) == 0
    base = ["train-masker", "--data", f"run:{tmp_path / 'r'}", "--steps", "1", "--eval-n", "0", "--device", "cpu", "-q",
            "--set", "batch_size=2"]
    capsys.readouterr()
    assert main([*base, "--model", "demo", "--out", str(tmp_path / "m1")]) == 0
    assert "explain another model" not in capsys.readouterr().err  # the same classifier: nothing to say
    main([*base, "--model", "demo:textures", "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err
    assert (f"mperturb: warning: --data: the teacher masks of {tmp_path / 'r'} explain another model (--model demo) than "
            "the classifier this masker is trained for (--model demo:textures)") in err, err
