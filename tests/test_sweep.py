"""`extremal-sweep`: nested masks, the ranking saliency, the area–score curve, batching,
save/load, bad area ladders (issue 15 §1-2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation import ConfigError, Explanation
from meaningful_perturbation.cli import main
from meaningful_perturbation.methods import get_method
from meaningful_perturbation.methods.common import perturbed_input
from meaningful_perturbation.methods.sweep import (
    DEFAULT_AREAS,
    area_curve,
    nested_masks,
    rank_saliency,
    sufficient_area,
)
from oracles import TextureOracle, region_masks, textured_image

BOXES = [(0.1, 0.1, 0.4, 0.4), (0.1, 0.6, 0.4, 0.9), (0.6, 0.1, 0.9, 0.4), (0.6, 0.6, 0.9, 0.9)]
AREAS = (0.05, 0.1, 0.2, 0.4)


def _oracle(size=32, n=2):
    model = TextureOracle(size, BOXES, gain=4.0, bias=0.0, log=True)
    x = torch.cat([textured_image(size, k, seed=k, boxes=BOXES, grain=size / 64) for k in range(n)])
    return model, x


@pytest.fixture(scope="module")
def swept():
    torch.manual_seed(0)
    model, x = _oracle(32)
    ex = mp.explain(model, x, target=[0, 1], method="extremal-sweep", areas=AREAS, steps=25, jitter="none")
    return model, x, ex


# -- the default ladder ----------------------------------------------------------------------

def test_default_ladder_is_dense_and_within_rise_cost():
    cfg = get_method("extremal-sweep").default_config()
    a = cfg.area_tuple
    assert a == DEFAULT_AREAS and len(a) >= 10 and a[0] <= 0.0125 and a[-1] >= 0.5
    assert all(hi / lo == pytest.approx(math.sqrt(2), rel=2e-3) for lo, hi in zip(a, a[1:]))
    assert {0.025, 0.05, 0.1, 0.2} <= set(a)  # the 2019 paper's areas are rungs of the ladder
    # K·steps forward+backward passes + the optimised and reported masks (2K) + clean + perturbed
    assert len(a) * cfg.steps + 2 * len(a) + 2 <= 4001  # rise: 4000 masks + the clean pass


# -- nesting and the ranking -----------------------------------------------------------------

def test_masks_are_nested_binary_and_exactly_their_area(swept):
    _, x, ex = swept
    m = ex.masks
    assert m.shape == (2, len(AREAS), 32, 32)
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert torch.all(m[:, 1:] >= m[:, :-1])  # M_1 ≤ M_2 ≤ … pixel-wise
    counts = m.sum(dim=(2, 3))
    expected = torch.tensor([round(a * 32 * 32) for a in AREAS], dtype=counts.dtype)
    assert torch.equal(counts, expected.expand_as(counts))
    assert ex.extra["mask_area"] == pytest.approx([c / 1024 for c in expected.tolist()])


def test_ranking_reproduces_every_mask_as_a_top_k_cut(swept):
    _, _, ex = swept
    n, k, h, w = ex.masks.shape
    sal = ex.saliency.reshape(n, -1)
    # every pixel has its own rank r = 0 … P−1, and the value 1 − log(1 + e/a_1)/log(1 + 1/a_1),
    # e = (r + 1)/P the area at which it enters
    P = h * w
    e = torch.arange(1, P + 1, dtype=torch.float64) / P
    want = (1 - torch.log1p(e / AREAS[0]) / math.log1p(1 / AREAS[0])).float()
    assert torch.equal(torch.sort(sal, dim=1, descending=True).values, want.expand(n, -1))
    assert bool((want[:-1] > want[1:]).all())  # distinct
    for j in range(k):
        c = int(ex.masks[0, j].sum())
        top = torch.zeros(n, h * w)
        top.scatter_(1, sal.topk(c, dim=1).indices, 1.0)
        assert torch.equal(top.reshape(n, h, w), ex.masks[:, j])


def test_ranking_follows_the_masks_and_finds_the_evidence(swept):
    _, _, ex = swept
    region = region_masks(32, BOXES)[:2]  # image i's evidence is box i (9% of the image)
    # the first 9% of the ranking lies mostly on the evidence; a random order would put 9% there
    top = nested_masks(ex.saliency, (0.09,))[:, 0]
    assert torch.all((top * region).sum(dim=(1, 2)) / top.sum(dim=(1, 2)) > 0.6)


def test_rank_saliency_breaks_ties_by_the_tie_score_then_by_index():
    score = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]])
    tie = torch.tensor([[[0.0, 0.0], [5.0, 9.0]]])
    # order: (1,0) [2, tie 5], (0,1) [2, tie 0], (1,1) [1, tie 9], (0,0) [1, tie 0]
    # P = 4, knee 1/4: rank r enters at e = (r + 1)/4 and gets 1 − log(1 + 4e)/log 5 = 1 − log(r + 2)/log 5
    v = [1 - math.log(r + 2) / math.log(5) for r in range(4)]
    assert torch.allclose(rank_saliency(score, tie), torch.tensor([[[v[3], v[1]], [v[0], v[2]]]]), atol=1e-7)
    # no tie score: the first index first
    assert torch.allclose(rank_saliency(torch.zeros(1, 2, 2)), torch.tensor([[[v[0], v[1]], [v[2], v[3]]]]), atol=1e-7)
    # knee 0.5: 1 − log(1 + 2e)/log 3, e = 1/4 … 1
    w = [1 - math.log1p(2 * (r + 1) / 4) / math.log(3) for r in range(4)]
    assert torch.allclose(rank_saliency(torch.zeros(1, 2, 2), knee=0.5), torch.tensor([[[w[0], w[1]], [w[2], w[3]]]]), atol=1e-7)


def test_nested_masks_of_a_known_ranking():
    sal = rank_saliency(torch.arange(16.0).reshape(1, 4, 4))  # pixel 15 first, pixel 0 last
    m = nested_masks(sal, (0.0625, 0.25, 0.5))
    assert m[0, 0].flatten().nonzero().flatten().tolist() == [15]
    assert m[0, 1].flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]
    assert m[0, 2].flatten().nonzero().flatten().tolist() == list(range(8, 16))


# -- the curve -------------------------------------------------------------------------------

def test_curve_is_scored_on_the_reported_masks(swept):
    model, x, ex = swept
    n, k = ex.masks.shape[:2]
    xt = perturbed_input(x, ex.masks, ex.config, seed=ex.extra["seed"], method=ex.method)
    with torch.no_grad():
        p = model(xt.reshape(n * k, *x.shape[1:])).softmax(-1).view(n, k, -1)
    expected = torch.stack([p[0, :, 0], p[1, :, 1]])  # targets 0 and 1
    assert torch.allclose(ex.scores["masked"], expected, atol=1e-5)
    assert ex.scores["optimised"].shape == (n, k)  # the optimised (soft) masks' scores, kept apart


class _Evidence(nn.Module):
    """Logit 0 = Σ w·x with w ≥ 0 on non-negative inputs, logit 1 = 0: keeping more of the
    image never lowers class 0's score, so the score is monotone in a nested kept region."""

    def __init__(self, size):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.rand(1, 3, size, size, generator=g) ** 4, requires_grad=False)

    def forward(self, x):
        z = (x * self.w).sum(dim=(1, 2, 3)) / self.w.sum() * 8 - 2
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_curve_is_monotone_for_a_model_monotone_in_the_kept_region():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))  # ≥ 0; fade replaces by 0
    ex = mp.explain(_Evidence(24), x, target=0, method="extremal-sweep", areas=AREAS + (0.6, 0.8),
                    steps=15, perturbation="fade", jitter="none")
    curve = area_curve(ex)["preserved"]
    assert torch.all(curve[:, 1:] >= curve[:, :-1] - 1e-6), curve
    assert torch.all(curve[:, -1] > curve[:, 0] + 0.05)  # and it really rises


