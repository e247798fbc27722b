"""What a model's head returns (logits, probabilities, one sigmoid column, multi-label), target
forms (multi-hot, duplicates) and output containers (tuples, dicts): one design used by the
API, the metrics, the CLI and the runner (issue 12 §1, §7)."""

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation import metrics as M
from meaningful_perturbation.cli import main
from meaningful_perturbation.core.head import Head, model_output, resolve_head
from meaningful_perturbation.core.objective import Targets, class_score
from meaningful_perturbation.errors import ConfigError, HeadWarning, InputError, ModelError
from meaningful_perturbation.targets import resolve_target

from oracles import TextureOracle, region_masks, textured_image

SRC = Path(__file__).resolve().parents[1] / "src" / "meaningful_perturbation"
SIZE = 32


class Softmaxed(nn.Module):
    """A deployed model that ends in a softmax."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


class QuadrantDetector(nn.Module):
    """Binary detector with ONE output logit: z grows with the texture energy in one quadrant."""

    def __init__(self, quadrant=(slice(16, 32), slice(16, 32)), sigmoid: bool = False) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(3.0))
        self.q = quadrant
        self.sigmoid = sigmoid

    def forward(self, x):
        gy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        gx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        e = (gy**2 + gx**2).mean(1)
        e = e[:, self.q[0].start : self.q[0].stop - 1, self.q[1].start : self.q[1].stop - 1].mean((1, 2))
        z = (self.k * torch.log1p(e) - 2)[:, None]
        return torch.sigmoid(z) if self.sigmoid else z


def _quadrant_image(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(1, 3, SIZE, SIZE, generator=g)
    x[0, :, 16:, 16:] = 1.5 * torch.randn(3, 16, 16, generator=g)
    return x


QUAD = torch.zeros(SIZE, SIZE, dtype=torch.bool)
QUAD[16:, 16:] = True


# ----------------------------------------------------------------------------- head detection
def test_auto_detects_each_head_and_warns_only_where_ambiguous():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_head("auto", z) == Head("logits", detected=True)
        assert resolve_head("auto", torch.softmax(z, 1)) == Head("probabilities", detected=True)
        assert resolve_head("auto", torch.softmax(z, 1).half().float()) == Head("probabilities", detected=True)
        assert resolve_head("auto", torch.tensor([[2.3], [-0.4]])) == Head("sigmoid", detected=True)
    with pytest.warns(HeadWarning, match=r"one output column whose values \(0\.3 to 0\.8\) all lie in \[0, 1\]"):
        assert resolve_head("auto", torch.tensor([[0.3], [0.8]])).kind == "sigmoid"
    with pytest.warns(HeadWarning, match=r"all 3 outputs lie in \[0, 1\] but the rows do not sum to 1"):
        assert resolve_head("auto", torch.sigmoid(z)).kind == "logits"


def test_explicit_head_contradicted_by_the_values_is_refused():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    with pytest.raises(ConfigError, match=r"head: 'probabilities' needs rows of non-negative values summing to 1, "
                                          r"but the model's rows have negative values"):
        resolve_head("probabilities", z)
    with pytest.raises(ConfigError, match=r"head: 'sigmoid-probabilities' needs outputs in \[0, 1\], got values "
                                          r"from -1 to 2; use head='sigmoid'"):
        resolve_head("sigmoid-probabilities", z)
    with pytest.raises(ConfigError, match=r"head: expected one of 'auto', 'logits', 'probabilities', 'sigmoid', "
                                          r"'sigmoid-probabilities', got 'softmax'"):
        mp.explain(nn.Flatten(), torch.zeros(1, 1, 2, 2), head="softmax")


def test_scores_per_head():
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    t = Targets([[0]], device="cpu")
    p = torch.softmax(z, 1)
    probs = Head("probabilities")
    # The probability is the model's own; the contrastive score equals the logit difference.
    assert torch.allclose(class_score(p, t, "prob", probs), p[:, 0])
    assert torch.allclose(class_score(p, t, "contrastive", probs), class_score(z, t, "contrastive"), atol=1e-5)
    assert torch.allclose(class_score(p, t, "logit", probs), torch.log_softmax(z, 1)[:, 0], atol=1e-6)
    sig = Head("sigmoid")
    assert torch.allclose(class_score(z, t, "prob", sig), torch.sigmoid(z[:, 0]))
    assert torch.allclose(class_score(torch.sigmoid(z), t, "logit", Head("sigmoid-probabilities")), z[:, 0], atol=1e-5)
    one = torch.tensor([[1.5]])
    assert torch.allclose(class_score(one, t, "contrastive", sig), one[:, 0])  # no other class to contrast


# -------------------------------------------------------------------------- probability heads
@pytest.mark.parametrize("method", ["paper", "extremal-fast", "occlusion"])
def test_softmax_ended_model_gives_the_logit_models_explanation(method):
    torch.manual_seed(0)
    oracle = TextureOracle(SIZE, log=True).eval()
    x = textured_image(SIZE, 1)
    # extremal: the contrastive score is the same on log-probabilities as on logits
    # (log p_c - log p_o = z_c - z_o); its default "logit" score reads log p (the logit is gone).
    kw = {"paper": dict(steps=40), "extremal-fast": dict(steps=40, areas=(0.1,), score="contrastive"),
          "occlusion": {}}[method]
    a = mp.explain(oracle, x, target=1, method=method, **kw)
    b = mp.explain(Softmaxed(oracle), x, target=1, method=method, **kw)
    assert a.head == "logits" and b.head == "probabilities"
    p = float(torch.softmax(oracle(x), 1)[0, 1].detach())
    assert float(b.scores["clean"][0]) == pytest.approx(p, abs=1e-6)  # not softmaxed twice
    assert torch.allclose(a.saliency, b.saliency, atol=2e-3)


def test_confident_probability_on_many_classes_is_reported_as_given():
    class Peaked(nn.Module):
        def forward(self, x):
            row = torch.full((1000,), 0.11 / 999)
            row[7] = 0.89
            return row.expand(x.shape[0], 1000) * (1 + 0 * x.mean())

    ex = mp.explain(Peaked(), torch.zeros(1, 3, 16, 16), method="occlusion")
    assert ex.target == [[7]] and float(ex.scores["clean"][0]) == pytest.approx(0.89, abs=1e-6)


# ------------------------------------------------------------------------------ one column
@pytest.mark.parametrize("method", ["paper", "seed", "occlusion", "rise"])
def test_single_logit_binary_classifier_is_explained_where_the_evidence_is(method):
    x = _quadrant_image()
    det = QuadrantDetector()
    kw = {"paper": dict(steps=80), "seed": dict(steps=80), "occlusion": {}, "rise": dict(n_masks=500)}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadWarning)
        ex = mp.explain(det, x, target=0, method=method, **kw)
    assert ex.head == "sigmoid"
    assert float(ex.scores["clean"][0]) == pytest.approx(float(torch.sigmoid(det(x))[0, 0].detach()), abs=1e-6)
    assert float(ex.scores["clean"][0]) < 0.999  # not the softmax of one column (always 1)
    s = ex.saliency[0]
    assert float(s[QUAD].mean()) > 2 * float(s[~QUAD].mean()) + 1e-4


def test_sigmoid_applied_single_column_needs_and_honours_its_head():
    x = _quadrant_image()
    det = QuadrantDetector(sigmoid=True)
    p = float(det(x)[0, 0].detach())
    ex = mp.explain(det, x, method="paper", steps=60, head="sigmoid-probabilities")
    assert ex.head == "sigmoid-probabilities" and float(ex.scores["clean"][0]) == pytest.approx(p, abs=1e-6)
    s = ex.saliency[0]
    assert float(s[QUAD].mean()) > 2 * float(s[~QUAD].mean())
    with pytest.warns(HeadWarning, match="sigmoid-probabilities"):
        mp.explain(det, x, method="occlusion")


def test_vector_output_error_no_longer_advises_a_silently_wrong_form():
    with pytest.raises(ModelError, match=r"got a vector of shape \(1,\); for a binary classifier with one logit "
                                         r"return it as one column, out.unsqueeze\(1\) \(read with a sigmoid"):
        mp.explain(lambda z: QuadrantDetector()(z)[:, 0], _quadrant_image(), steps=2)


def test_multilabel_sigmoid_head_scores_each_class_independently():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    x = torch.randn(1, 3, 16, 16)
    ex = mp.explain(model, x, target=[[1, 4]], method="paper", steps=3, head="sigmoid")
    z = model(x).detach()
    expected = float(torch.sigmoid(z[0, 1]) + torch.sigmoid(z[0, 4]))
    assert ex.head == "sigmoid" and float(ex.scores["clean"][0]) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------- targets
def test_multi_hot_targets_in_every_dtype_and_form():
    logits = torch.zeros(2, 22)
    labels = torch.zeros(2, 22)
    labels[0, [2, 7, 13, 17]] = 1
    labels[1, 5] = 1
    expected = [[2, 7, 13, 17], [5]]
    for t in (labels, labels.long(), labels.bool(), labels.tolist(), [r.int().tolist() for r in labels]):
        assert resolve_target(t, logits) == expected
    # Index forms still read as indices; an (N, classes) 0/1 matrix is multi-hot in every
    # dtype, also with two classes ([[1, 0]] is class 0, not "classes 1 and 0").
    assert resolve_target(torch.tensor([[2, 7], [5, 6]]), logits) == [[2, 7], [5, 6]]
    two = torch.zeros(1, 2)
    for t in ([[1, 0]], torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]])):
        assert resolve_target(t, two) == [[0]]
    assert resolve_target(torch.tensor([[1, 1]]), two, head=Head("sigmoid")) == [[0, 1]]
    assert resolve_target(torch.tensor([[0]]), torch.zeros(1, 1)) == [[0]]  # one column: its class list
    # NumPy forms.
    assert resolve_target(np.int64(3), logits) == [[3], [3]]
    assert resolve_target(np.array([1, 4]), logits) == [[1], [4]]
    assert resolve_target(labels.numpy(), logits) == expected
    assert resolve_target([1, 0], logits) == [[1], [0]]
    with pytest.raises(InputError, match=r"target: row 1 of the multi-hot matrix has no positive class"):
        resolve_target(torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.zeros(2, 3))
    with pytest.raises(InputError, match=r"target: expected an integer tensor of class indices or an \(2, 22\) "
                                         r"multi-hot 0/1 matrix, got tensor of shape \(2, 22\) and dtype torch.float32"):
        resolve_target(labels * 0.5, logits)


def test_a_class_set_of_every_class_under_a_softmax_is_refused_and_top_k_stops_short():
    with pytest.raises(InputError, match=r"target: image 0's class list holds all 2 classes of the model; under a "
                                         r"softmax head their probabilities sum to 1 whatever the input"):
        resolve_target(torch.tensor([[1, 1]]), torch.zeros(1, 2))
    with pytest.raises(InputError, match="holds all 3 classes"):
        resolve_target([[0, 1, 2]], torch.zeros(1, 3), head=Head("probabilities"))
    assert resolve_target([[0, 1, 2]], torch.zeros(1, 3), head=Head("sigmoid")) == [[0, 1, 2]]
    # paper-loc's top-5 on a 3-class model: the top 2 (a set of all 3 would be constant).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(1, 3, 16, 16)
    ex = mp.explain(model, x, method="paper-loc", steps=2)
    assert len(ex.target[0]) == 2 and float(ex.scores["clean"][0]) < 1 - 1e-4
    # A softmax over one column is refused as an explicit head.
    with pytest.raises(ConfigError, match=r"head: 'logits' reads the outputs with a softmax, but the model has one "
                                          r"output column"):
        mp.explain(QuadrantDetector(), _quadrant_image(), head="logits", steps=2)


def test_multi_hot_target_on_a_detected_softmax_head_warns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    with pytest.warns(HeadWarning, match=r"head: a multi-hot target with several classes per image, but the model's "
                                         r"output was read as logits"):
        mp.explain(model, torch.randn(1, 3, 16, 16), target=labels, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadWarning)
        mp.explain(model, torch.randn(1, 3, 16, 16), target=labels, steps=2, head="sigmoid")


def test_a_declared_multilabel_hf_config_is_read_with_a_sigmoid():
    class HFLike(nn.Module):
        def __init__(self, problem):
            super().__init__()
            self.config = type("C", (), {"problem_type": problem})()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    x = torch.randn(1, 3, 8, 8)
    assert mp.explain(HFLike("multi_label_classification"), x, method="occlusion").head == "sigmoid"
    assert mp.explain(HFLike("single_label_classification"), x, method="occlusion").head == "logits"


def test_repeated_classes_are_refused():
    with pytest.raises(InputError, match=r"target: class 3 appears 3 times in the class list of image 0; list each "
                                         r"class once"):
        resolve_target([[3, 3, 3]], torch.zeros(1, 10))
    with pytest.raises(InputError, match=r"class 1 appears 2 times in the class list of image 1"):
        resolve_target(torch.tensor([[0, 2], [1, 1]]), torch.zeros(2, 10))


def test_explain_with_a_multi_hot_label_explains_its_positive_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 22))
    labels = torch.zeros(1, 22)
    labels[0, [2, 7, 13, 17]] = 1
    ex = mp.explain(model, torch.randn(1, 1, 16, 16), target=labels, method="paper", steps=2, head="sigmoid")
    assert ex.target == [[2, 7, 13, 17]]


# ------------------------------------------------------------------------- output containers
class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(f), f


def test_output_containers():
    z = torch.randn(2, 5)
    assert model_output({"logits": z, "aux": 1}, 2, where="here") is z
    with pytest.raises(ModelError, match=r"model output here: expected one tensor of shape \(2, classes\), got a tuple "
                                         r"of 2 items \(tensor \(2, 5\), tensor \(2, 8\)\); wrap the model so it returns "
                                         r"the class scores only, e.g. lambda x: model\(x\)\[0\]"):
        model_output((z, torch.zeros(2, 8)), 2, where="here")
    with pytest.raises(ModelError, match=r"got a dict with keys 'scores', 'feat' and no 'logits'"):
        model_output({"scores": z, "feat": z}, 2, where="here")
    with pytest.raises(ModelError, match=r"got a list of 1 items"):
        mp.explain(lambda x: [z[:1]], torch.zeros(1, 3, 8, 8), steps=2)
    ex = mp.explain(lambda x: {"logits": TupleNet()(x)[0]}, torch.randn(1, 3, 8, 8), steps=2)
    assert ex.saliency.shape == (1, 8, 8)


TUPLE_FACTORY = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)
    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(f), f
def build():
    torch.manual_seed(0)
    return Net(), {"input_size": 32, "resize": 32}
"""

