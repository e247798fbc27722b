"""Figures draw the perturbed input the optimiser scored (issue 12 §5).

The oracle is the model itself: a model that records every batch it is given. The last batch
of a mask-learning run is the final ``scores["masked"]`` evaluation, ``blend(levels, m)`` with
the optimiser's own levels and the primary game's keep-mask; the figure's image must be that
batch, bit for bit, for every perturbation kind every preset accepts and every game.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation.cli.explain import _panel_tiles, _perturbed_input
from meaningful_perturbation.errors import ConfigError, InputError
from meaningful_perturbation.methods.common import make_levels, perturbation_levels, perturbed_input


class Recorder(torch.nn.Module):
    """A small conv net that keeps a copy of every input batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, 3, size, size, generator=g)


CASES = (
    [("paper", k, g) for k in ("blur", "constant", "fade", "noise") for g in ("delete", "preserve")]
    + [("seed", k, g) for k in ("median", "constant", "fade") for g in ("delete", "preserve")]
    + [("extremal", k, g) for k in ("blur", "fade", "constant") for g in ("preserve", "delete", "dual")]
)


@pytest.mark.parametrize("method,kind,game", CASES)
def test_figure_is_the_batch_the_optimiser_scored(method, kind, game):
    model = Recorder()
    x = _images()
    ex = mp.explain(model, x, method=method, steps=2, perturbation=kind, game=game, seed=5)
    assert ex.extra["seed"] == 5
    shown = perturbed_input(x, ex.masks, ex.config, seed=ex.extra["seed"], method=ex.method)  # (N, K, C, H, W)
    n, k = ex.masks.shape[:2]
    # run_problem scores the final masks with one forward of N·K images per game; the
    # optimisation steps saw earlier masks (and jitter/noise), so only that batch can match.
    scored = [b.view(n, k, *x.shape[1:]) for b in model.seen if b.shape[0] == n * k]
    assert any(torch.equal(shown, b) for b in scored)
    # ... and the image gives the reported masked probability.
    with torch.no_grad():
        probs = torch.softmax(model.net(shown.reshape(n * k, *x.shape[1:])), dim=1).view(n, k, -1)
    p = torch.stack([probs[i, :, ex.target[i]].sum(-1) for i in range(n)])  # summed over the target set
    torch.testing.assert_close(p, ex.scores["masked"], rtol=0, atol=1e-6)
    # Keep-mask semantics: where the mask is 1 the figure shows the input, where 0 the
    # fully perturbed level (every game's stored mask is the keep-mask of its primary game).
    levels = perturbation_levels(x, ex.config, generator=torch.Generator().manual_seed(5))
    ones, zeros = ex.masks == 1, ex.masks == 0
    xs = x.unsqueeze(1).expand_as(shown)
    assert torch.equal(shown.permute(0, 1, 3, 4, 2)[ones], xs.permute(0, 1, 3, 4, 2)[ones])
    full = levels[:, :1].expand_as(shown)
    assert torch.equal(shown.permute(0, 1, 3, 4, 2)[zeros], full.permute(0, 1, 3, 4, 2)[zeros])


@pytest.mark.parametrize("method", ["paper", "seed", "extremal"])
def test_preset_levels_are_the_shared_builder(method, monkeypatch):
    """Each preset builds its problem's levels with ``perturbation_levels`` (no second copy)."""
    from meaningful_perturbation.methods import common, extremal, paper, seed

    module = {"paper": paper, "seed": seed, "extremal": extremal}[method]
    calls = []
    real = common.perturbation_levels

    def spy(x, config, *, generator=None):
        out = real(x, config, generator=generator)
        calls.append(out)
        return out

    monkeypatch.setattr(module, "perturbation_levels", spy)
    mp.explain(Recorder(), _images(1), method=method, steps=1)
    assert len(calls) == 1
    assert mp.get_method(method).perturbation_levels is real


