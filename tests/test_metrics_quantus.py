"""Cross-check against Quantus 0.6 where it implements the same metric.

Conventions that differ (and how the inputs below are chosen so both must agree):

* Quantus takes numpy arrays, channel first: attributions and segmentations as
  ``(N, 1, H, W)``; ours are ``(N, H, W)``. Its default ``normalise=True`` (divide by the
  max) and ``abs`` are switched off so both see the same values.
* ``PointingGame``: Quantus plays the exact game (no tolerance) and counts a hit when
  *any* of several tied maxima lies on the object; ours takes the first maximum in raster
  order. With ``tolerance=0`` and maps without ties the two are equal; the tie case is
  shown below.
* ``RelevanceRankAccuracy``: same definition; Quantus sorts with numpy's unstable sort,
  so maps without ties are used.
* ``PixelFlipping``: its curve is our deletion curve without the first (clean) point,
  when its baseline is 0 (our ``substrate="zero"``) and ``features_in_step = C·H·W/S``
  (it counts features = channels × pixels; all channels of a pixel share one saliency
  value, so they are adjacent in its ordering and a step of ``C·k`` features removes ``k``
  whole pixels; Quantus also requires ``H·W`` to be a multiple of ``features_in_step``).
  Its AUC is ``trapz(curve[1:], dx=1)``; ours is over the fraction axis ``[0, 1]``
  including the clean point, i.e. ``(quantus_auc + (c₀ + c₁)/2) / S``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

quantus = pytest.importorskip("quantus")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # quantus calls np.trapz

from meaningful_perturbation.metrics import deletion_insertion, pointing_game, rank_accuracy  # noqa: E402

N, C, H, W = 6, 3, 12, 12
QUIET = dict(disable_warnings=True, return_aggregate=False, normalise=False, abs=False)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, C, H, W, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a = torch.rand(N, H, W, generator=g)  # continuous: no ties
    s = torch.rand(N, H, W, generator=g) > 0.7
    s[:, 0, 0] = True  # every segmentation non-empty
    # make some maxima hit: put the maximum of image 1 and 3 inside the object
    for i in (1, 3):
        r, c = torch.nonzero(s[i])[-1].tolist()
        a[i, r, c] = 2.0
    return model, x, y, a, s


def _np(model, x, y, a, s=None):
    out = dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy()[:, None], device="cpu")
    if s is not None:
        out["s_batch"] = s.numpy()[:, None].astype(np.float32)
    return out


def test_pointing_game_matches_quantus_exact_game(data):
    model, x, y, a, s = data
    theirs = quantus.PointingGame(**QUIET)(**_np(model, x, y, a, s))
    ours = pointing_game(a, s, tolerance=0).hits
    assert [bool(v) for v in theirs] == ours.tolist()
    assert any(ours.tolist()) and not all(ours.tolist())


def test_pointing_game_tie_convention_differs_from_quantus(data):
    model, x, y, _, _ = data
    a = torch.zeros(N, H, W)
    a[:, 0, 0] = 1.0  # outside the object, first in raster order
    a[:, 5, 5] = 1.0  # tied maximum inside the object
    s = torch.zeros(N, H, W, dtype=torch.bool)
    s[:, 5, 5] = True
    theirs = quantus.PointingGame(**QUIET)(**_np(model, x, y, a, s))
    assert all(bool(v) for v in theirs)  # Quantus: any tied maximum on the object
    assert not pointing_game(a, s, tolerance=0).hits.any()  # ours: first maximum only


def test_rank_accuracy_matches_quantus(data):
    model, x, y, a, s = data
    theirs = quantus.RelevanceRankAccuracy(**QUIET)(**_np(model, x, y, a, s))
    ours = rank_accuracy(a, s)
    np.testing.assert_allclose(np.asarray(theirs, dtype=np.float64), ours.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [12, 48])
def test_pixel_flipping_is_our_deletion_curve(data, steps):
    model, x, y, a, _ = data
    per_step = C * H * W // steps
    metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline=0.0, **QUIET)
    theirs = np.asarray(metric(**_np(model, x, y, a)), dtype=np.float64)
    ours = deletion_insertion(model, x, a, y, mode="deletion", substrate="zero", steps=steps)
    assert theirs.shape == (N, steps)
    np.testing.assert_allclose(theirs, ours.curve[:, 1:].double().numpy(), rtol=0, atol=1e-6)

    auc_metric = quantus.PixelFlipping(
        features_in_step=per_step, perturb_baseline=0.0, return_auc_per_sample=True, **QUIET
    )
    their_auc = np.asarray(auc_metric(**_np(model, x, y, a)), dtype=np.float64)
    c = ours.curve.double().numpy()
    np.testing.assert_allclose((their_auc + (c[:, 0] + c[:, 1]) / 2) / steps, ours.auc.numpy(), rtol=0, atol=1e-6)
