"""Real torchvision and timm classifiers (random weights) on real photos, end to end.

Issue 14: ``mperturb explain`` (``paper``, ``extremal-fast``) and ``mperturb run`` with the
zoo's own preprocessing and ImageNet class names; the tensor the project feeds the model must
equal the library's own transform of the same photo (torchvision ``weights.transforms()``;
timm ``resolve_data_config`` + ``create_transform``) within 1e-5; ``--target tabby`` and
``--target 281`` name the same class; :func:`explain` leaves the model exactly as found.

Random weights keep these offline: ``torchvision:NAME:NONE`` (preprocessing and class names
still from the default weights' metadata) and, for timm, the model built with
``pretrained=False`` and passed to ``timm:NAME`` through ``--weights FILE``. Steps are 1-2:
these tests check the plumbing and the values that do not depend on training, not saliency
quality.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from meaningful_perturbation import explain
from meaningful_perturbation.cli import main
from meaningful_perturbation.io import load_image, preprocess
from meaningful_perturbation.models import load_model

pytestmark = pytest.mark.integration

TORCHVISION = ("vgg19", "resnet50", "vit_b_16", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small")
TIMM = ("resnet50", "vit_small_patch16_224", "deit_tiny_patch16_224", "convnext_tiny", "efficientnet_b0")
ZOO = [f"torchvision:{n}" for n in TORCHVISION] + [f"timm:{n}" for n in TIMM]
TABBY = 281  # ImageNet-1k class index of "tabby" (n02123045); chelsea is a tabby cat
HEAVY = {"torchvision:vgg19"}  # ~20 GMAC: one photo and one step wherever possible on CPU


@dataclass
class Zoo:
    """One zoo model: how to name it to mperturb, and what the library itself says."""

    key: str
    args: list[str]  # --model ... [--weights FILE]
    weights: str | None
    transform: Callable[[Any], torch.Tensor]  # the library's own PIL -> normalised tensor
    categories: list[str]  # the library's own ImageNet class names
    model_class: type  # the class of the library's model (its forward input is what is fed)
    spec: str = field(default="")


# extremal-fast's occlusion start at its default stride is 625 forward passes at 224 px: a
# coarse probe (2 x 2 windows of half the side) keeps the path tested at CPU cost
PROBE = {"extremal-fast": ["--set", "probe_window=112", "--set", "probe_stride=112"]}

def _torchvision(tv, name: str) -> Zoo:
    weights = tv.get_model_weights(name).DEFAULT
    model_class = type(tv.get_model(name, weights=None))
    spec = f"torchvision:{name}:NONE"
    return Zoo(f"torchvision:{name}", ["--model", spec], None, weights.transforms(),
               list(weights.meta["categories"]), model_class, spec)


def _timm(timm, name: str, folder: Path) -> Zoo:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    path = folder / f"timm-{name}.pt"
    torch.save(model.state_dict(), path)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    subset = timm.data.infer_imagenet_subset(model)
    categories = list(timm.data.ImageNetInfo(subset).label_descriptions())
    spec = f"timm:{name}"
    return Zoo(f"timm:{name}", ["--model", spec, "--weights", str(path)], str(path), transform,
               categories, type(model), spec)


_CACHE: dict[str, Zoo] = {}


@pytest.fixture(params=ZOO)
def zoo(request, tmp_path_factory) -> Zoo:
    key = request.param
    if key not in _CACHE:
        source, name = key.split(":")
        if source == "torchvision":
            _CACHE[key] = _torchvision(request.getfixturevalue("tv"), name)
        else:
            folder = tmp_path_factory.getbasetemp() / "timm-weights"
            folder.mkdir(exist_ok=True)
            _CACHE[key] = _timm(request.getfixturevalue("timm_lib"), name, folder)
    return _CACHE[key]


def _library_input(zoo: Zoo, path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return zoo.transform(im.convert("RGB"))


class _FedInputs:
    """Record the input of every forward call of the library's model class, wherever the
    project wraps it (a global forward pre-hook: the project's code is not touched)."""

    def __init__(self, model_class: type) -> None:
        self.model_class, self.inputs = model_class, []

    def __enter__(self):
        def hook(module, args):
            if type(module) is self.model_class and args and torch.is_tensor(args[0]):
                self.inputs.append(args[0].detach().float().cpu().clone())

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _assert_class_names(record: dict, categories: list[str]) -> None:
    targets = record["target"]
    assert targets and all(0 <= t < 1000 for t in targets)
    assert record["target_names"] == [categories[t] for t in targets]


def test_preprocessing_equals_the_library_transform(zoo, photos):
    """load_model's preprocessing (from the library's metadata) reproduces the library's own
    transform on every photo, and its class names are the library's."""
    loaded = load_model(zoo.spec, weights=zoo.weights)
    assert loaded.preprocessing.class_names == tuple(zoo.categories)
    assert len(zoo.categories) == 1000
    for name, path in photos.items():
        ours, _ = preprocess(load_image(path), loaded.preprocessing)
        theirs = _library_input(zoo, path)
        assert ours.shape == theirs.shape, name
        assert (ours - theirs).abs().max().item() <= 1e-5, name


def test_explain_paper_and_extremal_fast(zoo, photos, tmp_path, capsys):
    """``mperturb explain`` with both methods; the input fed to the model is the library's
    transform of the photo, ``--target tabby`` and ``--target 281`` name one class, and the
    class name is in the summary, the npz and the per-image line."""
    chelsea = photos["chelsea"]
    expected = _library_input(zoo, chelsea)
    assert zoo.categories[TABBY].split(",")[0] == "tabby"
    runs = {"paper": ("tabby", "1"), "extremal-fast": (str(TABBY), "1" if zoo.key in HEAVY else "2")}
    for method, (target, steps) in runs.items():
        out = tmp_path / method
        with _FedInputs(zoo.model_class) as fed:
            rc = main(["explain", str(chelsea), *zoo.args, "--method", method, "--steps", steps,
                       "--target", target, "--out", str(out), *PROBE.get(method, [])])
        assert rc == 0, capsys.readouterr().err
        # The first forward on an image (after the loader's constant probe inputs) is the
        # clean image: exactly the library's own preprocessing.
        images = [t for t in fed.inputs if t.float().std() > 0]
        assert images, "the model was never called on the image"
        first = images[0]
        assert first.shape[1:] == expected.shape
        assert (first[0] - expected).abs().max().item() <= 1e-5
        summary = json.loads((out / "chelsea_summary.json").read_text())
        assert summary["method"] == method
        assert summary["target"] == [TABBY]
        _assert_class_names(summary, zoo.categories)
        clean = summary["scores"]["clean"]
        assert math.isfinite(clean) and 0.0 <= clean <= 1.0
        masked = summary["scores"]["masked"]
        assert masked and all(math.isfinite(v) for v in masked)
        with np.load(out / "chelsea.npz") as npz:
            saliency, masks = npz["saliency"], npz["masks"]
        assert saliency.shape == (1, *expected.shape[1:]) and masks.shape[0] == 1
        assert np.isfinite(masks).all() and masks.min() >= 0.0 and masks.max() <= 1.0
        # paper plays the deletion game (saliency 1 - m); extremal sums its K areas' masks.
        derived = 1.0 - masks[:, 0] if method == "paper" else masks.sum(axis=1)
        np.testing.assert_allclose(saliency, derived, atol=1e-5)
        assert (out / "chelsea_panel.png").stat().st_size > 0
        line = capsys.readouterr()
        assert f"target {zoo.categories[TABBY]}" in line.out + line.err


def test_run_on_a_folder_of_photos(zoo, photos, tmp_path, capsys):
    """``mperturb run`` over chelsea, astronaut and coffee: one result per photo, each
    with the library's class name for its (top-1) target."""
    folder = next(iter(photos.values())).parent
    out = tmp_path / "run"
    rc = main(["run", str(folder), *zoo.args, "--method", "paper", "--steps", "1", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(Path(r["path"]).stem for r in records) == sorted(photos)
    for record in records:
        _assert_class_names(record, zoo.categories)


def test_explain_leaves_the_model_as_found(zoo, photos):
    """:func:`explain` on the loaded zoo model: parameters, buffers, ``training`` flags,
    ``requires_grad`` and gradients are exactly as before (a model left in train mode with a
    frozen first parameter, as a fine-tuning user might have it)."""
    loaded = load_model(zoo.spec, weights=zoo.weights)
    model = loaded.model
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    before_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before_flags = [(n, m.training) for n, m in model.named_modules()]
    before_grad = [(n, p.requires_grad) for n, p in model.named_parameters()]
    x, _ = preprocess(load_image(photos["chelsea"]), loaded.preprocessing)
    result = explain(model, x[None], target=TABBY, method="extremal-fast", steps=1, probe_window=112, probe_stride=112)
    assert torch.isfinite(result.saliency).all()
    after_state = model.state_dict()
    assert after_state.keys() == before_state.keys()
    for k, v in before_state.items():
        assert torch.equal(after_state[k], v), k
    assert [(n, m.training) for n, m in model.named_modules()] == before_flags
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before_grad
    assert all(p.grad is None for p in model.parameters())
