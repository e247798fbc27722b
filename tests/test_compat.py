"""Captum / Quantus adapters in meaningful_perturbation.compat."""

import numpy as np
import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation.compat import ExtremalPerturbation, MeaningfulPerturbation, as_quantus_explain_func


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


def test_meaningful_perturbation_shape_and_values():
    net, x = _net(), torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    attr = MeaningfulPerturbation(net).attribute(x, target=[1, 2], steps=2)
    assert attr.shape == x.shape and attr.dtype == x.dtype
    ref = mp.explain(net, x, target=torch.tensor([1, 2]), method="paper", steps=2)
    for c in range(3):
        assert torch.equal(attr[:, c], ref.saliency)


def test_extremal_perturbation_areas():
    net, x = _net(), torch.randn(1, 3, 24, 24)
    ep = ExtremalPerturbation(net)
    attr = ep.attribute(x, target=0, areas=[0.1, 0.3], steps=2)
    assert attr.shape == x.shape
    assert ep.last_explanation.masks.shape[1] == 2
    ref = mp.explain(net, x, target=0, method="extremal", areas=(0.1, 0.3), steps=2)
    assert torch.equal(attr[:, 0], ref.saliency)


def test_quantus_explain_func_shape_and_values():
    net, x = _net(), np.random.default_rng(0).standard_normal((2, 3, 20, 20)).astype(np.float32)
    f = as_quantus_explain_func("paper", steps=2)
    out = f(net, x, np.array([0, 1]), softmax=False)  # unknown Quantus keys are ignored
    assert out.shape == (2, 1, 20, 20) and out.dtype == np.float32
    ref = mp.explain(net, torch.from_numpy(x), target=torch.tensor([0, 1]), steps=2)
    np.testing.assert_array_equal(out[:, 0], ref.saliency.numpy())


def test_quantus_metric_runs():
    quantus = pytest.importorskip("quantus")
    net = _net()
    x = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1])
    metric = quantus.Sparseness(disable_warnings=True, display_progressbar=False)
    scores = metric(model=net, x_batch=x, y_batch=y, a_batch=None, device="cpu",
                    explain_func=as_quantus_explain_func("paper", steps=2))
    assert len(scores) == 2 and all(np.isfinite(scores))
