"""Hub sources with the real libraries: random weights, the offline cache message and local
weight files (torchvision, timm). Integration environment only (see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from meaningful_perturbation.errors import InputError
from meaningful_perturbation.models import load_model

pytestmark = pytest.mark.integration


def test_torchvision_random_init_and_metadata(tv):
    loaded = load_model("torchvision:resnet18:NONE")
    prep = loaded.preprocessing
    assert prep.size == (224, 224) and prep.resize == 256 and len(prep.class_names) == 1000
    assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_torchvision_missing_cache_fails_fast_and_weights_file_works(tv, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(InputError, match="--weights"):
        load_model("torchvision:resnet18", offline=True)
    path = tmp_path / "resnet18.pt"
    torch.save(load_model("torchvision:resnet18:NONE").model.state_dict(), path)
    assert load_model("torchvision:resnet18", weights=path).preprocessing.resize == 256


def test_timm_missing_cache_fails_fast_and_weights_file_works(timm_lib, monkeypatch, tmp_path):
    import timm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(InputError, match="--weights"):
        load_model("timm:resnet18.a1_in1k", offline=True)
    path = tmp_path / "resnet18.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), str(path))
    loaded = load_model("timm:resnet18", weights=path)
    assert loaded.preprocessing.size == (224, 224)
    assert loaded.model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("spec", ["torchvision:resnet18:NONE", "timm:resnet18:NONE"])
def test_random_weights_are_the_same_in_every_call_and_leave_the_generator_alone(spec, tv, timm_lib):
    """`:NONE` weights come from a fixed seed: two loads are the same model (a --resume or a
    second run explains the same network), and the caller's RNG stream is untouched."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = load_model(spec).model
    b = load_model(spec).model
    assert torch.equal(torch.rand(3), expected)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