def test_best_envelope_and_sufficient_area():
    curve = torch.tensor([[0.2, 0.95, 0.9, 0.97], [0.1, 0.2, 0.3, 0.4]])
    clean = torch.tensor([1.0, 0.5])
    got = sufficient_area(curve, clean, AREAS, 0.9)
    assert got[0].item() == pytest.approx(0.1)  # first area with p ≥ 0.9·1.0
    assert got[1].item() == 1.0  # no area keeps 0.45 of 0.5: the whole image (the clean score itself)
    assert sufficient_area(curve, clean, AREAS, 0.5)[1].item() == pytest.approx(0.2)  # 0.3 is the first ≥ 0.25


def test_area_curve_readout(swept):
    _, _, ex = swept
    c = area_curve(ex)
    assert c["areas"] == list(AREAS) and c["deleted"] is None and c["keep_fraction"] == 0.9
    assert torch.equal(c["best"], torch.cummax(c["preserved"], dim=1).values)
    assert torch.all(c["best"][:, 1:] >= c["best"][:, :-1])
    for i in range(2):  # the sufficient area is the first rung at ≥ 0.9·clean
        ok = (c["preserved"][i] >= 0.9 * c["clean"][i]).nonzero().flatten().tolist()
        want = AREAS[ok[0]] if ok else 1.0
        assert float(c["sufficient_area"][i]) == pytest.approx(want)
    with pytest.raises(ConfigError, match="ex: expected an extremal-sweep explanation"):
        area_curve(mp.explain(_oracle()[0], _oracle()[1], method="gradient"))


