"""Figures a person understands and first contact (issue 14).

Degenerate explanations are detected in one place (explanation.degenerate_reason) and every
output says so; low-confidence predictions are flagged; the panel is titled in the game's
terms with the probabilities on it; Explanation's repr is short; run prints one line per item
when stderr is not a terminal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation import figures
from meaningful_perturbation.cli import main
from meaningful_perturbation.cli.explain import _p_label, _panel_columns
from meaningful_perturbation.demo import DEMO_NOTE
from meaningful_perturbation.errors import InputError
from meaningful_perturbation.explanation import NO_REGION_NOTE, degenerate_reason, low_confidence
from meaningful_perturbation.io import expand_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Constant(torch.nn.Module):
    """Ignores its input: no region can change its score."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0, 2.0, 0.5]]).expand(x.shape[0], 4) + 0 * x.mean((1, 2, 3))[:, None]


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _x(n: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["paper", "extremal-fast", "gradient"])
def test_constant_model_is_degenerate(method):
    kw = {} if method == "gradient" else {"steps": 3}
    with pytest.warns() if method == "extremal-fast" else _nothing():
        ex = mp.explain(Constant(), _x(), method=method, **kw)
    reason = degenerate_reason(ex, 0)
    assert reason is not None and reason.startswith(NO_REGION_NOTE)
    assert ex.degenerate_reason(0) == reason


def test_degenerate_thresholds_on_hand_made_scores():
    sal = torch.rand(1, 8, 8)
    base = dict(saliency=sal, masks=1 - sal[:, None], target=[[0]], config={"game": "delete"})
    moved = mp.Explanation(scores={"clean": torch.tensor([0.9]), "masked": torch.tensor([[0.2]]),
                                   "perturbed": torch.tensor([0.1])}, **base)
    assert degenerate_reason(moved) is None
    stuck = mp.Explanation(scores={"clean": torch.tensor([0.9]), "masked": torch.tensor([[0.8995]]),
                                   "perturbed": torch.tensor([0.1])}, **base)
    assert "the mask moves it by 0.0005" in degenerate_reason(stuck)
    flat = mp.Explanation(saliency=torch.full((1, 8, 8), 1e-7), masks=torch.ones(1, 1, 8, 8), target=[[0]],
                          scores=moved.scores, config={"game": "delete"})
    assert "the saliency map is flat" in degenerate_reason(flat)
    # Preservation: the kept region must restore the score away from the perturbed one.
    kept = mp.Explanation(scores={"clean": torch.tensor([0.9]), "masked": torch.tensor([[0.85]]),
                                  "perturbed": torch.tensor([0.1])}, **{**base, "config": {"game": "preserve"}})
    assert degenerate_reason(kept) is None
    lost = mp.Explanation(scores={"clean": torch.tensor([0.9]), "masked": torch.tensor([[0.1002]]),
                                  "perturbed": torch.tensor([0.1])}, **{**base, "config": {"game": "preserve"}})
    assert degenerate_reason(lost) is not None
    with pytest.raises(mp.InputError, match="image index 3 out of range for 1 images"):
        degenerate_reason(moved, 3)


def test_low_confidence_threshold():
    assert low_confidence(0.49) and low_confidence(0.0)
    assert not low_confidence(0.5) and not low_confidence(0.97)
    assert not low_confidence(None) and not low_confidence(float("nan"))


def test_repr_is_short():
    n = 64
    ex = mp.Explanation(saliency=torch.rand(n, 224, 224), masks=torch.rand(n, 3, 224, 224),
                        target=[[i % 10] for i in range(n)], scores={"clean": torch.rand(n)},
                        history={"loss": torch.rand(300, n, 3)}, method="extremal", head="logits")
    text = repr(ex)
    assert len(text) < 400 and str(ex) == text
    assert "method='extremal'" in text and "saliency=(64, 224, 224)" in text and "steps=300" in text
    assert "images=64" in text and text.count("[") < 12


def test_overlay_draws_a_degenerate_map_flat():
    rgb = np.full((20, 30, 3), 128, np.uint8)
    s = np.zeros((20, 30), np.float32)
    s[::2] = 1e-7  # stripes of 1e-7: min-max would stretch them to the full colour map
    stretched = figures.overlay(rgb, s)
    assert len(np.unique(stretched.reshape(-1, 3), axis=0)) == 2
    flat = figures.overlay(rgb, s, value_range=(0.0, 1.0))
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1
    # A mask-learning explanation is drawn over the mask's own units, never min-max.
    scores = {"clean": torch.tensor([0.5]), "masked": torch.tensor([[0.5]]), "perturbed": torch.tensor([0.1])}
    ex = mp.Explanation(saliency=torch.from_numpy(s)[None], masks=torch.ones(1, 1, 20, 30), target=[[0]],
                        scores=scores, method="paper")
    assert figures.saliency_range(ex, 0) == (0.0, 1.0)
    # A baseline (arbitrary units): min-max, unless its map is constant (then a unit range: flat).
    ex = mp.Explanation(saliency=torch.from_numpy(s)[None], masks=torch.ones(1, 1, 20, 30), target=[[0]],
                        scores={"clean": torch.tensor([0.5])}, method="gradient")
    assert figures.saliency_range(ex, 0) is None
    ex.saliency = torch.full((1, 20, 30), 0.25)
    assert figures.saliency_range(ex, 0) == (0.25, 1.25)


