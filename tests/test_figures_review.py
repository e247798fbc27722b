"""Figures review (probe C, items 2-5, 10-12): degenerate explanations drawn flat with a note in
the panel and the overlay; titles wrapped so no text is cut off or overlaps; the score axis
labelled from the method's score setting; the extremal columns' area equal to the summary's
``achieved_area``; the explain line's class separator and small probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation import figures
from meaningful_perturbation.cli import main
from meaningful_perturbation.cli.explain import _panel_columns, masked_readout, sweep_readout, target_text
from meaningful_perturbation.errors import ConfigError
from meaningful_perturbation.explanation import NO_REGION_NOTE

#: A python: model whose output barely depends on the image (no region changes its score, but
#: the optimised mask keeps a pattern), with WordNet-style names (commas) and a long one.
WEAK = '''
import torch
class Weak(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.0, 1.0, 2.0, 0.5, 0.3]))
    def forward(self, x):
        corner = x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return self.w.expand(x.shape[0], 5) + 1e-4 * corner[:, None] * torch.arange(5.0)
NAMES = ["tabby, tabby cat", "Egyptian cat", "Greater Swiss Mountain dog with a very long name indeed",
         "cauliflower", "passenger car, coach, carriage"]
def build():
    return Weak(), {"input_size": 64, "resize": 64, "class_names": NAMES}
'''

#: A python: model whose target logit (0.884 for class 0) lies in [0, 1] while p(class 0) does not
#: equal it: the score axis must not be guessed from the values.
CONST = '''
import torch
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.conv = torch.nn.Conv2d(3, 4, 3)
    def forward(s, x):
        return torch.tensor([[0.884, 0.1, 0.2, -0.3]]).expand(x.shape[0], 4) + 0 * s.conv(x).mean()
def build(): return M(), {"input_size": 64, "resize": 64}
'''


def _photo(tmp_path: Path, name: str = "chelsea", size: tuple[int, int] | None = None) -> Path:
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    if size is not None:
        img = img.resize(size)
    p = tmp_path / f"{name}.png"
    img.save(p)
    return p


def _model(tmp_path: Path, source: str, name: str) -> str:
    f = tmp_path / f"{name}.py"
    f.write_text(source)
    return f"python:{f}:build"


def _spy_panel(monkeypatch) -> dict:
    seen: dict = {}
    real = figures.save_panel

    def spy(path, **kw):
        seen.update(kw)
        return real(path, **kw)

    monkeypatch.setattr(figures, "save_panel", spy)
    return seen


# -- C2: degenerate explanations are drawn flat, with the reason, in the overlay and the panel

def test_degenerate_explanation_is_flat_with_a_note_in_overlay_and_panel(tmp_path, monkeypatch, capsys):
    photo = _photo(tmp_path)  # 451 x 300: the overlay keeps it
    spec = _model(tmp_path, WEAK, "weak")
    seen = _spy_panel(monkeypatch)
    out = tmp_path / "o"
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--steps", "20", "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "chelsea_summary.json").read_text())
    assert summary["degenerate"] is True
    ex = mp.Explanation.load(out / "chelsea.npz")
    s = ex.saliency[0]
    assert float(s.max() - s.min()) > 0.1  # the optimised mask left a pattern: it must not be drawn
    # Overlay: below the note's band, exactly the photo blended with the colour map's lowest colour.
    drawn = np.asarray(Image.open(out / "chelsea_overlay.png").convert("RGB"))
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    assert drawn.shape == rgb.shape
    flat = figures.overlay(rgb, np.zeros(rgb.shape[:2]), value_range=(0.0, 1.0))
    changed = np.any(drawn != flat, axis=2)
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.size and rows.max() < rgb.shape[0] // 2, "only the note's band at the top differs from a flat map"
    band = drawn[: rows.max() + 1]
    assert (band.min(axis=2) > 200).mean() > 0.3  # a white band holding the note
    # Panel: the saliency tile is one colour, titled degenerate, with the reason over it.
    assert seen["note"] == summary["degenerate_reason"] and seen["note"].startswith(NO_REGION_NOTE)
    fig = figures.panel_figure(**seen)
    (sal_ax,) = [a for a in fig.axes if a.get_title() == "saliency (degenerate)"]
    assert np.ptp(np.asarray(sal_ax.images[0].get_array())) == 0
    assert " ".join(sal_ax.texts[0].get_text().split()) == seen["note"]


def test_drawn_saliency_and_panel_flatten_only_degenerate_maps():
    sal = torch.zeros(1, 20, 30)
    sal[0, :5, :5] = 0.6  # a corner pattern
    stuck = {"clean": torch.tensor([0.5]), "masked": torch.tensor([[0.5]]), "perturbed": torch.tensor([0.5])}
    ex = mp.Explanation(saliency=sal, masks=1 - sal[:, None], target=[[0]], scores=stuck, method="paper",
                        config={"game": "delete"})
    m, rng, note = figures.drawn_saliency(ex, 0)
    assert note == ex.degenerate_reason(0) and note.startswith(NO_REGION_NOTE)
    assert m.shape == (20, 30) and not m.any() and rng == (0.0, 1.0)
    big = np.ones((40, 60), np.float32)  # a map at another size (the photo's): flat at that size
    assert figures.drawn_saliency(ex, 0, big)[0].shape == (40, 60) and not figures.drawn_saliency(ex, 0, big)[0].any()
    ex.scores = {"clean": torch.tensor([0.9]), "masked": torch.tensor([[0.2]]), "perturbed": torch.tensor([0.1])}
    m, rng, note = figures.drawn_saliency(ex, 0)
    assert note is None and np.array_equal(m, sal[0].numpy()) and rng == (0.0, 1.0)
    # save_panel with a note draws the tile flat whatever map it is given.
    fig = figures.panel_figure(original=np.zeros((20, 30, 3), np.uint8), saliency=sal[0].numpy(),
                                value_range=(0.0, 1.0), note="no region found")
    (sal_ax,) = [a for a in fig.axes if a.get_title() == "saliency (degenerate)"]
    assert np.ptp(np.asarray(sal_ax.images[0].get_array())) == 0


def test_overlay_note_leaves_the_rest_of_the_image_alone(tmp_path):
    rgb = np.asarray(Image.open(_photo(tmp_path, "coffee")).convert("RGB"))
    sal = np.random.default_rng(0).random(rgb.shape[:2])
    figures.save_overlay(tmp_path / "a.png", rgb, sal, note="degenerate explanation: " + NO_REGION_NOTE)
    figures.save_overlay(tmp_path / "b.png", rgb, sal)
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == b.shape == rgb.shape
    rows = np.flatnonzero(np.any(a != b, axis=(1, 2)))
    assert rows.size and rows.min() < 10 and rows.max() < rgb.shape[0] // 4
    tiny = np.zeros((24, 24, 3), np.uint8)  # a small image still gets its note, at its own size
    figures.save_overlay(tmp_path / "t.png", tiny, np.zeros((24, 24)), note="no region found")
    assert np.asarray(Image.open(tmp_path / "t.png")).shape == (24, 24, 3)


# -- C3: nothing cut off, nothing overlapping -------------------------------------------------

def _texts(fig):
    """Every text ``fig`` draws: (description, window extent in pixels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = list(fig.texts)
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.get_legend() is not None:
            found += ax.get_legend().get_texts()
        if ax.axison:
            for axis in (a for a in (ax.xaxis, ax.yaxis) if a.get_visible()):  # a twin's x axis is hidden
                found += [axis.label, axis.get_offset_text()]
                for tick in axis._update_ticks():  # the ticks inside the view, as drawn
                    found += [lab for lab in (tick.label1, tick.label2) if lab.get_visible()]
    return [(repr(t.get_text())[:60], t.get_window_extent(renderer)) for t in found
            if t.get_visible() and str(t.get_text()).strip()]


def _assert_readable(fig):
    w, h = fig.canvas.get_width_height()
    texts = _texts(fig)
    for name, box in texts:
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= w + 0.5 and box.y1 <= h + 0.5, \
            f"{name} is cut off: {box} outside {w}x{h}"
    for i, (n1, b1) in enumerate(texts):
        for n2, b2 in texts[i + 1:]:
            inter_w = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
            inter_h = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
            assert not (inter_w > 0.5 and inter_h > 0.5), f"{n1} overlaps {n2}"


LONG = ["tabby, tabby cat", "Greater Swiss Mountain dog", "passenger car, coach, carriage", "head cabbage",
        "stethoscope"]


def _history(steps: int = 40):
    t = np.arange(steps, dtype=np.float64)
    return {"loss": 1 + np.exp(-t / 9), "score_delete": 0.8 * np.exp(-t / 7), "l1": 1 - t / steps, "tv": t / steps}


@pytest.mark.parametrize("names", [["Greater Swiss Mountain dog"], LONG])
def test_panel_titles_are_wrapped_inside_the_figure_and_do_not_overlap(tmp_path, names):
    from skimage import data

    cat = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)))
    p = "p(" + " + ".join(names) + ")"
    cols = [(f"perturbed input\n(deletion game: deleted region blurred)\n{p} = 0.011", cat),
            ("deleted region\n(what the mask removed)", cat)]
    title = (f"chelsea.jpg: paper (deletion game), model timm:vit_tiny_patch16_224:NONE, target {' + '.join(names)}\n"
             f"{p}: clean 0.012 → with the mask 0.011; whole image perturbed 0.005  [low confidence: p < 0.5]")
    fig = figures.panel_figure(original=cat, saliency=np.random.default_rng(0).random((224, 224)), columns=cols,
                                history=_history(), title=title, original_label=f"original\n{p} = 0.012 (low confidence)",
                                value_range=(0.0, 1.0), note=NO_REGION_NOTE + " (the mask moves it by 0.00056)",
                                colorbar_label="deleted (1 − mask)", score_kind="prob")
    _assert_readable(fig)
    fig.savefig(tmp_path / "panel.png")  # and it renders