def test_dual_game_scores_the_deleted_input_too():
    model, x = _oracle(24, n=1)
    ex = mp.explain(model, x, target=0, method="extremal-sweep", areas=(0.05, 0.2, 0.4), game="dual", steps=5,
                    jitter="none")
    c = area_curve(ex)
    assert c["deleted"].shape == (1, 3) and "optimised_delete" in ex.scores
    xt = perturbed_input(x, 1 - ex.masks, ex.config, seed=ex.extra["seed"], method=ex.method)[0]
    with torch.no_grad():
        p = model(xt).softmax(-1)[:, 0]
    assert torch.allclose(c["deleted"][0], p, atol=1e-5)


# -- batching --------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [dict(start="constant", init=0.5), dict()], ids=["constant", "occlusion"])
def test_batch_of_images_equals_one_by_one(start):
    model, x = _oracle(24)
    model, x = model.double(), x.double()
    kw = dict(method="extremal-sweep", areas=(0.05, 0.1, 0.3), steps=8, jitter="none", lr=0.2, **start)
    together = mp.explain(model, x, target=[0, 1], **kw)
    for i in range(2):
        alone = mp.explain(model, x[i : i + 1], target=[i], **kw)
        assert torch.equal(alone.masks, together.masks[i : i + 1])
        assert torch.equal(alone.saliency, together.saliency[i : i + 1])
        assert torch.allclose(alone.scores["masked"], together.scores["masked"][i : i + 1], atol=1e-6)


def test_areas_of_a_sweep_equal_extremal_runs_of_each_area():
    model, x = _oracle(24, n=1)
    model, x = model.double(), x.double()
    areas = (0.05, 0.1, 0.3)
    kw = dict(target=0, steps=10, jitter="none", init=0.5, lr=0.2)  # masks that move in 10 steps
    sweep = mp.explain(model, x, method="extremal-sweep", areas=areas, start="constant", **kw)  # extremal's start
    opt = sweep.scores["optimised"][0]
    assert opt[0] < opt[1] < opt[2]  # three different masks, not three copies of the start
    for k, a in enumerate(areas):
        alone = mp.explain(model, x, method="extremal", areas=(a,), **kw)
        assert torch.allclose(alone.scores["masked"][:, 0], sweep.scores["optimised"][:, k], atol=1e-6)
        assert sweep.extra["achieved_area"][0][k] == alone.extra["achieved_area"][0][0]


# -- files -----------------------------------------------------------------------------------

def test_save_load_round_trips_the_curve(swept, tmp_path):
    _, _, ex = swept
    back = Explanation.load(ex.save(tmp_path / "s.npz"))
    a, b = area_curve(ex), area_curve(back)
    assert a["areas"] == b["areas"] and a["keep_fraction"] == b["keep_fraction"]
    for key in ("preserved", "best", "clean", "perturbed"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["sufficient_area"], b["sufficient_area"])
    assert torch.equal(back.masks, ex.masks) and torch.equal(back.saliency, ex.saliency)


def test_slicing_keeps_the_ladder_when_images_equal_areas():
    model, _ = _oracle(24)
    x = torch.cat([textured_image(24, k % 4, seed=k, boxes=BOXES) for k in range(3)])
    ex = mp.explain(model, x, method="extremal-sweep", areas=(0.05, 0.1, 0.3), steps=2, jitter="none")
    one = ex[1]  # 3 images and 3 areas: the areas are not a per-image list
    assert one.extra["areas"] == [0.05, 0.1, 0.3]
    assert area_curve(one)["preserved"].shape == (1, 3)


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("areas, says", [
    ((0.2, 0.1, 0.3), "areas: expected areas sorted in increasing order, got 0.2 before 0.1 in (0.2, 0.1, 0.3)"),
    ((0.1, 0.1, 0.3), "areas: expected distinct areas, got 0.1 twice in (0.1, 0.1, 0.3)"),
    ((0.1, 0.2, 1.0), "areas: every area must be a fraction in the open interval (0, 1), got 1.0 in (0.1, 0.2, 1.0)"),
    ((0.0, 0.2, 0.3), "areas: every area must be a fraction in the open interval (0, 1), got 0.0 in (0.0, 0.2, 0.3)"),
    ((-0.1, 0.2, 0.3), "got -0.1 in"),
    ((0.1, float("nan"), 0.3), "got nan in"),
    ((0.1, "x", 0.3), "got 'x' in"),
    ((0.1, 0.2), "areas: expected at least 3 areas for a sweep (for one or two use method 'extremal'), got 2: (0.1, 0.2)"),
    (0.1, "areas: expected a sorted sequence of at least 3 fractions in (0, 1), got 0.1"),
])
def test_bad_area_ladders(areas, says):
    model, x = _oracle(24, n=1)
    with pytest.raises(ConfigError) as e:
        mp.explain(model, x, method="extremal-sweep", areas=areas, steps=1)
    assert says in str(e.value)


