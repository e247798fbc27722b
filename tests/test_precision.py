"""Every preset on float16, bfloat16 and float64 models (issue 12 §3 "Precision").

The user passes ``x`` in the model's dtype. Masks, levels and optimiser state stay in float32
(float64 for float64), only the model's input is cast; the maps must match the float32 run
on an oracle whose evidence region is known.
"""

import pytest
import torch

import meaningful_perturbation as mp
from meaningful_perturbation.core.precision import ModelBridge, working_dtype
from oracles import BOXES, TextureOracle, region_masks, textured_image

SIZE = 32
CLASSES = (0, 3)  # one textured evidence box per image (9% of the image each)
STEPS = 40
OVERRIDES = {
    "paper": {"steps": STEPS},
    "paper-loc": {"steps": STEPS},
    "seed": {"steps": STEPS},
    # The oracle is not mirror-symmetric: no flip jitter.
    "extremal": {"steps": STEPS, "areas": (0.1,), "jitter": "none"},
    "extremal-fast": {"steps": STEPS, "areas": (0.1,), "jitter": "none"},
    "extremal-channels": {"steps": STEPS, "areas": (1 / 3,)},  # one of the oracle's 3 Laplacian channels
    "extremal-sweep": {"steps": STEPS, "areas": (0.05, 0.1, 0.2), "jitter": "none"},
    "rise": {"n_masks": 200},
    "occlusion": {"window": 8, "stride": 4, "reference_size": 32},
}
MODEL_FREE = ("random", "center")
# Methods whose maps put their maximum inside the evidence box on this oracle (in float32;
# RISE with 200 masks at 32 px is too noisy for the argmax, so it is compared to float32 only).
POINTS = ("paper", "paper-loc", "seed", "extremal", "extremal-fast", "extremal-sweep", "gradient", "gradcam", "occlusion")
# Largest |mask difference| from the float32 run allowed for a float64 model (measured: paper
# 0.076 after 40 Adam steps, the trajectories separate by rounding; the others <= 8e-3).
# extremal-fast starts from the occlusion probe's binary top cut (identical in both precisions,
# checked): from there float32 rounding moves the masks by up to ~0.003 after 40 steps.
F64_TOL = {"paper": 0.2, "seed": 0.05, "occlusion": 0.05, "extremal-fast": 0.01}


def _oracle(dtype):
    model = TextureOracle(SIZE, BOXES, gain=4.0, bias=0.0, log=True).to(dtype)
    x = torch.cat([textured_image(SIZE, k, seed=k, grain=0.5) for k in CLASSES]).to(dtype)
    return model, x


_MASKER = {}


def _oracle_masker():
    """A masker trained (float32, briefly) for this file's oracle: its conv weights are small
    integers, exact in every dtype, so the fingerprint matches the cast models."""
    if not _MASKER:
        from meaningful_perturbation.masker import ArraySource, train_masker

        model, _ = _oracle(torch.float32)
        xs = torch.cat([textured_image(SIZE, k, seed=100 + i, grain=0.5) for i in range(6) for k in range(len(BOXES))])
        data = ArraySource(xs, torch.arange(len(BOXES)).repeat(6))
        _MASKER["m"] = train_masker(model, data, steps=30, layers=("conv",), width=8, batch_size=8, lr=1e-2, fake_rate=0.0,
                                    mask_blur=0.0, eval_n=0).masker
    return _MASKER["m"]


def _explain(method, dtype):
    model, x = _oracle(dtype)
    extra = {"masker": _oracle_masker()} if method == "masker" else {}
    return mp.explain(model, x, target=torch.tensor(CLASSES), method=method, **OVERRIDES.get(method, {}), **extra), model


_REFERENCE = {}


def _reference(method):
    if method not in _REFERENCE:
        _REFERENCE[method] = _explain(method, torch.float32)[0]
    return _REFERENCE[method]


def _argmax_inside(saliency):
    regions = region_masks(SIZE, [BOXES[k] for k in CLASSES])
    return [bool(r.flatten()[s.flatten().argmax()]) for s, r in zip(saliency, regions)]


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("method", mp.methods())
def test_every_method_in_every_precision_matches_float32(method, dtype, one_thread):
    ex, model = _explain(method, dtype)
    ref = _reference(method)
    # The result is plain float32 on the CPU, finite, masks in [0, 1].
    for name, t in [("saliency", ex.saliency), ("masks", ex.masks), *ex.scores.items(), *ex.history.items()]:
        assert t.dtype == torch.float32 and t.device.type == "cpu", (name, t.dtype)
        assert torch.isfinite(t).all(), name
    assert float(ex.masks.min()) >= 0.0 and float(ex.masks.max()) <= 1.0
    assert set(ex.scores) == set(ref.scores) and set(ex.history) == set(ref.history)
    # The caller's model is left in its dtype.
    assert {p.dtype for p in model.parameters()} == {dtype} and model.regions.dtype == dtype
    if method in MODEL_FREE:
        assert torch.equal(ex.saliency, ref.saliency)  # the map does not depend on the model
        return
    if method in POINTS:
        assert _argmax_inside(ref.saliency) == [True, True]
        assert _argmax_inside(ex.saliency) == [True, True], method
    # The same map as the float32 model's, and the same scores up to the model's rounding.
    assert _corr(ex.saliency, ref.saliency) > (0.999 if dtype == torch.float64 else 0.99)
    for name, v in ref.scores.items():
        assert torch.allclose(ex.scores[name], v, atol=0.02), (name, ex.scores[name], v)
    if dtype == torch.float64:
        tol = F64_TOL.get(method, 1e-4)
        assert float((ex.masks - ref.masks).abs().max()) < tol