@pytest.mark.parametrize("names", [LONG[1:2], LONG[:3]])
def test_sweep_panel_curve_label_does_not_overlap_the_optimisation_plot(names):
    from skimage import data

    cup = np.asarray(Image.fromarray(data.coffee()).resize((224, 224)))
    areas = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]
    p = "p(" + " + ".join(names) + ")"
    cols = [(f"kept region: {a:.1%} of image\n(optimised mask reached 19.2%; rest blurred)\n{p} = 0.013", cup)
            for a in areas[::2]]
    hist = {"loss": np.linspace(50, 400, 5), "score_preserve": np.array([3.63, 3.45, 3.56, 3.40, 3.51]),
            "area": np.linspace(1, 0.8, 5)}
    curve = {"areas": areas, "preserved": np.linspace(0.011, 0.032, 6), "clean": 0.035, "perturbed": 0.010,
             "sufficient_area": float("nan"), "keep_fraction": 0.9, "label": p}
    fig = figures.panel_figure(original=cup, saliency=np.random.default_rng(1).random((224, 224)), columns=cols,
                                history=hist, title="coffee.jpg: extremal-sweep\n" + p, value_range=(0.0, 1.0),
                                colorbar_label="how early the pixel is kept\n(log scale of the area at entry; 1 = first)",
                                curve=curve, score_kind="logit")
    _assert_readable(fig)