@pytest.mark.parametrize("setting, says", [
    ({"game": "delete"}, "game: expected one of 'preserve', 'dual' for extremal-sweep"),
    ({"saliency_area": 0.1}, "saliency_area: expected None for extremal-sweep"),
    ({"keep_fraction": 0.0}, "keep_fraction: expected a value > 0"),
    ({"keep_fraction": 1.5}, "keep_fraction: expected a value <= 1"),
])
def test_bad_settings(setting, says):
    model, x = _oracle(24, n=1)
    with pytest.raises(ConfigError, match=says):
        mp.explain(model, x, method="extremal-sweep", steps=1, **setting)


TINY = """
import torch
def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6))
    return m, {"input_size": 32, "resize": 32}
"""


def test_cli_bad_ladder_is_one_error_line(tmp_path, capsys):
    f = tmp_path / "tiny_model.py"
    f.write_text(TINY)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    rc = main(["explain", str(img), "--model", f"python:{f}:build", "--trust-code", "--method", "extremal-sweep",
               "--areas", "0.3", "0.1", "0.5", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("mperturb: error: --areas: expected areas sorted in increasing order, got 0.3 before 0.1")


def _tiny(tmp_path):
    f = tmp_path / "tiny_model.py"
    f.write_text(TINY)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    return f"python:{f}:build", img


def _strict(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return __import__("json").loads(text, parse_constant=refuse)


def test_cli_explain_and_run_accept_the_sweep(tmp_path, capsys):
    spec, img = _tiny(tmp_path)
    out = tmp_path / "o"
    assert main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep", "--steps", "3",
                 "--set", "keep_fraction=1.0", "--out", str(out), "-q"]) == 0
    summary = _strict((out / "img_summary.json").read_text())
    assert len(summary["scores"]["masked"]) == len(DEFAULT_AREAS) and "sufficient_area" in summary["scores"]
    ex = Explanation.load(out / "img.npz")
    suff = float(ex.scores["sufficient_area"][0])
    if math.isnan(suff):  # this tiny random model: the fully perturbed input keeps the score (degenerate)
        assert summary["scores"]["sufficient_area"] is None and summary["degenerate"]
    else:
        assert summary["scores"]["sufficient_area"] == pytest.approx(suff)
        assert any(suff == pytest.approx(a) for a in DEFAULT_AREAS + (1.0,))  # a rung, or 1.0: the whole image
    with Image.open(out / "img_panel.png") as panel:  # original, saliency, 4 masks, history, curve
        assert panel.width > 3.3 * 100 * 8
    run_out = tmp_path / "r"
    (tmp_path / "imgs").mkdir()
    img.rename(tmp_path / "imgs" / img.name)
    assert main(["run", str(tmp_path / "imgs"), "--model", spec, "--trust-code", "--method", "extremal-sweep", "--steps", "2",
                 "--out", str(run_out), "-q"]) == 0
    items = list((run_out / "items").glob("*.npz"))
    assert len(items) == 1 and area_curve(Explanation.load(items[0]))["preserved"].shape == (1, len(DEFAULT_AREAS))


@pytest.mark.parametrize("game, passes", [("preserve", 3 * 4 + 2 * 3 + 2), ("dual", 2 * 3 * 4 + 4 * 3 + 2)])
@pytest.mark.parametrize("start, probe", [("constant", 0), ("occlusion", 22 * 22)])
def test_model_passes_per_image(game, passes, start, probe):
    # K·steps (+ K·steps for dual) optimisation passes, the optimised and the reported masks
    # (K each, per game), the clean and the fully perturbed image, and one pass per window of the
    # occlusion start (24 px: window 3, stride 1): the cost docs/sweep.md states
    from meaningful_perturbation.evaluation.benchmark import _passes

    model, x = _oracle(24, n=2)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    ex = mp.explain(model, x, target=[0, 1], method="extremal-sweep", areas=(0.05, 0.1, 0.3), steps=4, game=game,
                    jitter="none", start=start)
    assert sum(seen) == 2 * (passes + probe)
    assert max(seen) == 2 * 3 * (2 if game == "dual" else 1)  # the probe never batches more than a step does
    assert ex.extra["probe_passes"] == probe
    fb, fwd = _passes("extremal-sweep", dict(areas=(0.05, 0.1, 0.3), steps=4, game=game, start=start), 24)
    assert fb == 3 * 4 * (2 if game == "dual" else 1) and fwd == 4 + probe  # the benchmark's estimate counts the probe


# -- fix15: convergence is warned about ------------------------------------------------------

def test_unconverged_rungs_warn_and_are_flagged_while_masks_stay_nested():
    from meaningful_perturbation.errors import AreaWarning

    model, x = _oracle(24, n=1)
    with pytest.warns(AreaWarning, match=r"^extremal-sweep: 3 of 3 masks miss their target area by more than 25% "
                                         r"\(image 0 area 0.05 -> 1.000, image 0 area 0.1 -> 1.000, image 0 area 0.2 -> 1.000\)"):
        ex = mp.explain(model, x, target=0, method="extremal-sweep", areas=(0.05, 0.1, 0.2), steps=1, jitter="none",
                        start="constant")
    assert ex.extra["achieved_area"] == [[1.0, 1.0, 1.0]]  # overshoot: one step leaves the init
    assert ex.extra["area_missed"] == [[True, True, True]]
    m = ex.masks[0]
    assert torch.all(m[1:] >= m[:-1]) and [int(v) for v in m.sum(dim=(1, 2))] == [29, 58, 115]  # still nested, exact


def test_converged_rungs_do_not_warn_and_undershoot_is_flagged(swept):
    _, _, ex = swept
    target = torch.tensor(AREAS)
    got = torch.tensor(ex.extra["achieved_area"])
    assert ex.extra["area_missed"] == ((got - target).abs() > 0.25 * target).tolist()
    from meaningful_perturbation.methods import sweep as sw

    caught = []
    orig = sw.warn_area_misses
    try:
        sw.warn_area_misses = lambda method, achieved, areas: caught.append(achieved.clone())
        model, x = _oracle(24, n=1)
        mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, jitter="none")
    finally:
        sw.warn_area_misses = orig
    assert len(caught) == 1  # every call checks its rungs
    # an undershoot is a miss as well as an overshoot (extremal's rule)
    import warnings

    from meaningful_perturbation.methods.extremal import warn_area_misses
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        warn_area_misses("extremal-sweep", torch.tensor([[0.01, 0.1, 0.2]]), (0.05, 0.1, 0.2))
    assert len(w) == 1 and "1 of 3 masks" in str(w[0].message) and "area 0.05 -> 0.010" in str(w[0].message)