MULTILABEL_FACTORY = """
import torch
def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6))
    return m, {"input_size": 32, "resize": 32}
"""

ONE_COLUMN_FACTORY = """
import torch
class Det(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(4.0))
    def forward(self, x):
        return (self.w * x[:, :1].mean((2, 3)) + 2.0)
def build():
    return Det(), {"input_size": 32, "resize": 32}
"""


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(d / f"im{i}.png")
    return d


def test_cli_and_manifest_targets_of_several_classes(tmp_path, images, capsys):
    f = tmp_path / "ml.py"
    f.write_text(MULTILABEL_FACTORY)
    out = tmp_path / "out"
    rc = main(["explain", str(images / "im0.png"), "--model", f"python:{f}:build", "--trust-code", "--steps", "2",
               "--out", str(out), "-q", "--head", "sigmoid", "--target", "1,3"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "im0_summary.json").read_text())
    assert summary["target"] == [1, 3] and summary["head"] == "sigmoid"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(images / "im0.png"), "target": [2, 4]}) + "\n"
                        + json.dumps({"path": str(images / "im1.png"), "target": "0,5"}) + "\n")
    rc = main(["run", str(manifest), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out",
               str(tmp_path / "r"), "-q", "--head", "sigmoid"])
    assert rc == 0, capsys.readouterr().err
    rows = sorted((json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()),
                  key=lambda r: r["path"])
    assert [r["target"] for r in rows] == [[2, 4], [0, 5]]