def test_noise_field_follows_the_seed():
    x = _images(1)
    mask = torch.zeros(1, 1, 16, 16)
    runs = {s: mp.explain(Recorder(), x, method="paper", steps=1, perturbation="noise", seed=s) for s in (0, 3)}
    a = perturbed_input(x, mask, runs[0].config, seed=runs[0].extra["seed"])
    b = perturbed_input(x, mask, runs[3].config, seed=runs[3].extra["seed"])
    assert not torch.allclose(a, b)
    # Seed 0 is the case script's make_levels(..., generator=Generator().manual_seed(0)).
    cfg = runs[0].config
    levels = make_levels(x, "noise", sigma=cfg["blur_sigma"] * 16 / cfg["reference_size"], num_levels=cfg["levels"],
                         noise=cfg["perturbation_noise"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[:, 0], levels[:, 0])
    # The CLI's thin wrapper draws the same image.
    assert torch.equal(_perturbed_input(x, mask, cfg, seed=0), a[:, 0])


def test_seed_and_figure_survive_save_and_load(tmp_path):
    x = _images(2)
    ex = mp.explain(Recorder(), x, method="paper", steps=2, perturbation="noise", seed=9)
    back = mp.Explanation.load(ex.save(tmp_path / "ex.npz"))
    assert back.extra["seed"] == 9 and back.config == ex.config
    assert ex[1].extra["seed"] == 9
    before = perturbed_input(x, ex.masks, ex.config, seed=ex.extra["seed"], method=ex.method)
    after = perturbed_input(x, back.masks, back.config, seed=back.extra["seed"], method=back.method)
    assert torch.equal(before, after)


def test_baselines_have_no_perturbed_input():
    x = _images(1)
    ex = mp.explain(Recorder(), x, method="gradient")
    with pytest.raises(ConfigError, match=r"method: 'gradient' learns no keep-mask"):
        perturbed_input(x, ex.masks, ex.config, method=ex.method)
    img, keep, label, kept_label = _panel_tiles(ex, x, 0)
    assert img is None and "no learned mask" in label and "saliency" in kept_label
    assert torch.equal(keep, ex.masks[:1, :1])


def test_mask_shape_is_checked():
    with pytest.raises(InputError, match=r"masks: expected \(N, K, H, W\) or \(N, H, W\) matching x of shape \(1, 3, 16, 16\), got \(1, 1, 8, 8\)"):
        perturbed_input(_images(1), torch.ones(1, 1, 8, 8), {"perturbation": "fade"})
    with pytest.raises(ConfigError, match=r"config: expected a 'perturbation' setting"):
        perturbed_input(_images(1), torch.ones(1, 1, 16, 16), {"layer": "auto"})


@pytest.mark.parametrize(
    "method,game,label,region",
    [
        ("paper", "delete", "deletion game: deleted region faded out", "deleted region"),
        ("paper", "preserve", "preservation game: all but the kept region faded out", "kept region"),
        ("seed", "delete", "deletion game: deleted region faded out", "deleted region"),
        ("extremal", "delete", "deletion game: deleted region faded out", "deleted region"),
        ("extremal", "preserve", "preservation game: all but the kept region faded out", "kept region"),
        ("extremal", "dual", "preservation game: all but the kept region faded out", "kept region"),
    ],
)
def test_panel_labels_say_what_is_drawn(method, game, label, region):
    x = _images(1)
    extra = {"areas": (0.05, 0.2)} if method == "extremal" else {}
    ex = mp.explain(Recorder(), x, method=method, steps=2, perturbation="fade", game=game, **extra)
    img, shown, perturbed_label, region_label = _panel_tiles(ex, x, 0)
    assert label in perturbed_label and region_label.startswith(region)
    # The region tile is the region the game is about: the deletion game shows what was
    # deleted (1 - keep), preservation what was kept (keep).
    keep = ex.masks[:1, :1]
    torch.testing.assert_close(shown, 1 - keep if game == "delete" else keep, rtol=0, atol=0)
    sal = ex.saliency[0] if method != "extremal" else None
    if sal is not None:
        torch.testing.assert_close(shown[0, 0], sal, rtol=0, atol=1e-6)
    # Fade: the perturbed input is x · keep exactly.
    torch.testing.assert_close(img, x * keep[0], rtol=0, atol=1e-6)


TINY = """
import torch
def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    return m, {"input_size": 32, "resize": 32}
"""


def test_cli_panel_uses_the_optimisers_perturbation(tmp_path, monkeypatch):
    """`mperturb explain` hands save_panel the optimiser's image and game labels."""
    from PIL import Image

    from meaningful_perturbation import figures
    from meaningful_perturbation.cli import main

    rng = np.random.default_rng(0)
    red = np.array([200, 40, 30]) + rng.integers(-20, 20, (40, 40, 3))  # far from the ImageNet mean (fade)
    Image.fromarray(red.astype(np.uint8)).save(tmp_path / "a.png")
    got = {}

    def fake_panel(path, **kw):
        got.update(kw)

    monkeypatch.setattr(figures, "save_panel", fake_panel)
    (tmp_path / "tiny.py").write_text(TINY)
    rc = main(["explain", str(tmp_path / "a.png"), "--model", f"python:{tmp_path / 'tiny.py'}:build", "--trust-code",
               "--out", str(tmp_path / "out"), "--steps", "2", "-q",
               "--set", "perturbation=constant", "--seed", "4"])
    assert rc == 0
    ex = mp.Explanation.load(tmp_path / "out" / "a.npz")
    assert ex.extra["seed"] == 4 and ex.config["perturbation"] == "constant"
    titles = [t for t, _ in got["columns"]]
    assert titles[0].startswith("perturbed input\n(deletion game: deleted region set to the mean colour)\np(")
    assert titles[1] == "deleted region\n(what the mask removed)"
    got["perturbed"] = got["columns"][0][1]
    # Constant: the tile is keep·image + (1 - keep)·(the image's mean colour), up to 8-bit rounding.
    keep = ex.masks[0, 0].numpy()[..., None].astype(np.float64)
    shown = got["original"].astype(np.float64)
    mean = shown.reshape(-1, 3).mean(0)
    assert (1 - keep).max() > 0.5  # a real deletion, where constant and fade differ by ~90 levels
    expected = keep * shown + (1 - keep) * mean
    assert np.abs(got["perturbed"].astype(np.float64) - expected).max() <= 1.5