# -- fix15: degenerate sufficient area -------------------------------------------------------

class _Smoothness(nn.Module):
    """Class 0's logit rises as the image gets smoother: the blurred (fully perturbed) input
    scores above the clean one."""

    def forward(self, x):
        v = x.var(dim=(1, 2, 3))
        return torch.stack([-20.0 * v, torch.zeros_like(v)], dim=1)


def test_sufficient_area_is_nan_and_degenerate_when_the_perturbed_input_keeps_the_score():
    got = sufficient_area(torch.tensor([[0.2, 0.95, 0.97], [0.2, 0.95, 0.97], [0.1, 0.2, 0.3]]),
                          torch.tensor([1.0, 1.0, 0.5]), (0.1, 0.2, 0.4), 0.9,
                          perturbed=torch.tensor([0.1, 0.92, 0.6]))
    assert got[0].item() == pytest.approx(0.2) and math.isnan(got[1].item()) and math.isnan(got[2].item())
    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 24)
    ex = mp.explain(_Smoothness(), x, target=0, method="extremal-sweep", areas=(0.1, 0.2, 0.4), steps=2, jitter="none")
    assert float(ex.scores["perturbed"][0]) > float(ex.scores["clean"][0])
    assert math.isnan(float(ex.scores["sufficient_area"][0])) and math.isnan(float(area_curve(ex)["sufficient_area"][0]))
    reason = ex.degenerate_reason(0)
    assert reason.startswith("no region found that changes the score (the fully perturbed input already keeps 90% of the clean score")


# -- fix15: summaries show the sweep's readout -----------------------------------------------

def test_explain_line_run_summary_and_report_show_the_sweep_readout(tmp_path, capsys):
    from meaningful_perturbation.runner.report import collect_columns

    spec, img = _tiny(tmp_path)
    out = tmp_path / "o"
    assert main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep", "--steps", "2",
                 "--areas", "0.1", "0.2", "0.4", "--out", str(out)]) == 0
    said = capsys.readouterr()
    line = [s for s in (said.out + said.err).splitlines() if s.startswith(str(img))][0]
    assert ", sufficient area " in line and " over 3 areas)" in line and "masked" not in line, line
    summary = _strict((out / "img_summary.json").read_text())  # strict JSON, also with a NaN area
    suff = summary["scores"]["sufficient_area"]
    assert suff is None or suff in (0.1, 0.2, 0.4, 1.0)
    cols = collect_columns([{"scores": {"clean": [0.9], "masked": [0.1, 0.5, 0.8], "perturbed": [0.1],
                                        "sufficient_area": [0.2]}}])
    assert "masked" not in cols and cols["sufficient_area"] == [0.2]
    assert cols["curve_mean"][0] == pytest.approx(1.4 / 3)
    assert collect_columns([{"scores": {"masked": [0.4], "clean": [0.9]}}])["masked"] == [0.4]  # other methods unchanged
    (tmp_path / "imgs").mkdir()
    img.rename(tmp_path / "imgs" / img.name)
    run_out = tmp_path / "r"
    assert main(["run", str(tmp_path / "imgs"), "--model", spec, "--trust-code", "--method", "extremal-sweep",
                 "--steps", "2", "--areas", "0.1", "0.2", "0.4", "--report", "--out", str(run_out)]) == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert "mean curve_mean" in text and "mean masked" not in text, text  # (this tiny model's area is NaN: degenerate)
    html = (run_out / "report.html").read_text()
    assert "sufficient area (sweep" in html and "learned mask" not in html


