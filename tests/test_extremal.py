"""`extremal`: smooth-max masks, the area constraint, games, batching, oracles."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import meaningful_perturbation as mp
from meaningful_perturbation import ConfigError
from meaningful_perturbation.core.smoothmax import SmoothMaxMask, smooth_max_kernel
from meaningful_perturbation.methods.extremal import area_term
from oracles import TextureOracle, region_masks, textured_image

BOXES = [(0.1, 0.1, 0.4, 0.4), (0.1, 0.6, 0.4, 0.9), (0.6, 0.1, 0.9, 0.4), (0.6, 0.6, 0.9, 0.9)]


def _transcribed_mask(theta, sm: SmoothMaxMask):
    """The definition in core/smoothmax.py written out with loops (float64)."""
    h, w = sm.grid_size  # no free parameters outside the image
    H, W = sm.image_size
    sy, sx = sm.spacing
    R, T = sm.radius, sm.temperature
    lat = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            vals = []
            for di in range(-R, R + 1):
                for dj in range(-R, R + 1):
                    ii, jj = i + di, j + dj
                    # beyond the lattice: its border values repeated (replicate padding)
                    v = float(theta[min(max(ii, 0), h - 1), min(max(jj, 0), w - 1)])
                    z = math.hypot(di * sy, dj * sx) / sm.sigma
                    vals.append(math.exp(-2 * max(z - 0.5, 0.0) ** 2) * v)
            num = sum(v * math.exp(T * v) for v in vals)
            den = sum(math.exp(T * v) for v in vals)
            lat[i, j] = num / den
    full = torch.zeros(H, W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            fy, fx = y * (h - 1) / (H - 1), x * (w - 1) / (W - 1)
            y0, x0 = min(int(fy), h - 2), min(int(fx), w - 2)
            ay, ax = fy - y0, fx - x0
            full[y, x] = (
                (1 - ay) * (1 - ax) * lat[y0, x0]
                + (1 - ay) * ax * lat[y0, x0 + 1]
                + ay * (1 - ax) * lat[y0 + 1, x0]
                + ay * ax * lat[y0 + 1, x0 + 1]
            )
    return lat, full


@pytest.mark.parametrize("image_size,step,sigma", [((15, 19), 2.0, 6.0), ((22, 22), 3.0, 9.0), ((12, 17), 2.5, 4.0)])
def test_smooth_max_equals_transcription(image_size, step, sigma):
    sm = SmoothMaxMask.for_image(image_size, step, sigma)
    g = torch.Generator().manual_seed(1)
    theta = torch.rand((2, 1, 1, *sm.grid_size), generator=g, dtype=torch.float64)
    lat, full = sm(theta)
    for n in range(2):
        ref_lat, ref_full = _transcribed_mask(theta[n, 0, 0], sm)
        assert (lat[n, 0, 0] - ref_lat).abs().max() < 1e-5
        assert (full[n, 0, 0] - ref_full).abs().max() < 1e-5
    assert full.shape == (2, 1, 1, *image_size)


def test_smooth_max_reference_geometry_and_kernel():
    sm = SmoothMaxMask.for_image((224, 224), 7.0, 21.0)
    assert sm.radius == 4  # 9×9 = 81 neighbours, as in the reference
    assert sm.grid_size == (33, 33)
    assert smooth_max_kernel(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([1.0, 1.0, math.exp(-0.5)])
    ones = sm(torch.ones(1, 1, 1, *sm.grid_size))[1]
    # The smooth max (T = 20) of 1 and the smaller kernel-weighted neighbours is just below 1.
    assert ones.min() > 0.98 and ones.max() <= 1.0


def test_smooth_max_gradcheck_float64():
    sm = SmoothMaxMask.for_image((9, 11), 2.0, 5.0)
    theta = torch.rand((1, 2, 1, *sm.grid_size), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sm(t)[1], (theta,), eps=1e-6, atol=1e-5)


def test_smooth_max_fold_backward_equals_shifted_adds(monkeypatch):
    """The CUDA path of the backward (one F.fold) gives the CPU path's gradient."""
    import meaningful_perturbation.core.smoothmax as smoothmax

    sm = SmoothMaxMask.for_image((40, 52), 3.0, 9.0)
    theta = torch.rand((2, 3, 1, *sm.grid_size), dtype=torch.float64)
    w = torch.randn((2, 3, 1, 40, 52), dtype=torch.float64)

    def grad(fold: bool) -> torch.Tensor:
        monkeypatch.setattr(smoothmax, "FOLD_ON_CPU", fold)
        t = theta.clone().requires_grad_(True)
        (sm(t)[1] * w).sum().backward()
        return t.grad

    loop, fold = grad(False), grad(True)
    assert loop.abs().max() > 0
    torch.testing.assert_close(fold, loop, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(smoothmax, "FOLD_ON_CPU", True)
    assert torch.autograd.gradcheck(lambda t: sm(t)[1], (theta[:1, :1].clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_area_term_reads_nothing_back_from_the_device():
    """No value crosses to the host in the area term (on a GPU that would stall every step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "_local_scalar_dense":
                Reads.n += 1
            return func(*args, **(kwargs or {}))

    full = torch.rand(2, 4, 1, 16, 16, requires_grad=True)
    with Reads():
        v = area_term(full, (0.025, 0.05, 0.1, 0.2))
        v.sum().backward()
    assert Reads.n == 0
    # the value is still the ranking constraint: 0 for a mask with exactly the area
    m = torch.zeros(1, 1, 1, 10, 10)
    m.view(-1)[:10] = 1
    assert float(area_term(m, (0.1,))) == 0.0
    assert float(area_term(m, (0.2,))) == pytest.approx(10 / 100)


def test_lattice_mask_is_close_to_per_pixel_evaluation():
    """Interpolating the lattice values vs evaluating the smooth max at every pixel."""
    H = W = 64
    step, sigma = 2.0, 6.0
    sm = SmoothMaxMask.for_image((H, W), step, sigma)
    g = torch.Generator().manual_seed(0)
    theta = (torch.rand((1, 1, 1, *sm.grid_size), generator=g, dtype=torch.float64) > 0.7).double()
    full = sm(theta)[1][0, 0, 0]
    R = sm.radius
    sy = sm.spacing[0]
    worst = 0.0
    for y in range(0, H, 5):
        for x in range(0, W, 5):
            cy, cx = y / sy, x / sy
            i0, j0 = round(cy), round(cx)
            vals = []
            for di in range(-R, R + 1):
                for dj in range(-R, R + 1):
                    ii, jj = i0 + di, j0 + dj
                    v = float(theta[0, 0, 0, min(max(ii, 0), sm.grid_size[0] - 1), min(max(jj, 0), sm.grid_size[1] - 1)])
                    z = math.hypot((ii - cy) * sy, (jj - cx) * sy) / sigma
                    vals.append(math.exp(-2 * max(z - 0.5, 0) ** 2) * v)
            m = sum(v * math.exp(20 * v) for v in vals) / sum(math.exp(20 * v) for v in vals)
            worst = max(worst, abs(m - float(full[y, x])))
    assert worst < 0.1, worst  # a binary random field: the hardest case for interpolation


def test_area_term_equals_sorted_definition():
    m = torch.rand(3, 4, 1, 9, 7)
    m[0, 0] = 0.5  # all tied
    areas = (0.025, 0.1, 0.5, 1.0)
    P = 63
    ours = area_term(m, areas)
    for k, a in enumerate(areas):
        ref = torch.zeros(P)
        A = round(a * P)
        if A:
            ref[P - A :] = 1
        expected = ((m[:, k].reshape(3, -1).sort(dim=-1).values - ref) ** 2).mean(-1)
        assert torch.allclose(ours[:, k], expected, atol=1e-6)


def _oracle(size):
    model = TextureOracle(size, BOXES, gain=4.0, bias=0.0, log=True)
    x = torch.cat([textured_image(size, k, seed=k, boxes=BOXES, grain=size / 64) for k in range(2)])
    return model, x


def test_preserve_mask_covers_evidence_region():
    size = 64
    model, x = _oracle(size)
    x = x[:1]
    # The oracle's classes are not mirror-symmetric, so the flip jitter (which assumes a
    # flip-invariant classifier) is switched off.
    ex = mp.explain(model, x, method="extremal", areas=(0.1, 0.2), jitter="none")
    region = region_masks(size, BOXES)[:1, None]  # each region is 9% of the image
    covered = (ex.masks * region).sum(dim=(2, 3)) / region.sum(dim=(2, 3))
    assert torch.all(covered[:, 1] > 0.9), covered  # the 0.2 mask holds the 0.09 region
    assert torch.all(covered[:, 0] > 0.7), covered
    inside = (ex.masks * region).sum(dim=(2, 3)) / ex.masks.sum(dim=(2, 3))
    assert torch.all(inside[:, 0] > 0.5), inside  # area 0.1 vs a 0.09 region: most of it inside
    assert torch.all(ex.scores["masked"][:, 1] > 0.9 * ex.scores["clean"])
    assert ex.saliency.shape == (1, size, size)
    assert torch.allclose(ex.saliency, ex.masks.sum(dim=1))


def test_dual_runs_both_games_in_one_batch():
    model, x = _oracle(32)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    ex = mp.explain(model, x, method="extremal", game="dual", areas=(0.1, 0.2), steps=5, jitter="none")
    assert set(ex.history) == {"loss", "score_preserve", "score_delete", "area"}
    assert {"masked", "masked_delete"} <= set(ex.scores)
    assert 2 * 2 * 2 in calls  # N=2 images × K=2 areas × G=2 games in one forward pass


def test_delete_game_masks_are_keep_masks():
    model, x = _oracle(32)
    ex = mp.explain(model, x, method="extremal", game="delete", areas=(0.2,), steps=20, jitter="none")
    assert torch.allclose(ex.saliency, 1 - ex.masks[:, 0], atol=1e-6)


def test_areas_jointly_equal_areas_separately():
    model, x = _oracle(32)
    model, x = model.double(), x.double()
    joint = mp.explain(model, x, method="extremal", areas=(0.05, 0.2), steps=30, jitter=1)
    for k, a in enumerate((0.05, 0.2)):
        alone = mp.explain(model, x, method="extremal", areas=(a,), steps=30, jitter=1)
        assert torch.allclose(alone.masks[:, 0], joint.masks[:, k], atol=1e-6)


def test_batch_of_images_equals_one_by_one():
    model, x = _oracle(32)
    model, x = model.double(), x.double()
    together = mp.explain(model, x, method="extremal", areas=(0.1,), steps=30)
    for i in range(2):
        alone = mp.explain(model, x[i : i + 1], method="extremal", areas=(0.1,), steps=30)
        assert torch.allclose(alone.masks, together.masks[i : i + 1], atol=1e-6)


def test_same_seed_identical_masks():
    model, x = _oracle(32)
    # jitter=28 px at 224 is a random shift of up to 4 px at 32 px.
    a = mp.explain(model, x, method="extremal", areas=(0.1,), steps=20, jitter=28, seed=5)
    b = mp.explain(model, x, method="extremal", areas=(0.1,), steps=20, jitter=28, seed=5)
    c = mp.explain(model, x, method="extremal", areas=(0.1,), steps=20, jitter=28, seed=6)
    assert torch.equal(a.masks, b.masks)
    assert not torch.equal(a.masks, c.masks)


@pytest.mark.parametrize("areas", [(0.0,), (-0.1,), (1.5,), (), "big", (0.1, None)])
def test_bad_areas(areas):
    model, x = _oracle(32)
    with pytest.raises(ConfigError, match="areas"):
        mp.explain(model, x, method="extremal", areas=areas, steps=1)


def test_saliency_area_and_smooth_options():
    model, x = _oracle(32)
    ex = mp.explain(model, x, method="extremal", areas=(0.1, 0.2), steps=5, saliency_area=0.2)
    assert torch.allclose(ex.saliency, ex.masks[:, 1])
    sm = mp.explain(model, x, method="extremal", areas=(0.1, 0.2), steps=5, smooth=0.09)
    assert sm.saliency.std() < ex.masks.sum(1).std() + 1e-6
    with pytest.raises(ConfigError, match="saliency_area"):
        mp.explain(model, x, method="extremal", areas=(0.1,), saliency_area=0.3)


def test_early_stopping():
    model, x = _oracle(64)
    ex = mp.explain(model, x, method="paper", early_stop=40)
    run = torch.tensor(ex.extra["steps_run"])
    full = mp.method_config("paper").steps
    assert run.max() < full
    assert ex.history["loss"].shape[0] <= full
    # Stopping early keeps the deletion effective on this oracle.
    assert torch.all(ex.scores["masked"][:, 0] < 0.2 * ex.scores["clean"])


@pytest.mark.parametrize("size,tol", [(64, 0.2), (224, 0.1)])
def test_achieved_area_close_to_target(size, tol):
    # The constraint holds the lattice values; the pixel area of the interpolated mask
    # follows it to within 10% at 224. At 64 this oracle's strong log-evidence gradient keeps
    # the a = 0.05 mask at 0.058 (+16%): its smooth-max transition band (~2.5 lattice steps)
    # is wide for a blob of ~4 steps' radius (docs/benchmarks.md, "achieved areas").
    model = TextureOracle(size, BOXES, gain=4.0, bias=0.0, log=True)
    x = textured_image(size, 0, seed=0, boxes=BOXES, grain=size / 64)
    areas = (0.05, 0.1, 0.2)
    ex = mp.explain(model, x, method="extremal", areas=areas, jitter="none")
    achieved = torch.tensor(ex.extra["achieved_area"])[0]
    target = torch.tensor(areas)
    assert torch.all((achieved - target).abs() <= tol * target), achieved
    # measured on the image itself: the same number recomputed from the returned masks
    assert torch.allclose(achieved, (ex.masks[0] > 0.5).float().mean(dim=(1, 2)))


class _Bump(torch.nn.Module):
    """Class 0's logit = brightness weighted by a Gaussian bump: a unique best region per area."""

    def __init__(self, size: int, cy: float = 0.35, cx: float = 0.6, s: float = 0.12) -> None:
        super().__init__()
        c = torch.arange(size, dtype=torch.float32) + 0.5
        ys, xs = torch.meshgrid(c / size, c / size, indexing="ij")
        w = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * s * s))
        self.register_buffer("w", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 8 * (x[:, 0] * self.w).sum(dim=(1, 2))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_extremal_masks_are_resolution_independent():
    # The same scene at 64 and 128 px (lattice step, σ and blur scale with the image): the
    # 128 px masks, average-pooled to 64 px, match the 64 px ones. Measured: mean |diff|
    # 0.006 / 0.011 for a = 0.05 / 0.2; the largest differences are single boundary pixels.
    masks = {}
    for size in (64, 128):
        x = torch.full((1, 3, size, size), 2.0)
        ex = mp.explain(_Bump(size), x, target=0, method="extremal", areas=(0.05, 0.2), perturbation="fade", jitter="none")
        masks[size] = ex.masks[0]
    pooled = F.avg_pool2d(masks[128].unsqueeze(0), 2)[0]
    diff = (masks[64] - pooled).abs().mean(dim=(1, 2))
    assert torch.all(diff < 0.03), diff
    area64, area128 = masks[64].mean(dim=(1, 2)), masks[128].mean(dim=(1, 2))
    assert torch.allclose(area64, area128, rtol=0.1), (area64, area128)


class _PixelBump(torch.nn.Module):
    """Class 0's logit = brightness weighted by a Gaussian bump fixed in pixels (centre
    ``(cy, cx)``, width ``s``), for any image size: the same evidence in a square image and
    in a wider (taller) image that contains it."""

    def __init__(self, cy: float, cx: float, s: float) -> None:
        super().__init__()
        self.cy, self.cx, self.s = cy, cx, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ys = torch.arange(H, dtype=x.dtype).view(-1, 1)
        xs = torch.arange(W, dtype=x.dtype).view(1, -1)
        w = torch.exp(-((ys - self.cy) ** 2 + (xs - self.cx) ** 2) / (2 * self.s**2))
        z = 8 * (x[:, 0] * w).sum(dim=(1, 2)) / w.sum()
        return torch.stack([z, torch.zeros_like(z)], dim=1)


@pytest.mark.parametrize("wide", [True, False], ids=["3:1", "1:3"])
def test_wide_image_gives_the_square_crops_mask(wide):
    # A 3:1 (1:3) image whose centre square is the 64 px image: the same pixel area (a = 0.05
    # of the wide image = 0.15 of the square) must give the same mask. Before the area weight
    # was normalised to the square lattice, the 3:1 image kept the whole image at a = 0.05.
    S = 64
    shape = (S, 3 * S) if wide else (3 * S, S)
    off = (0, S) if wide else (S, 0)
    model_sq = _PixelBump(0.4 * S, 0.55 * S, 0.1 * S)
    model_wide = _PixelBump(0.4 * S + off[0], 0.55 * S + off[1], 0.1 * S)
    kw = dict(target=0, method="extremal-fast", perturbation="fade", jitter="none")
    sq = mp.explain(model_sq, torch.full((1, 3, S, S), 2.0), areas=(0.15,), **kw)
    wd = mp.explain(model_wide, torch.full((1, 3, *shape), 2.0), areas=(0.05,), **kw)
    crop = wd.masks[0, 0, off[0] : off[0] + S, off[1] : off[1] + S]
    a_sq, a_wd = (sq.masks[0, 0] > 0.5), (wd.masks[0, 0] > 0.5)
    assert abs(a_wd.float().mean() - 0.05) <= 0.1 * 0.05, a_wd.float().mean()
    assert abs(a_sq.float().mean() - 0.15) <= 0.1 * 0.15, a_sq.float().mean()
    assert a_wd.sum() == (crop > 0.5).sum()  # nothing kept outside the square
    iou = ((crop > 0.5) & a_sq).sum() / ((crop > 0.5) | a_sq).sum()
    assert iou > 0.9, iou


@pytest.mark.parametrize("aspect", [(1, 1), (1, 2), (1, 3), (3, 1)], ids=["1:1", "2:1", "3:1", "1:3"])
@pytest.mark.parametrize("size", [64, 112, 224])
def test_every_mask_within_10_percent_of_its_area(size, aspect):
    # Sizes 64 / 112 / 224 and aspects 1:1 to 3:1 (either way) on the fast preset (the same
    # λ path as the full schedule, compressed); the bump is off-centre.
    H, W = size * aspect[0], size * aspect[1]
    areas = (0.05, 0.1, 0.2)
    model = _PixelBump(0.3 * H, 0.6 * W, 0.1 * size)
    ex = mp.explain(model, torch.full((1, 3, H, W), 2.0), target=0, method="extremal-fast", areas=areas, perturbation="fade", jitter="none")
    achieved = torch.tensor(ex.extra["achieved_area"])[0]
    target = torch.tensor(areas)
    assert torch.all((achieved - target).abs() <= 0.1 * target), achieved


def test_area_miss_warns_with_image_target_and_achieved_area():
    model = _PixelBump(20.0, 30.0, 5.0)
    x = torch.full((2, 3, 48, 48), 2.0)
    # 3 steps: the masks are still the all-ones start, area 1.0 for targets 0.1 and 0.2.
    with pytest.warns(mp.AreaWarning) as record:
        ex = mp.explain(model, x, target=0, method="extremal", areas=(0.1, 0.2), steps=3, perturbation="fade")
    assert len(record) == 1
    assert str(record[0].message) == (
        "extremal: 4 of 4 masks miss their target area by more than 25% (image 0 area 0.1 -> 1.000, "
        "image 0 area 0.2 -> 1.000, image 1 area 0.1 -> 1.000, image 1 area 0.2 -> 1.000); the area "
        "constraint did not converge for them: use more steps or a larger area_weight, or check "
        "that the model's score responds to the image"
    )
    assert record[0].filename == __file__  # points at the caller's explain() line
    assert ex.extra["achieved_area"] == [[1.0, 1.0], [1.0, 1.0]]
    assert issubclass(mp.AreaWarning, mp.MeaningfulPerturbationWarning) and issubclass(mp.AreaWarning, UserWarning)


def test_converged_masks_do_not_warn():
    from meaningful_perturbation.methods.extremal import warn_area_misses

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_area_misses("extremal", torch.tensor([[0.04, 0.124, 0.15]]), (0.05, 0.1, 0.2))  # -20%, +24%, -25%
    with pytest.warns(mp.AreaWarning, match=r"1 of 3 masks .* \(image 0 area 0\.1 -> 0\.126\)"):
        warn_area_misses("extremal", torch.tensor([[0.05, 0.126, 0.2]]), (0.05, 0.1, 0.2))


def test_occlusion_start_is_an_option_of_extremal_and_the_default_stays_the_papers():
    """`extremal` keeps the 2019 constant start by default (`extremal-fast` takes the occlusion
    start); `start="occlusion"` starts each
    area from the occlusion probe's top cut (methods/start.py), batched = one by one."""
    from meaningful_perturbation.methods import get_method
    from oracles import BOXES

    assert get_method("extremal").default_config().start == "constant"
    assert get_method("extremal-fast").default_config().start == "occlusion"  # measured on both families (docs/benchmarks.md)
    model = TextureOracle(24, BOXES, gain=4.0, bias=0.0, log=True).double()
    x = torch.cat([textured_image(24, k, seed=k, boxes=BOXES, grain=24 / 64) for k in range(2)]).double()
    kw = dict(method="extremal", areas=(0.05, 0.2), steps=6, jitter="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = mp.explain(model, x, target=[0, 1], **kw)
        occ = mp.explain(model, x, target=[0, 1], start="occlusion", **kw)
        alone = mp.explain(model, x[1:], target=[1], start="occlusion", **kw)
    assert plain.extra["start"] == "constant" and plain.extra["probe_passes"] == 0
    assert occ.extra["start"] == "occlusion" and occ.extra["probe_passes"] == 22 * 22
    assert not torch.equal(plain.masks, occ.masks)
    assert torch.equal(alone.masks, occ.masks[1:])
    with pytest.raises(ConfigError, match=r"^init: a constant start value is used only with start='constant'"):
        mp.explain(model, x, target=[0, 1], start="occlusion", init=1.0, **kw)
