"""Contracts of the shipped demo model (DESIGN.md §4; see demo/MODEL_CARD.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meaningful_perturbation.demo import DEMO_PREPROCESSING, WEIGHTS_PATH, ShapeNet, load_demo_model
from meaningful_perturbation.errors import InputError, ModelError

# A seed the model card's evaluation (seed 1000) and training (train split) never used.
FRESH_SEED = 4242


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_demo_model()


def test_weights_ship_as_small_safetensors() -> None:
    assert WEIGHTS_PATH.suffix == ".safetensors" and WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 2 * 1024 * 1024
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        assert "classifier.weight" in f.keys()
    metrics = json.loads(WEIGHTS_PATH.with_name("metrics.json").read_text())
    ev = metrics["evaluation"]
    assert ev["n"] >= 1000 and ev["test_accuracy"] >= 0.97
    assert ev["counterfactual_accuracy"] <= 1 / 6 + 0.05


def test_loads_in_eval_mode_with_few_parameters(model: torch.nn.Module) -> None:
    assert isinstance(model, ShapeNet) and not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert 40_000 <= n_params <= 80_000


def test_preprocessing_matches_the_data_package() -> None:
    from meaningful_perturbation.data import CLASSES, MEAN, STD

    assert DEMO_PREPROCESSING["input_size"] == 64
    assert tuple(DEMO_PREPROCESSING["mean"]) == MEAN == (0.485, 0.456, 0.406)
    assert tuple(DEMO_PREPROCESSING["std"]) == STD == (0.229, 0.224, 0.225)
    assert tuple(DEMO_PREPROCESSING["class_names"]) == CLASSES


@pytest.mark.parametrize("side", [32, 64, 224])
def test_any_input_size_from_32(model: torch.nn.Module, side: int) -> None:
    with torch.no_grad():
        out = model(torch.zeros(2, 3, side, side))
    assert out.shape == (2, 6) and torch.isfinite(out).all()


def test_accuracy_on_fresh_test_split_and_chance_on_counterfactuals(model: torch.nn.Module) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from meaningful_perturbation.data import make_shape_evidence

    t = make_shape_evidence(300, size=64, split="test", seed=FRESH_SEED).to_tensors()
    with torch.no_grad():
        acc = (model(t.images).argmax(1) == t.labels).float().mean().item()
        cf_acc = (model(t.counterfactuals).argmax(1) == t.labels).float().mean().item()
    assert acc >= 0.95, acc
    assert cf_acc <= 0.30, cf_acc


def test_missing_weights_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^weights:"):
        load_demo_model(weights=tmp_path / "nope.safetensors")


def test_foreign_state_dict_raises_model_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="^weights:"):
        load_demo_model(weights=path)


def test_import_is_light() -> None:
    code = (
        "import sys, meaningful_perturbation.demo as d; "
        "print(any(m.split('.')[0] in ('skimage', 'sklearn', 'matplotlib') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_command_is_deterministic_and_writes_weights_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from meaningful_perturbation.demo.__main__ import main

    threads = torch.get_num_threads()
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "w.safetensors"
        main(["train", "--n", "128", "--epochs", "1", "--eval-n", "30", "--quiet", "--out", str(out)])
        outs.append(out)
        metrics = json.loads(out.with_name("metrics.json").read_text())
        assert {"test_accuracy", "counterfactual_accuracy"} <= set(metrics["evaluation"])
        assert metrics["parameters"] == sum(p.numel() for p in ShapeNet().parameters())
    assert outs[0].read_bytes() == outs[1].read_bytes()  # same seed → byte-identical weights
    assert isinstance(load_demo_model(weights=outs[0]), ShapeNet)
    assert torch.get_num_threads() == threads  # global torch state restored