def test_areas_rounding_to_the_same_pixel_count_are_refused():
    model, x = _oracle(24, n=1)  # 576 pixels
    with pytest.raises(ConfigError, match=r"^areas: 0.0001 and 0.0002 both round to 1 pixel\(s\) of the 24x24 image, "
                                          r"so their masks would be the same; use areas at least 0.00174 apart"):
        mp.explain(model, x, method="extremal-sweep", areas=(0.0001, 0.0002, 0.0003), steps=1)
    with pytest.raises(ConfigError, match=r"^areas: 0.1 and 0.1005 both round to 58 pixel"):
        mp.explain(model, x, method="extremal-sweep", areas=(0.05, 0.1, 0.1005), steps=1)


def test_cli_areas_rounding_error_names_the_option(tmp_path, capsys):
    spec, img = _tiny(tmp_path)
    rc = main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep",
               "--areas", "0.0001", "0.0002", "0.0003", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("mperturb: error: --areas: 0.0001 and 0.0002 both round to 1 pixel(s) of the 32x32 image"), err


def test_cli_bad_area_value_is_one_error_line(tmp_path, capsys):
    spec, img = _tiny(tmp_path)
    rc = main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep",
               "--areas", "0.1", "0.2", "abc", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err == ["mperturb: error: explain: argument --areas: invalid float value: 'abc'"]
    # a setting given with --set keeps the --set prefix
    rc = main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep",
               "--set", "areas=[0.3, 0.1, 0.5]", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0].startswith("mperturb: error: --set: areas: expected areas sorted")


def test_area_curve_refuses_a_non_explanation():
    for bad in (None, 3, {"scores": {}}):
        with pytest.raises(ConfigError, match=r"^ex: expected an extremal-sweep Explanation, got (NoneType|int|dict)$"):
            area_curve(bad)


# -- fix15: the sweep panel ------------------------------------------------------------------