@pytest.mark.parametrize("command", ["explain", "run"])
def test_cli_refuses_a_tuple_model_in_one_line(tmp_path, images, capsys, command):
    f = tmp_path / "tuplenet.py"
    f.write_text(TUPLE_FACTORY)
    out = tmp_path / "out"
    args = [str(images / "im0.png")] if command == "explain" else [str(images)]
    rc = main([command, *args, "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("mperturb: error: model output on the clean images: expected one tensor of shape "
                              "(1, classes), got a tuple of 2 items") or "(2, classes), got a tuple" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_cli_head_option_and_summaries(tmp_path, images, capsys):
    f = tmp_path / "det.py"
    f.write_text(ONE_COLUMN_FACTORY)
    out = tmp_path / "out"
    rc = main(["explain", str(images / "im0.png"), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "im0_summary.json").read_text())
    assert summary["head"] == "sigmoid" and summary["settings"]["head"] == "auto"
    assert 0.5 < summary["scores"]["clean"] < 1.0  # sigmoid(w·mean + 2), not softmax of one column
    assert mp.Explanation.load(out / "im0.npz").head == "sigmoid"
    # An explicit head that the values contradict: one line, exit 2, nothing explained.
    rc = main(["explain", str(images / "im1.png"), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out",
               str(tmp_path / "o2"), "-q", "--head", "sigmoid-probabilities"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("mperturb: error: head: 'sigmoid-probabilities' needs outputs in [0, 1]")
    # The runner records the head per item.
    rc = main(["run", str(images), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(tmp_path / "r"), "-q"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["head"] == "sigmoid" for r in rows)


def test_cli_prints_head_warnings_as_one_line(tmp_path, images, capsys):
    f = tmp_path / "prob1.py"
    f.write_text(ONE_COLUMN_FACTORY.replace("return (self.w * x[:, :1].mean((2, 3)) + 2.0)",
                                            "return torch.sigmoid(self.w * x[:, :1].mean((2, 3)) + 2.0)"))
    rc = main(["explain", str(images / "im0.png"), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out",
               str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [line for line in err.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("mperturb: warning: head: the model has one output column")


# ----------------------------------------------------------------------------------- metrics
def test_metrics_read_the_head_like_explain():
    oracle = TextureOracle(SIZE, log=True).eval()
    x = textured_image(SIZE, 2)
    sal = region_masks(SIZE, [(0.6, 0.1, 0.9, 0.4)])
    a = M.deletion_insertion(oracle, x, sal, 2, steps=8)
    b = M.deletion_insertion(Softmaxed(oracle), x, sal, 2, steps=8)
    assert torch.allclose(a.curve, b.curve, atol=1e-6)
    det = QuadrantDetector()
    xq = _quadrant_image()
    c = M.deletion_insertion(det, xq, QUAD.float()[None], 0, steps=4)
    assert float(c.curve[0, 0]) == pytest.approx(float(torch.sigmoid(det(xq))[0, 0].detach()), abs=1e-6)
    assert float(c.curve[0, -1]) < 0.5 * float(c.curve[0, 0])  # deleting the quadrant removes the detection


def test_explanation_file_keeps_the_head(tmp_path):
    ex = mp.explain(QuadrantDetector(), _quadrant_image(), method="occlusion")
    back = mp.Explanation.load(ex.save(tmp_path / "e.npz"))
    assert back.head == "sigmoid" and ex[0].head == "sigmoid"


# ----------------------------------------------------------------------------- layering
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_runner_does_not_import_the_cli_and_the_registry_knows_no_preset():
    for f in (SRC / "runner").glob("*.py"):
        assert not any("cli" in m.split(".") for m in _imports(f)), f
    reg = _imports(SRC / "methods" / "registry.py")
    assert not reg & {".paper", ".seed", ".extremal", ".baselines", "."}, reg
