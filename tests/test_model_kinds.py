"""Real users' models of kinds met after issue 12: bfloat16 softmax heads, a head that one
image's output contradicts in a run, models that fail after the clean pass (out of memory on
the batched steps), half-precision models on the command line, lambdas around a network, and
the messages around them."""

import json
import warnings

import pytest
import torch
import torch.nn as nn
from PIL import Image

import meaningful_perturbation as mp
from meaningful_perturbation.cli import main
from meaningful_perturbation.core.head import resolve_head, sum_tolerance
from meaningful_perturbation.errors import ConfigError, HeadWarning, InputError, ModelError


class SmallNet(nn.Module):
    def __init__(self, classes=5, scale=8.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Softmaxed(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


# ------------------------------------------------------------------ bfloat16 probabilities
def test_bfloat16_softmax_rows_are_read_as_probabilities():
    x = torch.randn(4, 3, 16, 16)
    model = Softmaxed(SmallNet(scale=30.0)).to(torch.bfloat16)
    with torch.no_grad():
        p = model(x.bfloat16()).float()
    assert (p.sum(1) - 1).abs().max() > 1e-3  # bfloat16 rounding: the float32 test alone fails
    ex = mp.explain(model, x.bfloat16(), steps=2)
    assert ex.head == "probabilities"
    top = p.argmax(1)
    assert [t[0] for t in ex.target] == top.tolist()
    assert torch.allclose(ex.scores["clean"], p.gather(1, top[:, None])[:, 0])
    # explicit, and through a float32 cast of the bfloat16 values (an autocast model)
    assert mp.explain(model, x.bfloat16(), steps=2, head="probabilities").head == "probabilities"
    assert resolve_head("auto", p).kind == "probabilities"
    assert sum_tolerance(p) == torch.finfo(torch.bfloat16).eps and sum_tolerance(torch.rand(3, 5)) == 1e-3


def test_float32_rows_missing_one_are_still_logits_and_refused_as_probabilities():
    z = torch.softmax(torch.randn(3, 6), 1) * 0.995  # float32, misses 1 by 5e-3
    assert resolve_head("auto", z).kind == "logits"
    with pytest.raises(ConfigError, match="miss 1 by up to 0.005"):
        resolve_head("probabilities", z)


def test_constant_output_gets_no_misleading_head_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadWarning)
        assert resolve_head("auto", torch.zeros(2, 10)).kind == "logits"  # a zero-initialised head
    with pytest.warns(HeadWarning, match="sigmoid-probabilities"):
        resolve_head("auto", torch.rand(2, 10) * 0.5)


# ---------------------------------------------------- one head per command and per run
CONTRADICTED = """
import torch
class M(torch.nn.Module):
    '''A softmax head whose rows sum to 0.9 on dark images: read as probabilities on the bright
    image, the dark image's output contradicts that reading.'''
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    def forward(self, x):
        m = x.mean((1, 2, 3))
        p = torch.softmax(m[:, None] * self.w * 4, 1)
        return torch.where((m > 0)[:, None], p, 0.9 * p)
def build():
    return M(), {"input_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
"""


@pytest.fixture()
def bright_dark(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (20, 20), (230, 200, 210)).save(d / "a_bright.png")
    Image.new("RGB", (20, 20), (20, 30, 10)).save(d / "b_dark.png")
    f = tmp_path / "contradicted.py"
    f.write_text(CONTRADICTED)
    return d, f


def test_run_keeps_one_head_and_fails_the_item_that_contradicts_it(tmp_path, bright_dark, capsys):
    d, f = bright_dark
    out = tmp_path / "r"
    rc = main(["run", str(d), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--batch-size", "1",
               "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1, err  # a failure recorded, not a run aborted with exit 2
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["a_bright.png"] and rows[0]["head"] == "probabilities"
    assert [r["path"] for r in fails] == ["b_dark.png"]
    assert fails[0]["error"].startswith("--head: the model's output on this image contradicts the run's head "
                                        "'probabilities' (read from the run's first images)")
    assert "Traceback" not in err


def test_resumed_run_keeps_the_head_of_its_finished_items(tmp_path, bright_dark, capsys):
    d, f = bright_dark
    first = tmp_path / "first"
    first.mkdir()
    (d / "a_bright.png").rename(first / "a_bright.png")
    out = tmp_path / "r"
    assert main(["run", str(first), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(out),
                 "-q", "--device", "cpu"]) == 0
    # the dark image joins the source: resumed, it is checked against the run's head, not re-read as logits
    (d / "b_dark.png").rename(first / "b_dark.png")
    rc = main(["run", str(first), "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(out),
               "-q", "--device", "cpu", "--resume"])
    capsys.readouterr()
    assert rc == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["head"] for r in rows} == {"probabilities"} and len(rows) == 1
    assert "contradicts the run's head 'probabilities'" in (out / "failures.jsonl").read_text()


def test_explain_command_keeps_one_head(tmp_path, bright_dark, capsys):
    d, f = bright_dark
    out = tmp_path / "o"
    rc = main(["explain", str(d / "a_bright.png"), str(d / "b_dark.png"), "--model", f"python:{f}:build",
               "--trust-code", "--steps", "2", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert json.loads((out / "a_bright_summary.json").read_text())["head"] == "probabilities"
    assert not (out / "b_dark_summary.json").exists()
    skip = [line for line in err.splitlines() if line.startswith("mperturb: skipping")]
    assert len(skip) == 1 and "b_dark.png: --head: its output contradicts the head 'probabilities' read from the first image" in skip[0]
    assert "could not be read or explained" in err.splitlines()[-1]


# ----------------------------------------------------------- failures after the clean pass
class FailsAfter(nn.Module):
    """Fine on the clean pass, then out of memory: as a GPU model on the batched steps."""

    def __init__(self, ok_calls=1, error=RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        super().__init__()
        self.net, self.ok, self.calls, self.error = SmallNet(), ok_calls, 0, error

    def forward(self, x):
        self.calls += 1
        if self.calls > self.ok:
            raise self.error
        return self.net(x)


@pytest.mark.parametrize("method", ["paper", "extremal", "rise", "extremal-fast"])
def test_a_model_failing_on_the_steps_raises_model_error(method):
    x = torch.randn(1, 3, 16, 16)
    settings = {"n_masks": 8, "batch_size": 4} if method == "rise" else {"steps": 2}
    with pytest.raises(ModelError) as err:
        mp.explain(FailsAfter(), x, method=method, **settings)
    msg = str(err.value)
    assert msg.startswith(f"model: the {method!r} explanation of 1 image(s) of shape (3, 16, 16) failed after the clean "
                          "pass with RuntimeError: CUDA out of memory")
    assert "explain fewer images per call" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


def test_a_user_models_own_exception_is_a_model_error_but_a_defect_here_is_not():
    with pytest.raises(ModelError, match="failed after the clean pass with ValueError: bad shape"):
        mp.explain(FailsAfter(error=ValueError("bad shape")), torch.randn(1, 3, 16, 16), steps=2)


FAILING_FACTORY = """
import torch
class F(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.l = torch.nn.Linear(4, 5)
    def forward(self, x):
        if x.shape[0] > 1 or torch.is_grad_enabled():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.l(torch.relu(self.c(x)).mean((2, 3)))
def build():
    return F(), {"input_size": 16, "resize": 16}
"""


def test_cli_explain_model_failure_one_image_is_one_error_and_nothing_written(tmp_path, bright_dark, capsys):
    d, _ = bright_dark
    f = tmp_path / "failing.py"
    f.write_text(FAILING_FACTORY)
    out = tmp_path / "o"
    rc = main(["explain", str(d / "a_bright.png"), "--model", f"python:{f}:build", "--trust-code", "--steps", "2",
               "--out", str(out), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("mperturb: error: model: the 'paper' explanation of 1 image(s)") and "out of memory" in err[0]
    assert not out.exists()
    # several images: each skipped with its name, exit 1, and no folder holding only config.json
    rc = main(["explain", str(d / "a_bright.png"), str(d / "b_dark.png"), "--model", f"python:{f}:build",
               "--trust-code", "--steps", "2", "--out", str(out), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and sum(line.startswith("mperturb: skipping") for line in err) == 2
    assert not out.exists()


# ------------------------------------------------------------- half precision on the CLI
HALF_FACTORY = """
import torch
class H(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.l = torch.nn.Linear(4, 5)
    def forward(self, x):
        return self.l(torch.relu(self.c(x)).mean((2, 3)))
def build():
    return H().to(torch.DTYPE), {"input_size": 16, "resize": 16}
"""


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("command", ["explain", "run"])
def test_cli_feeds_a_low_precision_model_its_dtype(tmp_path, bright_dark, capsys, dtype, command):
    d, _ = bright_dark
    f = tmp_path / "half.py"
    f.write_text(HALF_FACTORY.replace("DTYPE", dtype))
    out = tmp_path / "o"
    args = [str(d / "a_bright.png")] if command == "explain" else [str(d)]
    rc = main([command, *args, "--model", f"python:{f}:build", "--trust-code", "--steps", "2", "--out", str(out),
               "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = (out / "a_bright_summary.json") if command == "explain" else (out / "results.jsonl")
    assert summary.exists()


# --------------------------------------------------------------- a lambda around a network
class TupleNet(nn.Module):
    """BatchNorm and dropout, returning (logits, features); left in training mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.drop = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        f = self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
        return self.fc(f), f


@pytest.mark.parametrize("method", ["paper", "extremal"])
def test_a_lambda_around_a_network_runs_it_frozen_in_eval_mode(method):
    net = TupleNet()  # training mode, as a training loop leaves it
    x = torch.randn(2, 3, 16, 16)
    stats = net.bn.running_mean.clone()
    a = mp.explain(lambda t: net(t)[0], x, method=method, steps=3, areas=(0.2,)) if method == "extremal" else \
        mp.explain(lambda t: net(t)[0], x, method=method, steps=3)
    b = mp.explain(lambda t: net(t)[0], x[:1], method=method, steps=3, areas=(0.2,)) if method == "extremal" else \
        mp.explain(lambda t: net(t)[0], x[:1], method=method, steps=3)
    assert torch.equal(net.bn.running_mean, stats) and int(net.bn.num_batches_tracked) == 0
    assert net.training and net.bn.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        p = torch.softmax(net(x)[0], 1)
    assert torch.allclose(a.scores["clean"], p.gather(1, torch.tensor([t[:1] for t in a.target]))[:, 0], atol=1e-6)
    assert torch.allclose(a.saliency[:1], b.saliency, atol=1e-5)  # eval mode: no batch dependence


def test_modules_of_sees_closures_globals_partials_and_bound_methods():
    import functools

    from meaningful_perturbation.core.frozen import modules_of

    net = TupleNet()

    def helper(t, scale):
        return net(t)[0] * scale

    assert modules_of(lambda t: net(t)[0]) == [net]
    assert modules_of(functools.partial(helper, scale=2.0)) == [net]
    assert modules_of(net.forward) == [net]
    assert modules_of(lambda t: t.sum((2, 3))) == []


# --------------------------------------------------------------------------- messages
def test_a_dedicated_flag_is_named_for_a_setting_the_method_lacks(tmp_path, bright_dark, capsys):
    d, _ = bright_dark
    for flag, value, method in (("--steps", "5", "rise"), ("--areas", "0.1", "paper")):
        rc = main(["explain", str(d / "a_bright.png"), "--method", method, flag, value, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1
        assert err[0].startswith(f"mperturb: error: {flag}: '{flag[2:]}': not a setting of method '{method}'")


def test_one_column_model_target_one_says_how_to_explain_the_negative_decision():
    class One(nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3))[:, None]

    with pytest.raises(InputError, match=r"returns -z: sigmoid\(-z\) = 1 - p"):
        mp.explain(One(), torch.randn(1, 3, 16, 16), target=1, steps=2)