@pytest.mark.parametrize("kept", [[0.05, 0.3, 0.9, 0.98, 0.99], [0.99, 0.98, 0.97, 0.96, 0.95], [0.2, 0.2, 0.2, 0.2, 0.2]])
def test_curve_legend_never_covers_the_curve_and_ticks_hold_the_last_rung(kept):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from meaningful_perturbation.figures import _plot_curve

    areas = [0.013, 0.05, 0.1, 0.3, 0.73]  # custom: the last rung is no round value
    fig = Figure(figsize=(3.5, 3.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _plot_curve(ax, {"areas": areas, "preserved": np.array(kept), "deleted": np.array(kept[::-1]), "clean": 0.99,
                     "perturbed": 0.1, "sufficient_area": 0.1, "keep_fraction": 0.9, "label": "p"})
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent()
    pts = ax.transData.transform(np.c_[100 * np.array(areas), np.array(kept)])
    assert not any(box.contains(x, y) for x, y in pts)
    ticks = list(ax.get_xticks())
    assert ticks[0] == pytest.approx(1.3) and ticks[-1] == pytest.approx(73.0)


def test_panel_optimisation_subplot_shows_a_middle_rung(tmp_path, monkeypatch):
    from meaningful_perturbation import figures

    seen = {}
    real = figures.save_panel

    def spy(path, **kw):
        seen.update(kw)
        return real(path, **kw)

    monkeypatch.setattr(figures, "save_panel", spy)
    spec, img = _tiny(tmp_path)
    assert main(["explain", str(img), "--model", spec, "--trust-code", "--method", "extremal-sweep", "--steps", "2",
                 "--areas", "0.05", "0.1", "0.2", "0.4", "0.6", "--out", str(tmp_path / "o"), "-q"]) == 0
    assert seen["history_title"] == "optimisation (area 20.0%)"


# --- the occlusion start (docs/sweep.md, "The start") ---------------------------------------


def _problem(model, x, targets, **overrides):
    from meaningful_perturbation.core.objective import Targets
    from meaningful_perturbation.methods.common import Context
    from meaningful_perturbation.methods.extremal import build_problem
    from meaningful_perturbation.methods.registry import resolve_config

    with torch.no_grad():
        logits = model(x)
    ctx = Context(model, x, Targets([[t] for t in targets], x.device), logits, 0, torch.Generator().manual_seed(0),
                  "extremal-sweep")
    cfg = resolve_config(get_method("extremal-sweep"), dict(overrides, jitter="none"))
    return ctx, cfg, build_problem(ctx, cfg)


def test_occlusion_probe_equals_captum_occlusion_with_the_games_perturbation():
    """The probe is occlusion (Zeiler & Fergus 2014) with the fully perturbed image as the
    occluder and the target's probability as the score: Captum's Occlusion with the same
    baseline, window and stride gives the same map (a stride that ends at the far edge, so
    both use the same windows)."""
    from captum.attr import Occlusion

    from meaningful_perturbation.methods.start import occlusion_probe, probe_windows

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.Tanh(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                          nn.Linear(54, 5)).double().eval()
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    ctx, cfg, problem = _problem(model, x, [1, 3])
    window, stride = 6, 2  # (20 - 6) % 2 == 0: no extra flush window
    ours, passes = occlusion_probe(problem, ctx.targets, ctx.clean_logits, (20, 20), window, stride)
    assert passes == len(probe_windows((20, 20), window, stride)) == 8 * 8
    occ = Occlusion(lambda z: model(z).softmax(-1))
    ref = occ.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                        baselines=problem.levels[:, 0], target=torch.tensor([1, 3])).mean(dim=1)
    torch.testing.assert_close(ours.double(), ref.double(), atol=1e-6, rtol=0)
    assert ours.abs().amax() > 1e-4  # the map is not trivially zero


def test_probe_windows_cover_every_pixel_and_end_flush():
    from meaningful_perturbation.methods.start import probe_windows

    boxes = probe_windows((21, 13), 5, 4)
    rows = sorted({r for r, _ in boxes})
    cols = sorted({c for _, c in boxes})
    assert rows == [0, 4, 8, 12, 16] and cols == [0, 4, 8]  # 16 = 21 - 5 flush; 8 = 13 - 5 already on the grid
    cover = torch.zeros(21, 13)
    for r, c in boxes:
        cover[r : r + 5, c : c + 5] += 1
    assert (cover > 0).all()
    assert probe_windows((4, 4), 9, 2) == [(0, 0)]  # a window larger than the image is clipped to it


def test_occlusion_start_puts_each_rung_on_the_evidence():
    """TextureOracle: class k's evidence is box k. The start of every rung up to the box's
    area lies inside the box, and each rung keeps exactly round(a·P) lattice points."""
    from meaningful_perturbation.methods.start import occlusion_probe, probe_size, start_from

    model, x = _oracle(32, n=2)
    areas = (0.02, 0.04, 0.08)
    ctx, cfg, problem = _problem(model, x, [0, 1], areas=areas)  # image k holds the texture of box k
    importance, _ = occlusion_probe(problem, ctx.targets, ctx.clean_logits, (32, 32), *probe_size(cfg, (32, 32)))
    theta = start_from(importance, problem.theta, areas)
    gh, gw = theta.shape[-2:]
    P = gh * gw
    box = nn.functional.interpolate(region_masks(32, BOXES).unsqueeze(1), size=(gh, gw), mode="area").squeeze(1)
    for i, k in enumerate([0, 1]):
        for j, a in enumerate(areas):
            kept = theta[i, j, 0]
            assert set(kept.unique().tolist()) <= {0.0, 1.0}
            assert int(kept.sum()) == round(a * P)
            inside = (box[k][kept.bool()] > 0).double().mean()  # kept lattice points touching the evidence box
            assert inside == 1.0 if a < 0.05 else inside >= 0.9, (i, j, float(inside))


def test_start_from_keeps_a_constant_start_where_the_probe_is_flat():
    from meaningful_perturbation.methods.start import start_from

    theta = torch.full((2, 3, 1, 4, 4), 1.0)
    importance = torch.zeros(2, 8, 8)
    importance[1, :4, :4] = 1.0  # image 1: the top-left quarter matters
    out = start_from(importance, theta, (0.1, 0.25, 0.5))
    assert torch.equal(out[0], theta[0])  # flat map: the constant start, not a cut in pixel order
    assert torch.equal(out[1, 1, 0], torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert [int(out[1, j].sum()) for j in range(3)] == [2, 4, 8]


def test_start_setting_errors_and_the_constant_start():
    model, x = _oracle(24, n=1)
    with pytest.raises(ConfigError, match=r"start: expected one of 'constant', 'occlusion', got 'gt'"):
        mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, start="gt")
    with pytest.raises(ConfigError, match=r"init: a constant start value is used only with start='constant'.*got init=0.5"):
        mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, init=0.5)
    with pytest.raises(ConfigError, match=r"probe_window"):
        mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, probe_window=0)
    occ = mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, jitter="none")
    const = mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=2, jitter="none", start="constant")
    assert occ.extra["start"] == "occlusion" and const.extra["start"] == "constant"
    assert const.extra["probe_passes"] == 0
    # 24 px: window round(32·24/224) = 3, stride round(8·24/224) = 1 → 22 × 22 windows
    assert occ.extra["probe_passes"] == 22 * 22
    assert not torch.equal(occ.masks, const.masks)