def test_cli_panel_with_long_comma_names_is_readable(tmp_path, monkeypatch):
    photo = _photo(tmp_path, "astronaut", (128, 128))
    spec = _model(tmp_path, WEAK, "weak")
    seen = _spy_panel(monkeypatch)
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--method", "extremal-fast", "--steps", "4",
                 "--set", "probe_stride=16", "--target", "0,2,4", "--out", str(tmp_path / "o"), "-q"]) == 0
    _assert_readable(figures.panel_figure(**seen))


# -- C4: the score axis says what was optimised -----------------------------------------------

def _score_axis(fig):
    (ax,) = [a for a in fig.axes if a.get_xlabel() == "step"]
    return ax


@pytest.mark.parametrize("kind, label", [("prob", "p(target)"), ("logit", "score (logit)"),
                                         ("contrastive", "score (logit − best other)"), (None, "score")])
def test_score_axis_is_labelled_from_the_score_setting_not_the_values(kind, label):
    values = {"score_preserve": np.full(10, 0.884)}  # a logit that happens to lie in [0, 1]
    fig = figures.panel_figure(original=np.zeros((8, 8, 3), np.uint8), saliency=np.zeros((8, 8)), history=values,
                                score_kind=kind)
    ax = _score_axis(fig)
    assert ax.get_ylabel() == label
    if kind == "prob":
        assert ax.get_ylim() == (0.0, 1.0)
    else:
        lo, hi = ax.get_ylim()
        assert hi - lo < 0.5  # its own range, not a probability's fixed axis
    with pytest.raises(ConfigError, match=r"^score_kind: expected one of \['prob', 'logit', 'contrastive'\] or None, "
                                          r"got 'p'$"):
        figures.panel_figure(original=np.zeros((8, 8, 3), np.uint8), saliency=np.zeros((8, 8)), score_kind="p")


def test_cli_passes_the_methods_score_setting(tmp_path, monkeypatch):
    photo = _photo(tmp_path, "coffee", (96, 64))
    spec = _model(tmp_path, CONST, "const")
    seen = _spy_panel(monkeypatch)
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--method", "extremal-fast", "--steps",
                 "3", "--set", "probe_stride=32", "--out", str(tmp_path / "e"), "-q"]) == 0
    assert seen["score_kind"] == "logit"
    assert _score_axis(figures.panel_figure(**seen)).get_ylabel() == "score (logit)"
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--steps", "3", "--out", str(tmp_path / "p"),
                 "-q"]) == 0
    assert seen["score_kind"] == "prob"


