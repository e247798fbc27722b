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