def test_half_model_state_and_flags_left_as_found(one_thread):
    model, x = _oracle(torch.float16)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    mp.explain(model, x, target=torch.tensor(CLASSES), method="paper", steps=3)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None and p.dtype == torch.float16 for p in model.parameters())


def test_confident_half_model_still_gets_a_gradient(one_thread):
    # The seed preset scores the softmax probability; at p ≈ 1 − 1e-6 its gradient
    # p·(1 − p) underflows inside a float16 model unless the backward pass is rescaled:
    # without it the first image's mask never moved (masked score 1.0, map correlation 0.64).
    ex, _ = _explain("seed", torch.float16)
    ref = _reference("seed")
    assert float(ex.scores["masked"].max()) < 0.05
    assert float((ex.masks - ref.masks).abs().max()) < 0.1


def test_bridge_rescales_the_backward_pass_exactly():
    # A float16 "model" whose input gradient is 1e-9·w: below float16's smallest subnormal.
    w = torch.linspace(-1, 1, 12).view(1, 3, 2, 2)

    def model(x):
        return (x * w.to(x.dtype)).sum(dim=(1, 2, 3)).unsqueeze(1) * torch.tensor(1e-3, dtype=x.dtype)

    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    bridge = ModelBridge(torch.float16)
    out = bridge.leave(model(bridge.enter(x)))
    assert out.dtype == torch.float32
    (out * 1e-6).sum().backward()
    expected = (1e-9 * w).expand(2, -1, -1, -1)
    assert torch.allclose(x.grad, expected, rtol=2e-3, atol=0)
    # The plain cast loses it: the same gradient is exactly 0 there.
    y = torch.randn(2, 3, 2, 2, requires_grad=True)
    (model(y.half()).float() * 1e-6).sum().backward()
    assert float(y.grad.abs().max()) == 0.0
    # float32: both ends are the identity (the very same tensors).
    same = ModelBridge(torch.float32)
    assert same.enter(x) is x and same.leave(out) is out


def test_working_precision():
    assert working_dtype(torch.float16) == working_dtype(torch.bfloat16) == working_dtype(torch.float32) == torch.float32
    assert working_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_unsupported_precision_refused(dtype):
    model, x = _oracle(torch.float32)
    with pytest.raises(mp.InputError) as e:
        mp.explain(model, x.to(dtype), steps=2)
    assert str(e.value) == f"x: dtype {dtype} is not supported; expected one of float16, bfloat16, float32, float64 (the model's dtype)"


def test_x_in_another_dtype_than_the_model_refused():
    model, x = _oracle(torch.float32)
    model.conv.to(torch.float16)
    model.regions = model.regions.half()
    with pytest.raises(mp.InputError, match=r"^x: dtype torch\.float32 does not match the model's parameters \(torch\.float16\); pass x in the model's dtype \(x\.to\(torch\.float16\)\) or convert the model; calling the model failed with RuntimeError: "):
        mp.explain(model, x, steps=2)


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class _BackwardFailsAt(torch.nn.Module):
    """A conv model whose input gradient is NaN on its ``at``-th differentiable call."""

    def __init__(self, at):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.calls, self.at = 0, at

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.calls += 1
            if self.calls == self.at:
                x = _NanGradient.apply(x)
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize("method", ["paper", "seed", "extremal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_non_finite_gradient_after_the_first_step_is_refused(method, dtype):
    # Before: θ became NaN and the run ended in a raw index error inside blend, or in a
    # ModelError blaming the model's output for the NaN input the masks produced.
    torch.manual_seed(0)
    model = _BackwardFailsAt(24).to(dtype)
    x = torch.randn(1, 3, 16, 16).to(dtype)
    hint = "" if dtype == torch.float32 else " (the model runs in torch.float16: did its backward pass overflow?)"
    with pytest.raises(mp.ModelError) as e:
        mp.explain(model, x, method=method, steps=25)
    assert str(e.value) == (
        "the gradient of the model output with respect to its input became NaN or inf between steps 21 and 25 of 25" + hint
    )