def test_panel_columns_in_the_games_terms():
    x = _x(1, 16)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())

    def to_image(t, region=None):
        t = t if region is None else t * region
        return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    ex = mp.explain(model, x, method="paper", steps=2, perturbation="blur")
    cols = _panel_columns(ex, x, ["cat"], to_image)
    assert [t.split("\n")[0] for t, _ in cols] == ["perturbed input", "deleted region"]
    assert cols[0][0].endswith(f"p(cat) = {float(ex.scores['masked'][0, 0]):.3f}")
    assert "deleted region blurred" in cols[0][0]
    ex = mp.explain(model, x, method="paper", steps=2, perturbation="blur", game="preserve")
    cols = _panel_columns(ex, x, ["cat"], to_image)
    assert cols[1][0].startswith("kept region")
    with pytest.warns(Warning):
        ex = mp.explain(model, x, method="extremal", steps=2, areas=(0.05, 0.2))
    cols = _panel_columns(ex, x, ["cat", "dog"], to_image)
    assert len(cols) == 2  # one column per area
    for (title, img), a, k in zip(cols, (0.05, 0.2), range(2)):
        kept = ex.extra["achieved_area"][0][k]  # the summary's and the area warning's value
        assert title.startswith(f"kept region: {kept:.1%} of image\n(target {a:.1%}; rest blurred)")
        assert title.endswith(f"p(cat + dog) = {float(ex.scores['masked'][0, k]):.3f}")
        assert img.shape == (16, 16, 3)
    assert _p_label(["a", "b"], "sigmoid") == "score(a + b)" and _p_label(["a"], "sigmoid") == "p(a)"


def test_history_helpers():
    from meaningful_perturbation.figures import _log_scale, _smooth, _upscale

    v = np.array([0.0, 1.0] * 50)
    sm = _smooth(v)
    assert sm.shape == v.shape and abs(sm[10:-10].mean() - 0.5) < 0.05 and sm[10:-10].std() < 0.15
    assert _log_scale(np.array([1000.0, 10.0, 1.0])) and not _log_scale(np.array([3.0, 1.0]))
    assert not _log_scale(np.array([-1.0, 100.0]))
    assert _upscale(np.zeros((32, 48, 3)), 256).shape == (256, 384, 3)
    assert _upscale(np.zeros((300, 300)), 256).shape == (300, 300)


def _photo(tmp_path: Path) -> Path:
    from PIL import Image
    from skimage import data

    p = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).resize((150, 113)).save(p)
    return p


def test_explain_flags_low_confidence_and_degenerate(tmp_path, capsys):
    photo = _photo(tmp_path)
    rc = main(["explain", str(EXAMPLES / "square.png"), str(photo), "--out", str(tmp_path / "o"), "--steps", "60"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count(DEMO_NOTE) == 1
    square = json.loads((tmp_path / "o" / "square_summary.json").read_text())
    cat = json.loads((tmp_path / "o" / "chelsea_summary.json").read_text())
    assert square["low_confidence"] is False and square["degenerate"] is False and square["degenerate_reason"] is None
    assert cat["low_confidence"] is True and cat["scores"]["clean"] < 0.5
    assert cat["degenerate"] is (cat["degenerate_reason"] is not None)
    line = [ln for ln in err.splitlines() if ln.startswith(str(photo))][0]
    assert "(low confidence: p < 0.5)" in line
    if cat["degenerate"]:
        assert NO_REGION_NOTE in line


def test_run_prints_one_line_per_item_without_a_terminal(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("square.png", "disc.png"):
        (src / name).write_bytes((EXAMPLES / name).read_bytes())
    _photo(src)
    rc = main(["run", str(src), "--out", str(tmp_path / "r"), "--steps", "10", "--batch-size", "1", "--report"])
    assert rc == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mperturb run: [")]
    assert [ln.split("]")[0] for ln in lines] == ["mperturb run: [1/3", "mperturb run: [2/3", "mperturb run: [3/3"]
    assert any("chelsea.png" in ln and "low confidence" in ln for ln in lines)
    assert err.count(DEMO_NOTE) == 1
    recs = {json.loads(ln)["path"]: json.loads(ln) for ln in (tmp_path / "r" / "results.jsonl").read_text().splitlines()}
    assert recs["chelsea.png"]["low_confidence"] is True and recs["square.png"]["low_confidence"] is False
    assert all(isinstance(r["degenerate"], bool) for r in recs.values())
    assert "low confidence (p clean &lt; 0.5)" in (tmp_path / "r" / "report.html").read_text()


def test_folder_without_images_names_the_cli_spelling(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes((EXAMPLES / "square.png").read_bytes())
    with pytest.raises(InputError, match=r"pass a quoted glob such as '.*/\*\*/\*\.jpg'"):
        expand_images([str(tmp_path)])
    assert expand_images([f"{tmp_path}/**/*.png"]) == [tmp_path / "sub" / "a.png"]