def test_score_curve_legend_shows_raw_and_smoothed_and_steps_are_integers():
    def legend(steps):
        fig = figures.panel_figure(original=np.zeros((8, 8, 3), np.uint8), saliency=np.zeros((8, 8)),
                                    history=_history(steps), score_kind="prob")
        ax = _score_axis(fig)
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        return [t.get_text() for t in ax.get_legend().get_texts()]

    assert legend(100) == ["delete game (raw)", "delete game (mean over 5 steps)"]
    assert legend(4) == ["delete game"]  # too few steps to smooth: one line


# -- C5: the columns' area is the summary's achieved_area --------------------------------------

def _to_image(t, region=None):
    t = t if region is None else t * region
    return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_extremal_columns_show_the_achieved_area_of_the_summary():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.warns(Warning):
        ex = mp.explain(model, x, method="extremal", steps=3, areas=(0.05, 0.2))
    achieved = ex.extra["achieved_area"][0]
    assert any(abs(a - float(ex.masks[0, k].mean())) > 0.001 for k, a in enumerate(achieved))  # the two differ
    cols = _panel_columns(ex, x, ["cat"], _to_image)
    for (title, _), a in zip(cols, achieved):
        assert title.startswith(f"kept region: {a:.1%} of image\n"), title
    with pytest.warns(Warning):
        sw = mp.explain(model, x, method="extremal-sweep", steps=2, areas=(0.05, 0.1, 0.2))
    cols = _panel_columns(sw, x, ["cat"], _to_image)
    for (title, _), shown, reached in zip(cols, sw.extra["mask_area"], sw.extra["achieved_area"][0]):
        assert title.startswith(f"kept region: {shown:.1%} of image\n(optimised mask reached {reached:.1%};"), title


# -- C10, C11: the explain line ----------------------------------------------------------------

def test_target_text_and_probability_format():
    assert target_text([0, 1], ["tabby, tabby cat", "Egyptian cat"]) == "tabby, tabby cat + Egyptian cat (--target 0,1)"
    assert target_text([3, 1], ["cauliflower", "Egyptian cat"]) == "cauliflower + Egyptian cat"
    assert figures.format_p(0.00045) == "4.5e-04" and figures.format_p(0.173) == "0.173"
    assert figures.format_p(0.0) == "0.000" and figures.format_p(float("nan")) == "nan"
    assert masked_readout([0.00012, 0.5], {"areas": [0.05, 0.1]}) == "1.2e-04 / 0.500 at 5% / 10%"
    assert sweep_readout({"sufficient_area": [0.1], "masked": [0.0002, 0.9]}) == \
        "sufficient area 10.0% (curve 2.0e-04 -> 0.900 over 2 areas)"


def test_explain_line_separates_classes_with_plus_and_round_trips_to_target(tmp_path, capsys, monkeypatch):
    photo = _photo(tmp_path, "chelsea", (96, 64))
    spec = _model(tmp_path, WEAK, "weak")
    seen = _spy_panel(monkeypatch)
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--steps", "2", "--target",
                 "tabby,Egyptian cat", "--out", str(tmp_path / "o")]) == 0
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(str(photo))][0]
    assert ": target tabby, tabby cat + Egyptian cat (--target 0,1), p clean " in line, line
    assert "target tabby, tabby cat + Egyptian cat (--target 0,1)" in seen["title"]
    # The spelling the line gives is accepted by --target and names the same classes.
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--steps", "2", "--target", "0,1",
                 "--out", str(tmp_path / "o2"), "-q"]) == 0
    assert json.loads((tmp_path / "o2" / "chelsea_summary.json").read_text())["target"] == [0, 1]


def test_explain_line_prints_small_probabilities_with_significant_digits(tmp_path, capsys):
    src = '''
import torch
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.conv = torch.nn.Conv2d(3, 1, 3)
    def forward(s, x):
        return torch.tensor([[0.0, 8.0, 8.0]]).expand(x.shape[0], 3) + 0 * s.conv(x).mean()
def build(): return M(), {"input_size": 32, "resize": 32}
'''
    photo = _photo(tmp_path, "coffee", (48, 32))
    spec = _model(tmp_path, src, "small")
    assert main(["explain", str(photo), "--model", spec, "--trust-code", "--steps", "2", "--target", "0",
                 "--out", str(tmp_path / "o")]) == 0
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(str(photo))][0]
    p = 1 / (1 + 2 * np.exp(8.0))  # 1.7e-04
    assert f"p clean {p:.1e}" in line and "0.000" not in line, line
