"""Metrics against values computed by hand on tiny maps and hand-set models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from meaningful_perturbation.core.perturbation import gaussian_blur
from meaningful_perturbation.errors import InputError
from meaningful_perturbation.metrics import (
    CurveResult,
    auroc,
    bootstrap_ci,
    box_iou,
    cascading_randomization,
    choose_alpha,
    deletion_game_box,
    deletion_insertion,
    distractor_mass,
    energy_in_box,
    energy_in_mask,
    minimal_area,
    parameter_layers,
    pointing_game,
    rank_accuracy,
    saliency_to_box,
    scaled_tolerance,
    spearman,
    threshold_saliency,
    weak_localisation,
)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def one_hot_map(h: int, w: int, pixels, n: int = 1) -> torch.Tensor:
    m = torch.zeros(n, h, w, dtype=torch.bool)
    for r, c in pixels:
        m[:, r, c] = True
    return m


# --------------------------------------------------------------------------- pointing game


def test_pointing_exact_and_tolerance_on_a_row():
    s = torch.zeros(1, 5, 5)
    s[0, 0, 0] = 1.0
    gt = one_hot_map(5, 5, [(0, 3)])  # distance 3 from the maximum
    assert pointing_game(s, gt, tolerance=0).accuracy == 0.0
    assert pointing_game(s, gt, tolerance=3.0).accuracy == 0.0  # strict <: d == tolerance misses
    assert pointing_game(s, gt, tolerance=3.001).accuracy == 1.0
    assert pointing_game(s, one_hot_map(5, 5, [(0, 0)]), tolerance=0).accuracy == 1.0


def test_pointing_uses_euclidean_distance_with_strict_boundary():
    s = torch.zeros(1, 5, 5)
    s[0, 0, 0] = 1.0
    gt = one_hot_map(5, 5, [(3, 4)])  # distance sqrt(9 + 16) = 5
    assert not pointing_game(s, gt, tolerance=5.0).hits.item()
    assert pointing_game(s, gt, tolerance=5.0 + 1e-9).hits.item()
    # Chebyshev 4 or Manhattan 7 would give different answers at tolerance 4.5.
    assert not pointing_game(s, gt, tolerance=4.5).hits.item()


def test_pointing_tie_break_is_first_in_raster_order():
    s = torch.zeros(1, 4, 4)
    s[0, 2, 1] = 1.0
    s[0, 1, 3] = 1.0  # same value, earlier in raster order
    res = pointing_game(s, one_hot_map(4, 4, [(1, 3)]), tolerance=0)
    assert res.points.tolist() == [[1, 3]]
    assert res.accuracy == 1.0
    assert pointing_game(s, one_hot_map(4, 4, [(2, 1)]), tolerance=0).accuracy == 0.0
    flat = pointing_game(torch.ones(1, 4, 4), one_hot_map(4, 4, [(0, 0)]), tolerance=0)
    assert flat.points.tolist() == [[0, 0]]


def test_pointing_per_class_average_and_empty_ground_truth():
    s = torch.zeros(5, 4, 4)
    s[:, 0, 0] = 1.0
    gt = torch.zeros(5, 4, 4, dtype=torch.bool)
    gt[0, 0, 0] = True  # class 0: hit
    gt[1, 3, 3] = True  # class 0: miss
    gt[2, 3, 3] = True  # class 0: miss
    gt[3, 0, 0] = True  # class 1: hit
    # image 4 (class 1) has no ground truth: not counted anywhere
    labels = torch.tensor([0, 0, 0, 1, 1])
    res = pointing_game(s, gt, tolerance=0, labels=labels)
    assert res.hits.tolist() == [True, False, False, True, False]
    assert res.valid.tolist() == [True, True, True, True, False]
    assert res.accuracy == pytest.approx(2 / 4)
    assert res.class_accuracy == pytest.approx({0: 1 / 3, 1: 1.0})
    assert res.mean_class_accuracy == pytest.approx((1 / 3 + 1) / 2)
    assert pointing_game(s, gt, tolerance=0).mean_class_accuracy is None


def test_scaled_tolerance():
    assert scaled_tolerance(224) == 15.0
    assert scaled_tolerance(112) == 7.5
    assert scaled_tolerance((448, 300)) == pytest.approx(15 * 300 / 224)
    assert scaled_tolerance(64, ref_px=7, ref_size=64) == 7.0


# ------------------------------------------------------------------ rank accuracy, AUROC, mass


def test_rank_accuracy_by_hand():
    s = torch.arange(16.0).view(1, 4, 4)  # top-3 pixels: raster 15, 14, 13
    gt = torch.zeros(1, 16, dtype=torch.bool)
    gt[0, [15, 12, 0]] = True
    assert rank_accuracy(s, gt.view(1, 4, 4)).item() == pytest.approx(1 / 3)
    gt2 = torch.zeros(1, 16, dtype=torch.bool)
    gt2[0, [15, 14]] = True
    assert rank_accuracy(s, gt2.view(1, 4, 4)).item() == 1.0


def test_rank_accuracy_ties_go_to_raster_order_and_empty_is_nan():
    s = torch.zeros(3, 4, 4)
    gt = torch.zeros(3, 16, dtype=torch.bool)
    gt[0, [14, 15]] = True  # top-2 by raster order are pixels 0 and 1
    gt[1, [0, 15]] = True
    out = rank_accuracy(s, gt.view(3, 4, 4))
    assert out[0].item() == 0.0
    assert out[1].item() == 0.5
    assert math.isnan(out[2].item())


def test_auroc_by_hand_with_ties():
    s = torch.tensor([[[3.0, 1.0], [1.0, 0.0]]])
    gt = torch.tensor([[[True, True], [False, False]]])
    # positive/negative pairs: 3>1, 3>0, 1=1 (1/2), 1>0  → 3.5 / 4
    assert auroc(s, gt).item() == pytest.approx(0.875)
    assert auroc(torch.ones(1, 2, 2), gt).item() == pytest.approx(0.5)
    assert auroc(-s, gt).item() == pytest.approx(0.125)
    assert math.isnan(auroc(s, torch.zeros(1, 2, 2, dtype=torch.bool)).item())
    assert math.isnan(auroc(s, torch.ones(1, 2, 2, dtype=torch.bool)).item())


def test_auroc_matches_pairwise_counting():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (3, 5, 5), generator=g).float()  # many ties
    gt = torch.rand(3, 5, 5, generator=g) > 0.6
    out = auroc(s, gt)
    for i in range(3):
        pos, neg = s[i][gt[i]], s[i][~gt[i]]
        diff = pos.view(-1, 1) - neg.view(1, -1)
        ref = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
        assert out[i].item() == pytest.approx(ref.item())


def test_distractor_mass_by_hand():
    s = torch.tensor([[[1.0, 3.0], [2.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]]])
    d = torch.tensor([[[False, False], [True, True]]] * 2)
    out = distractor_mass(s, d)  # s - min = [[0, 2], [1, 0]] → 1 / 3; constant map → 0
    assert out.tolist() == pytest.approx([1 / 3, 0.0])
    assert distractor_mass(s, torch.zeros(2, 2, 2, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_energy_in_box_and_mask():
    s = torch.tensor([[[1.0, 1.0, 0.0], [2.0, -5.0, 0.0]]])
    # box (x0, y0, x1, y1) = columns 0..0, rows 0..1 → (1 + 2) / (1 + 1 + 2)
    assert energy_in_box(s, torch.tensor([[0, 0, 1, 2]])).item() == pytest.approx(0.75)
    assert energy_in_box(s, torch.tensor([[0, 0, 3, 2]])).item() == pytest.approx(1.0)
    assert energy_in_box(s, torch.tensor([[1, 1, 3, 2]])).item() == 0.0
    mask = torch.tensor([[[False, True, False], [True, False, False]]])
    assert energy_in_mask(s, mask).item() == pytest.approx(0.75)
    assert energy_in_mask(-torch.ones(1, 2, 3), mask).item() == 0.0


# ------------------------------------------------------------------ deletion / insertion


class RegionSum(nn.Module):
    """Logit 0 = ``w · Σ_{c, u∈R} x_c(u) + b``, logit 1 = 0, so ``p_0 = σ(w·Σ_R x + b)``."""

    def __init__(self, region: torch.Tensor, w: float = 0.5, b: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.w * (x * self.region).sum(dim=(1, 2, 3)) + self.b
        return torch.stack([z, torch.zeros_like(z)], dim=1)


LEFT = torch.zeros(4, 4)
LEFT[:, :2] = 1.0  # R = left half of a 4×4 image (8 pixels)


def left_first_saliency() -> torch.Tensor:
    """Column-major ranking: the 8 pixels of R come first."""
    return torch.tensor([[16 - (c * 4 + r) for c in range(4)] for r in range(4)], dtype=torch.float32).unsqueeze(0)


def test_deletion_curve_and_auc_by_hand():
    model = RegionSum(LEFT)  # one channel, x = 1: logit = 0.5 · (pixels of R left)
    x = torch.ones(1, 1, 4, 4)
    r = deletion_insertion(model, x, left_first_saliency(), torch.tensor([0]), steps=4)
    assert isinstance(r, CurveResult)
    expected = [sigmoid(4), sigmoid(2), 0.5, 0.5, 0.5]  # R pixels left: 8, 4, 0, 0, 0
    assert r.curve.shape == (1, 5)
    assert r.curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert r.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    auc = 0.25 * (expected[0] / 2 + expected[1] + expected[2] + expected[3] + expected[4] / 2)
    assert r.auc.item() == pytest.approx(auc, abs=1e-6)


def test_deletion_replaces_all_channels_and_breaks_ties_in_raster_order():
    model = RegionSum(LEFT)
    x = torch.ones(1, 3, 4, 4)  # 3 channels: R holds 24 units
    r = deletion_insertion(model, x, torch.zeros(1, 4, 4), 0, steps=4)
    # Raster order removes one row per step, 2 R pixels × 3 channels each: Σ_R = 24, 18, 12, 6, 0.
    assert r.curve[0].tolist() == pytest.approx([sigmoid(12), sigmoid(9), sigmoid(6), sigmoid(3), 0.5], abs=1e-6)


def test_insertion_curve_by_hand_and_batch_size_invariance():
    model = RegionSum(LEFT)
    x = torch.ones(2, 1, 4, 4)
    sal = torch.cat([left_first_saliency(), -left_first_saliency()])  # image 1: R last
    r = deletion_insertion(model, x, sal, torch.tensor([0, 0]), mode="insertion", substrate="zero", steps=4)
    assert r.curve[0].tolist() == pytest.approx([0.5, sigmoid(2), sigmoid(4), sigmoid(4), sigmoid(4)], abs=1e-6)
    assert r.curve[1].tolist() == pytest.approx([0.5, 0.5, 0.5, sigmoid(2), sigmoid(4)], abs=1e-6)
    assert r.auc[0] > r.auc[1]
    kw = dict(mode="insertion", substrate="zero", steps=4)
    r1 = deletion_insertion(model, x, sal, torch.tensor([0, 0]), batch_size=1, **kw)
    assert torch.equal(r.curve, r1.curve)


def test_target_forms_agree():
    model = RegionSum(LEFT)
    x = torch.rand(2, 1, 4, 4)
    sal = torch.rand(2, 4, 4)
    ref = deletion_insertion(model, x, sal, torch.tensor([1, 1]), steps=4).curve
    for target in (1, torch.tensor(1), [1, 1], np.array([1, 1]), list(np.array([1, 1]))):
        assert torch.equal(deletion_insertion(model, x, sal, target, steps=4).curve, ref)


def test_blur_substrate_of_a_constant_image_changes_nothing():
    model = RegionSum(LEFT, w=0.1)
    x = torch.full((1, 2, 4, 4), 0.7)
    r = deletion_insertion(model, x, torch.rand(1, 4, 4), 0, mode="insertion", steps=8)  # default: blur
    assert torch.allclose(r.curve, r.curve[:, :1].expand_as(r.curve), atol=1e-6)
    x2 = torch.randn(1, 1, 4, 4)
    r2 = deletion_insertion(model, x2, torch.rand(1, 4, 4), 0, mode="insertion", steps=1, blur_sigma=1.0)
    blurred = gaussian_blur(x2, 1.0)
    p_start = torch.softmax(model(blurred), dim=1)[0, 0].item()
    assert r2.curve[0, 0].item() == pytest.approx(p_start, abs=1e-6)


def test_step_size_grid():
    model = RegionSum(LEFT)
    x = torch.ones(1, 1, 4, 4)
    a = deletion_insertion(model, x, left_first_saliency(), 0, step_size=0.25)
    b = deletion_insertion(model, x, left_first_saliency(), 0, steps=4)
    assert torch.equal(a.curve, b.curve)
    c = deletion_insertion(model, x, left_first_saliency(), 0, step_size=0.3)  # 5 pixels per step
    assert c.fractions.tolist() == pytest.approx([0, 5 / 16, 10 / 16, 15 / 16, 1.0])
    # R pixels left after removing 0, 5, 10, 15, 16 pixels (R first): 8, 3, 0, 0, 0
    assert c.curve[0].tolist() == pytest.approx([sigmoid(4), sigmoid(1.5), 0.5, 0.5, 0.5], abs=1e-6)


def test_minimal_area_by_hand():
    x = torch.ones(1, 1, 4, 4)
    sal = left_first_saliency()
    model = RegionSum(LEFT)  # inserted R pixels 0, 4, 8, 8, 8 → p = .5, σ(2), σ(4), σ(4), σ(4)
    kw = dict(substrate="zero", steps=4)
    # 0.9·σ(4) = 0.8838 > σ(2) = 0.8808: half the image is needed; at 0.8 a quarter suffices.
    assert minimal_area(model, x, sal, 0, threshold=0.9, **kw).item() == 0.5
    assert minimal_area(model, x, sal, 0, threshold=0.8, **kw).item() == 0.25
    # Deleting never brings σ(·) below 0.5 here: no destroying fraction on the grid.
    assert math.isinf(minimal_area(model, x, sal, 0, kind="destroying", **kw).item())
    strong = RegionSum(LEFT, w=2.0, b=-8.0)  # deleted 0, 4, 8 R pixels → logit 8, 0, -8
    assert minimal_area(strong, x, sal, 0, kind="destroying", **kw).item() == 0.5
    # removing 49 % (p ≤ 0.51·σ(8) = 0.5098) is reached by σ(0) = 0.5 after a quarter
    assert minimal_area(strong, x, sal, 0, kind="destroying", threshold=0.49, **kw).item() == 0.25


# ------------------------------------------------------------------ weak localisation


def test_value_threshold_boxes():
    s = torch.zeros(1, 5, 5)
    s[0, 1:3, 2:4] = 1.0
    s[0, 4, 0] = 0.4
    assert saliency_to_box(s, "value", 0.5).tolist() == [[2, 1, 4, 3]]
    assert saliency_to_box(s, "value", 0.3).tolist() == [[0, 1, 4, 5]]
    assert saliency_to_box(s, "value", 0.3, component="largest").tolist() == [[2, 1, 4, 3]]


DIAG = torch.zeros(1, 4, 4)
for _i, _v in enumerate([4.0, 3.0, 2.0, 1.0]):
    DIAG[0, _i, _i] = _v  # total energy 10, mean 10/16


@pytest.mark.parametrize(
    "alpha, box",
    [
        (0.0, [0, 0, 1, 1]),
        (0.4, [0, 0, 1, 1]),
        (0.5, [0, 0, 2, 2]),
        (0.7, [0, 0, 2, 2]),
        (0.71, [0, 0, 3, 3]),
        (1.0, [0, 0, 4, 4]),
    ],
)
def test_energy_threshold_boxes(alpha, box):
    # cumulative energy of the sorted pixels: 4, 7, 9, 10
    assert saliency_to_box(DIAG, "energy", alpha).tolist() == [box]


@pytest.mark.parametrize(
    "alpha, box", [(2.0, [0, 0, 3, 3]), (4.0, [0, 0, 2, 2]), (6.0, [0, 0, 1, 1]), (7.0, [0, 0, 0, 0])]
)
def test_mean_threshold_boxes(alpha, box):
    # keep s >= alpha · 0.625
    assert saliency_to_box(DIAG, "mean", alpha).tolist() == [box]


def test_threshold_ties_are_kept_together():
    s = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert threshold_saliency(s, "energy", 0.1).tolist() == [[[True, True], [False, False]]]


def test_box_iou_by_hand():
    a = torch.tensor([0, 0, 2, 2])
    assert box_iou(a, torch.tensor([1, 0, 3, 2])).item() == pytest.approx(1 / 3)
    assert box_iou(a, a).item() == 1.0
    assert box_iou(a, torch.tensor([2, 2, 4, 4])).item() == 0.0  # touching corners
    assert box_iou(torch.zeros(4), torch.zeros(4)).item() == 0.0
    a2 = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4]])
    b2 = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2]])
    pair = box_iou(a2[:, None], b2[None])
    assert pair.flatten().tolist() == pytest.approx([0.25, 1.0, 1 / 16, 0.25])


def test_weak_localisation_and_choose_alpha():
    s = torch.zeros(2, 8, 8)
    s[:, 2:6, 2:6] = 0.6
    s[:, 3:5, 3:5] = 1.0  # a bright core inside a 4×4 object
    gt = [torch.tensor([[2, 2, 6, 6]]), torch.tensor([[0, 0, 1, 1], [2, 2, 6, 6]])]
    # α = 0.5 keeps the object (IoU 1); α = 0.8 keeps only the core (IoU 4/16 < 0.5)
    assert weak_localisation(s, gt, method="value", alpha=0.5).tolist() == [True, True]
    assert weak_localisation(s, gt, method="value", alpha=0.8).tolist() == [False, False]
    assert choose_alpha(s, gt, method="value", alphas=[0.9, 0.8, 0.5, 0.3]) == 0.5
    assert choose_alpha(s, gt, method="value") == 0.05  # first α of the 2017 grid that works
    assert weak_localisation(s, [torch.zeros(0, 4), gt[0]], alpha=0.5).tolist() == [False, True]


# ------------------------------------------------------------------ deletion game


class RegionMean(nn.Module):
    """Logit 0 = ``10 · mean_{u∈R} x(u) − 5`` (channel 0), logit 1 = 0: evidence only in R."""

    def __init__(self, region: torch.Tensor, gain: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("region", region.float() / region.sum())
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gain * (x[:, 0] * self.region).sum(dim=(1, 2)) - 5.0
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def square_scene():
    region = torch.zeros(12, 12)
    region[2:6, 3:7] = 1.0  # rows 2..5, cols 3..6: box (3, 2, 7, 6), area 16
    x = region.view(1, 1, 12, 12).clone()
    return RegionMean(region), x, region


def test_deletion_game_box_covering_the_evidence():
    model, x, region = square_scene()
    out = deletion_game_box(model, x, region.unsqueeze(0), 0, blur_sigma=2.0, suppression="relative-to-blur")
    assert sorted(out) == [0.8, 0.9, 0.95, 0.99]
    for level in out:  # blurring the box around R is exactly blurring the whole image for R
        assert out[level].tolist() == [16.0]
    wrong = torch.zeros(1, 12, 12)
    wrong[0, 8:10, 8:10] = 1.0
    out_wrong = deletion_game_box(model, x, wrong, 0, blur_sigma=2.0, suppression="relative-to-blur")
    assert out_wrong[0.99].tolist() == [144.0]  # only the t = 0 box (whole image) works
    assert math.isinf(deletion_game_box(model, x, wrong, 0, thresholds=[0.5], blur_sigma=2.0,
                                        suppression="relative-to-blur")[0.8].item())


def test_deletion_game_box_picks_the_smallest_box_per_level():
    model, x, region = square_scene()
    sal = torch.zeros(1, 12, 12)
    for k, c in enumerate(range(3, 7)):
        sal[0, 2:6, c] = k + 1.0  # thresholds cut R from the left: 4, 3, 2, 1 columns kept
    blurred = gaussian_blur(x, 2.0)

    def prob(img):
        return torch.softmax(model(img), dim=1)[0, 0].item()

    p_clean, p_blur = prob(x), prob(blurred)
    supp, areas = [], []
    for kept in range(1, 5):  # box = the rightmost `kept` columns of R
        inside = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
        inside[..., 2:6, 7 - kept : 7] = True
        p = prob(torch.where(inside, blurred, x))
        supp.append(1 - (p - p_blur) / (p_clean - p_blur))
        areas.append(4.0 * kept)
    levels = (0.1, 0.3, 0.99)
    out = deletion_game_box(model, x, sal, 0, blur_sigma=2.0, levels=levels, suppression="relative-to-blur")
    for level in levels:
        expected = min([a for a, s_ in zip(areas, supp) if s_ >= level], default=144.0)
        assert out[level].item() == expected
    # suppression by 1..4 blurred columns of R: ≈ 0.04, 0.16, 0.50, 1.0
    assert [out[level].item() for level in levels] == [8.0, 12.0, 16.0]


def test_deletion_game_box_is_nan_when_blur_does_not_lower_the_score():
    _, x, region = square_scene()
    flat = RegionMean(region, gain=0.0)  # constant probability
    assert math.isnan(deletion_game_box(flat, x, region.unsqueeze(0), 0, suppression="relative-to-blur")[0.99].item())
    # the paper's definition: a constant probability is never suppressed (not reached)
    assert math.isinf(deletion_game_box(flat, x, region.unsqueeze(0), 0)[0.99].item())


# ------------------------------------------------------------------ sanity


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 6), generator=g).float()
    b = a + torch.randint(0, 3, (4, 6, 6), generator=g).float()
    out = spearman(a, b)
    for i in range(4):
        ref = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert out[i].item() == pytest.approx(ref, abs=1e-12)
    assert math.isnan(spearman(torch.ones(1, 3, 3), a[:1, :3, :3]).item())


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target.view(-1, 1)).sum().backward()
    return x.grad.abs().sum(dim=1)


def test_cascading_randomization_correlation_falls_and_model_is_untouched():
    model = small_cnn()
    model.train(False)
    model[0].weight.requires_grad_(False)  # a flag the check must leave as found
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 0])

    res = cascading_randomization(model, input_gradient, x, target, seed=0)
    assert res.layer_names == ["6", "2", "0"] == parameter_layers(model)
    assert res.spearman.shape == (3, 4)
    assert res.spearman[-1].mean().item() < 0.3  # fully randomised: little rank agreement
    assert res.spearman[-1].abs().max().item() < 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    again = cascading_randomization(model, input_gradient, x, target, seed=0)
    assert torch.equal(res.spearman, again.spearman)


def test_cascading_randomization_flags_a_model_independent_explainer():
    def edge_detector(model, x, target):
        return x.abs().sum(dim=1)  # ignores the model

    res = cascading_randomization(small_cnn(), edge_detector, torch.randn(2, 3, 8, 8), 0, layers=["6"])
    assert res.layer_names == ["6"]
    assert torch.allclose(res.spearman, torch.ones(1, 2, dtype=torch.float64))


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_ci():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    v = torch.tensor([0.0, 1.0] * 20 + [float("nan")])
    mean, lo, hi = bootstrap_ci(v, n_boot=500, seed=3)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.5
    assert bootstrap_ci(v, n_boot=500, seed=3) == (mean, lo, hi)
    assert bootstrap_ci(np.array([True, False, True])) [0] == pytest.approx(2 / 3)
    assert all(math.isnan(t) for t in bootstrap_ci([float("nan")]))


# ------------------------------------------------------------------ bad inputs

S = torch.rand(2, 4, 4)
GT = torch.rand(2, 4, 4) > 0.5
X = torch.rand(2, 1, 4, 4)
M = RegionSum(LEFT)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: pointing_game(S[0], GT), "saliency"),
        (lambda: pointing_game(S, GT[:1]), "gt"),
        (lambda: pointing_game(S, GT, tolerance=-1), "tolerance"),
        (lambda: pointing_game(S, GT, labels=torch.tensor([0])), "labels"),
        (lambda: pointing_game(S.long(), GT), "saliency"),
        (lambda: rank_accuracy(S * float("nan"), GT), "saliency"),
        (lambda: auroc(S, torch.full((2, 4, 4), 2)), "gt"),
        (lambda: distractor_mass(S, None), "distractors"),
        (lambda: energy_in_box(S, torch.tensor([[0, 0, 1, 1]])), "boxes"),
        (lambda: energy_in_box(S, torch.tensor([[2, 0, 1, 1]] * 2)), "boxes"),
        (lambda: deletion_insertion(M, X, S[:1], 0), "saliency"),
        (lambda: deletion_insertion(M, X[0], S, 0), "x"),
        (lambda: deletion_insertion(M, X, S, torch.tensor([0])), "target"),
        (lambda: deletion_insertion(M, X, S, 0.5), "target"),
        (lambda: deletion_insertion(M, X, S, 5), "target"),
        (lambda: deletion_insertion(M, X, S, 0, mode="delete"), "mode"),
        (lambda: deletion_insertion(M, X, S, 0, substrate="noise"), "substrate"),
        (lambda: deletion_insertion(M, X, S, 0, substrate="blur", blur_sigma=0), "blur_sigma"),
        (lambda: deletion_insertion(M, X, S, 0, steps=0), "steps"),
        (lambda: deletion_insertion(M, X, S, 0, steps=4, step_size=0.1), "steps"),
        (lambda: deletion_insertion(M, X, S, 0, step_size=1.5), "step_size"),
        (lambda: deletion_insertion(M, X, S, 0, batch_size=0), "batch_size"),
        (lambda: deletion_insertion("model", X, S, 0), "model"),
        (lambda: minimal_area(M, X, S, 0, kind="both"), "kind"),
        (lambda: minimal_area(M, X, S, 0, threshold=0), "threshold"),
        (lambda: saliency_to_box(S, "median", 0.5), "method"),
        (lambda: saliency_to_box(S, "value", 1.5), "alpha"),
        (lambda: saliency_to_box(S, "value", 0.5, component="biggest"), "component"),
        (lambda: box_iou(torch.zeros(3), torch.zeros(4)), "boxes_a"),
        (lambda: weak_localisation(S, [torch.zeros(1, 4)]), "gt_boxes"),
        (lambda: weak_localisation(S, [torch.zeros(1, 4), torch.zeros(3)]), "gt_boxes[1]"),
        (lambda: choose_alpha(S, [torch.zeros(1, 4)] * 2, alphas=[]), "alphas"),
        (lambda: deletion_game_box(M, X, S, 0, levels=(0, 0.5)), "levels"),
        (lambda: deletion_game_box(M, X, S, 0, thresholds=[2.0]), "thresholds"),
        (lambda: cascading_randomization(lambda z: z, input_gradient, X, 0), "model"),
        (lambda: cascading_randomization(small_cnn(), input_gradient, X, 0, layers=["nope"]), "layers"),
        (lambda: spearman(S, S[:1]), "b"),
        (lambda: bootstrap_ci([1.0], alpha=1.0), "alpha"),
        (lambda: bootstrap_ci([1.0], n_boot=0), "n_boot"),
        (lambda: scaled_tolerance("224"), "size"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value).startswith(name + ":"), str(info.value)
