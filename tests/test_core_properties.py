"""Invariants of the building blocks: blend, masks, TV, gradients."""

import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation.core.mask import UpsampledMask
from meaningful_perturbation.core.objective import l1_term, tv_term
from meaningful_perturbation.core.perturbation import (
    blend,
    blur_levels,
    constant_levels,
    gaussian_blur,
    median_blur,
    shift,
)


@pytest.mark.parametrize("L", [2, 3, 8])
def test_blend_endpoints(L):
    x = torch.randn(2, 3, 17, 19)
    levels = blur_levels(x, 3.0, L)
    ones = torch.ones(2, 1, 1, 17, 19)
    assert torch.equal(blend(levels, ones)[:, 0], x)
    assert torch.allclose(blend(levels, torch.zeros_like(ones))[:, 0], levels[:, 0])
    assert torch.allclose(levels[:, 0], gaussian_blur(x, 3.0))


def test_blend_is_linear_between_levels():
    x = torch.randn(1, 3, 8, 8)
    levels = blur_levels(x, 2.0, 5)  # levels at m = 0, .25, .5, .75, 1
    m = torch.full((1, 1, 1, 8, 8), 0.375)  # halfway between levels 1 and 2
    expected = 0.5 * (levels[:, 1] + levels[:, 2])
    assert torch.allclose(blend(levels, m)[:, 0], expected, atol=1e-6)


def test_blend_several_masks_per_image():
    x = torch.randn(2, 3, 6, 6)
    levels = constant_levels(x)
    m = torch.rand(2, 3, 1, 6, 6)
    out = blend(levels, m)
    assert out.shape == (2, 3, 3, 6, 6)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(out[1, 2], m[1, 2] * x[1] + (1 - m[1, 2]) * mean[1], atol=1e-6)


def test_gaussian_blur_preserves_constants_and_sums_to_one():
    c = torch.full((1, 2, 12, 12), 0.7)
    assert torch.allclose(gaussian_blur(c, 2.5), c)
    assert torch.allclose(gaussian_blur(c, 9.0), c)  # kernel larger than the image
    x = torch.rand(1, 1, 40, 40)
    y = gaussian_blur(x, 1.5)
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6
    assert abs(float(y.mean() - x.mean())) < 0.02


def test_median_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randint(0, 256, (1, 3, 20, 23)).float()
    ours = median_blur(x, 5)
    ref = torch.from_numpy(ndimage.median_filter(x.numpy(), size=(1, 1, 5, 5), mode="nearest"))
    assert torch.equal(ours, ref)


def test_shift_translates_with_replicated_border():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = shift(x, 1, 2)
    assert y[0, 0, 1, 2] == x[0, 0, 0, 0]
    assert y[0, 0, 3, 3] == x[0, 0, 2, 1]
    assert y[0, 0, 0, 0] == x[0, 0, 0, 0]  # replicated border
    assert torch.equal(shift(shift(x, 0, 0), 0, 0), x)


def test_masks_stay_in_unit_interval():
    mask = UpsampledMask((5, 6), (37, 41), blur_sigma=2.0)
    theta = torch.rand(3, 2, 1, 5, 6)
    grid, full = mask(theta)
    assert full.shape == (3, 2, 1, 37, 41)
    assert full.min() >= 0 and full.max() <= 1
    ones = mask(torch.ones(1, 1, 1, 5, 6))[1]
    assert torch.allclose(ones, torch.ones_like(ones))


def test_tv_of_constant_mask_is_zero_and_positive_otherwise():
    const = torch.full((2, 1, 1, 7, 7), 0.3)
    assert torch.all(tv_term(const, 3.0) == 0)
    assert torch.all(tv_term(const, 2.0, isotropic=False) == 0)
    step = torch.zeros(1, 1, 1, 4, 4)
    step[..., :, 2:] = 1
    # isotropic sum over the 3×3 cells with both differences: the column 1→2 jump, 3 rows.
    assert torch.allclose(tv_term(step, 3.0, reduction="sum"), torch.tensor([[3.0]]))
    # anisotropic means: |Δx| is 1 on 4 of 12 pairs, Δy is 0.
    assert torch.allclose(tv_term(step, 3.0, isotropic=False), torch.tensor([[4 / 12]]))


def test_l1_term():
    m = torch.tensor([0.0, 0.5, 1.0, 1.0]).view(1, 1, 1, 2, 2)
    assert torch.allclose(l1_term(m, 1.0), torch.tensor([[1.5 / 4]]))
    assert torch.allclose(l1_term(m, 0.0), torch.tensor([[2.5 / 4]]))


def test_gradcheck_blend_float64():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    levels = blur_levels(x, 1.5, 4).requires_grad_(True)
    # Keep mask values away from the level boundaries (where blend has kinks).
    m = (torch.rand(1, 2, 1, 5, 5, dtype=torch.float64) * 0.28 + 0.02 + 0.33 * torch.randint(0, 3, (1, 2, 1, 5, 5))).requires_grad_(True)
    assert torch.autograd.gradcheck(blend, (levels, m), eps=1e-6, atol=1e-5)


def test_gradcheck_mask_parameterisation_float64():
    mask = UpsampledMask((3, 4), (11, 13), blur_sigma=1.5)
    theta = torch.rand(2, 1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mask(t)[1], (theta,), eps=1e-6, atol=1e-5)
    seedlike = UpsampledMask((3, 3), (8, 8), align_corners=True)
    assert torch.autograd.gradcheck(lambda t: seedlike(t)[1], (theta[:, :, :, :, :3],), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_isotropic_tv_hand_backward_equals_autograd(beta, reduction):
    """The hand-written backward of the isotropic TV gives autograd's gradient of the same
    formula, flat regions (g = 0, clamped for beta < 2) included."""
    torch.manual_seed(0)
    grid = torch.rand(2, 3, 1, 7, 9, dtype=torch.float64)
    grid[0, 0, 0, :3, :3] = 0.5
    w = torch.randn(2, 3, dtype=torch.float64)

    def formula(t):
        dy = t[..., 1:, :] - t[..., :-1, :]
        dx = t[..., :, 1:] - t[..., :, :-1]
        g = dy[..., :, :-1] ** 2 + dx[..., :-1, :] ** 2
        v = g.clamp_min(1e-12) ** (beta / 2) if beta < 2 else g ** (beta / 2)
        return v.mean(dim=(-3, -2, -1)) if reduction == "mean" else v.sum(dim=(-3, -2, -1))

    a, b = grid.clone().requires_grad_(True), grid.clone().requires_grad_(True)
    va, vb = tv_term(a, beta, reduction=reduction), formula(b)
    torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)
    (va * w).sum().backward()
    (vb * w).sum().backward()
    assert b.grad.abs().max() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_tv_float64():
    g = torch.rand(1, 1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tv_term(t, 3.0), (g,))
    assert torch.autograd.gradcheck(lambda t: tv_term(t, 3.0, isotropic=False), (g,))


@pytest.mark.parametrize("method", ["paper", "seed", "extremal"])
def test_masks_stay_in_the_unit_interval_exactly(method):
    # Upsampling + blur of θ ∈ [0, 1] used to overshoot 1 by float rounding (1.0000002).
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))
    x = torch.randn(2, 3, 50, 33, generator=torch.Generator().manual_seed(0))
    ex = mp.explain(net, x, method=method, steps=3)
    assert ex.masks.min() >= 0 and ex.masks.max() <= 1
    if method != "extremal":
        assert ex.saliency.min() >= 0 and ex.saliency.max() <= 1