def test_probe_settings_refused_where_they_would_do_nothing():
    model, x = _oracle(24, n=1)
    kw = dict(target=0, method="extremal-sweep", areas=AREAS, steps=2)
    with pytest.raises(ConfigError, match=r"^probe_window: expected a window smaller than the image's short side \(224 px"
                                          r".*got 1000"):
        mp.explain(model, x, probe_window=1000, **kw)
    with pytest.raises(ConfigError, match=r"^probe_window: used only by the occlusion start, got probe_window=16 with "
                                          r"start='constant'"):
        mp.explain(model, x, start="constant", probe_window=16, **kw)
    with pytest.raises(ConfigError, match=r"^probe_stride: used only by the occlusion start"):
        mp.explain(model, x, start="constant", probe_stride=4, **kw)
    with pytest.raises(ConfigError, match=r"^probe_stride: expected a stride no larger than the window \(probe_window=32\)"
                                          r", so that every pixel is probed, got 40"):
        mp.explain(model, x, probe_stride=40, **kw)
    # 223 px at 224 rounds to the whole 24 px side: one pixel less, so there is a region to rank
    # (a run-time refusal would come after `mperturb run` has made its folder)
    ex = mp.explain(model, x, probe_window=223, **kw)
    assert ex.extra["probe_passes"] == 2 * 2  # 23 px windows at rows/cols 0 and 1


def test_areas_as_numpy_or_torch_arrays_are_a_ladder():
    model, x = _oracle(24, n=1)
    kw = dict(target=0, method="extremal-sweep", steps=2, jitter="none")
    ref = mp.explain(model, x, areas=(0.05, 0.1, 0.2), **kw)
    for areas in (np.array([0.05, 0.1, 0.2]), torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)):
        ex = mp.explain(model, x, areas=areas, **kw)
        assert ex.extra["areas"] == [0.05, 0.1, 0.2]
        assert torch.equal(ex.masks, ref.masks)
    with pytest.raises(ConfigError, match=r"areas: expected a sorted sequence"):
        mp.explain(model, x, areas=np.array([[0.05, 0.1, 0.2]]), **kw)  # 2-d: refused, not flattened


def test_progress_bar_names_the_probe_and_times_the_steps_alone(capsys):
    model, x = _oracle(24, n=1)
    mp.explain(model, x, target=0, method="extremal-sweep", areas=AREAS, steps=3, jitter="none", progress=True)
    err = capsys.readouterr().err
    assert "extremal-sweep: occlusion probe, 484 windows" in err  # 24 px: window 3, stride 1
    after = err.split("occlusion probe")[-1]
    assert "\rextremal-sweep:   0%" in after and "0/3" in after  # then the steps, the bar reset after the probe


def test_cli_readout_names_each_area_and_the_summary_keeps_the_areas(tmp_path, capsys):
    import json

    from meaningful_perturbation.cli.explain import area_summary, masked_readout

    assert masked_readout([0.8714, 0.9021], {"areas": [0.05, 0.1]}) == "0.871 / 0.902 at 5% / 10%"
    assert masked_readout([0.8714], {"areas": [0.05]}) == "0.871"
    assert area_summary({"areas": [0.1, 0.2, 0.3], "achieved_area": [[0.1, 0.21, 0.3]], "area_missed": [[False] * 3],
                         "start": "occlusion", "probe_passes": 841, "other": 1}) == {
        "areas": [0.1, 0.2, 0.3], "achieved_area": [0.1, 0.21, 0.3], "area_missed": [False] * 3,
        "start": "occlusion", "probe_passes": 841}
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(img)
    assert main(["explain", str(img), "--method", "extremal-sweep", "--steps", "2", "--device", "cpu", "-q",
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "a_summary.json").read_text())
    assert summary["area"]["start"] == "occlusion" and summary["area"]["probe_passes"] == 841
    assert len(summary["area"]["achieved_area"]) == len(summary["area"]["area_missed"]) == 12
