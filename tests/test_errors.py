"""Bad input: each a clear error of the project's own type naming the argument."""

import pytest
import torch
import torch.nn as nn

import meaningful_perturbation as mp
from meaningful_perturbation import ConfigError, InputError, MeaningfulPerturbationError, ModelError


def _model(classes=4):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


X = torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize(
    "x,pattern",
    [
        (torch.randn(3, 16, 16), r"x: expected 4 dimensions .*unsqueeze"),
        (torch.randn(2, 3, 16), r"x: expected 4 dimensions"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"x: expected a floating-point tensor.*uint8"),
        (torch.randn(0, 3, 16, 16), r"x: empty batch"),
        ([[1.0]], r"x: expected a torch.Tensor"),
    ],
)
def test_bad_x(x, pattern):
    with pytest.raises(InputError, match=pattern):
        mp.explain(_model(), x, steps=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x(bad):
    x = X.clone()
    x[0, 1, 2, 3] = bad
    with pytest.raises(InputError, match="x: contains NaN or inf"):
        mp.explain(_model(), x, steps=1)


@pytest.mark.parametrize(
    "target,pattern",
    [
        (7, r"target: class 7 is out of range for a model with 4 classes"),
        (-1, r"target: class -1 is out of range"),
        (torch.tensor([0, 1, 2]), r"target: expected 2 entries"),
        (torch.tensor([0.5, 1.0]), r"target: expected an integer tensor"),
        ([[0], []], r"target: each class list must hold at least one int"),
        ("cat", r"target: expected None, an int"),
    ],
)
def test_bad_target(target, pattern):
    with pytest.raises(InputError, match=pattern):
        mp.explain(_model(), X, target=target, steps=1)


def test_unknown_method_and_override():
    with pytest.raises(ConfigError, match=r"method: unknown method 'nope'; valid methods: paper, paper-loc, seed, extremal, extremal-fast, .*gradient"):
        mp.explain(_model(), X, method="nope")
    with pytest.raises(ConfigError, match=r"'stepz': not a setting of method 'paper'; valid settings: steps, lr"):
        mp.explain(_model(), X, stepz=3)
    with pytest.raises(ConfigError, match=r"game: expected one of 'delete', 'preserve', got 'dual'"):
        mp.explain(_model(), X, game="dual")
    with pytest.raises(ConfigError, match=r"steps: expected a value >= 1, got 0"):
        mp.explain(_model(), X, steps=0)
    with pytest.raises(ConfigError, match=r"median_size: expected an odd window size, got 4"):
        mp.explain(_model(), X, method="seed", median_size=4)


class _WrongShape(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)  # (N, H, W)


class _NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x.mean(dim=(2, 3))) * float("nan")


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x.detach().mean(dim=(2, 3)))


class _Raises(nn.Module):
    def forward(self, x):
        raise ValueError("expects 1 channel")


def test_model_output_wrong_shape():
    with pytest.raises(ModelError, match=r"expected shape \(2, classes\).*got \(2, 16, 16\)"):
        mp.explain(_WrongShape(), X, steps=1)


def test_model_output_nan():
    with pytest.raises(ModelError, match="NaN or inf"):
        mp.explain(_NaN(), X, steps=1)


def test_model_without_gradient_path():
    with pytest.raises(ModelError, match="no gradient path to its input"):
        mp.explain(_Detached(), X, steps=1, init="ones")


def test_model_that_fails_on_clean_input():
    with pytest.raises(ModelError, match=r"model: calling it on x of shape \(2, 3, 16, 16\) failed with ValueError: expects 1 channel"):
        mp.explain(_Raises(), X, steps=1)


def test_errors_share_one_family():
    for cls in (InputError, ConfigError, ModelError):
        assert issubclass(cls, MeaningfulPerturbationError)
    assert issubclass(InputError, ValueError)


def test_load_rejects_non_explanation(tmp_path):
    p = tmp_path / "x.npz"
    import numpy as np

    np.savez(p, a=np.zeros(3))
    with pytest.raises(InputError, match="not an explanation"):
        mp.Explanation.load(p)
    with pytest.raises(InputError, match="no explanation file"):
        mp.Explanation.load(tmp_path / "missing.npz")
