"""Baselines behind `explain`: exact values on hand-set models, evidence-region oracles,
determinism, batch invariance, model state, config errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import meaningful_perturbation as mp
from meaningful_perturbation.methods.baselines import RiseMasks, center_prior, find_layer
from meaningful_perturbation.methods.baselines._common import normalise
from oracles import BOXES, TextureOracle, region_masks, textured_image

BASELINES = ["gradient", "gradcam", "occlusion", "rise", "random", "center"]
# Small settings so the whole file runs in seconds on 2 cores.
FAST = {"rise": {"n_masks": 64, "batch_size": 32}, "occlusion": {"window": 8, "stride": 4, "reference_size": 32}}
# RISE is a Monte-Carlo estimate: the oracle tests use enough masks for a stable argmax.
ORACLE = {**FAST, "rise": {"n_masks": 300}}


def _argmax_inside(saliency: torch.Tensor, regions: torch.Tensor) -> list[bool]:
    am = saliency.flatten(1).argmax(dim=1)
    return [bool(regions[i].flatten()[am[i]]) for i in range(saliency.shape[0])]


# ----------------------------------------------------------------------------- registry
def test_registered_with_documented_defaults():
    assert set(BASELINES) <= set(mp.methods())
    g = mp.method_config("gradient")
    assert (g.abs, g.reduce, g.score) == (True, "max", "logit")
    c = mp.method_config("gradcam")
    assert c.layer is None and c.relu and c.interpolation == "bilinear"
    r = mp.method_config("rise")
    assert (r.n_masks, r.s, r.p, r.perturbation) == (4000, 7, 0.5, "fade")
    o = mp.method_config("occlusion")
    assert (o.window, o.stride, o.reference_size, o.perturbation) == (32, 8, 224, "fade")
    assert mp.method_config("center").sigma == 0.25
    with pytest.raises(Exception):
        r.n_masks = 3  # frozen


@pytest.mark.parametrize("method", BASELINES)
def test_result_structure(method, tmp_path):
    size = 24
    model = TextureOracle(size)
    x = torch.cat([textured_image(size, k, seed=k) for k in range(2)])
    ex = mp.explain(model, x, method=method, **FAST.get(method, {}))
    assert ex.saliency.shape == (2, size, size) and ex.masks.shape == (2, 1, size, size)
    assert ex.saliency.dtype == torch.float32 and ex.saliency.device.type == "cpu"
    assert ex.masks.min() >= 0 and ex.masks.max() <= 1
    assert torch.allclose(ex.masks[:, 0], normalise(ex.saliency))  # masks = normalised saliency
    assert ex.history == {} and set(ex.scores) == {"clean"} and ex.scores["clean"].shape == (2,)
    assert ex.method == method and ex.target == [[0], [1]]
    back = mp.Explanation.load(ex.save(tmp_path / method))  # config and extra are plain data
    assert torch.equal(back.saliency, ex.saliency) and back.config == ex.config and back.extra == ex.extra


# ------------------------------------------------------------------ evidence-region oracles
@pytest.mark.parametrize("method", ["gradient", "occlusion", "rise"])
def test_argmax_and_mass_in_texture_evidence_region(method):
    """One textured region per image; TextureOracle's class k looks only at region k."""
    size = 32
    model = TextureOracle(size)
    x = torch.cat([textured_image(size, k, seed=k) for k in range(4)])
    ex = mp.explain(model, x, method=method, **ORACLE.get(method, {}))
    assert ex.target == [[0], [1], [2], [3]]
    regions = region_masks(size, BOXES)[:4]
    assert all(_argmax_inside(ex.saliency, regions))
    s = ex.saliency - ex.saliency.amin(dim=(1, 2), keepdim=True)
    mass = (s * regions).sum(dim=(1, 2)) / s.sum(dim=(1, 2))
    # Each region is 9% of the image; occlusion and RISE blur the map by a window / cell.
    floor = {"gradient": 0.9, "occlusion": 0.4, "rise": 0.2}[method]
    assert torch.all(mass > floor), mass


class _ColourTexture(nn.Module):
    """Class k = mean Laplacian energy of colour channel k: a GAP classifier on a
    per-class feature channel, the architecture Grad-CAM was designed for."""

    def __init__(self, gain: float = 2.0, bias: float = 4.0):
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(lap.expand(3, 1, 3, 3))
        self.features = nn.Sequential(conv, _Square())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3) * gain)
            self.fc.bias.fill_(-bias)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)))


class _Square(nn.Module):
    def forward(self, x):
        return x * x


@pytest.mark.parametrize("method", ["gradient", "gradcam", "occlusion", "rise"])
def test_class_discriminative_on_two_evidence_regions(method):
    """The same image holds the evidence of class 0 (red texture, box 0) and class 1
    (green texture, box 3); each class's explanation must point at its own box."""
    size = 32
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(1, 3, size, size)
    regions = region_masks(size, [BOXES[0], BOXES[3]])
    x[0, 0] += torch.randn(size, size, generator=g) * regions[0]
    x[0, 1] += torch.randn(size, size, generator=g) * regions[1]
    ex = mp.explain(_ColourTexture(), x.repeat(2, 1, 1, 1), target=torch.tensor([0, 1]), method=method, **ORACLE.get(method, {}))
    assert _argmax_inside(ex.saliency, regions) == [True, True]


# ------------------------------------------------------------------------ gradient: exact
def _linear_model(c=3, h=4, w=5, classes=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))
    return model, model[1].weight.detach().clone().view(classes, c, h, w)


@pytest.mark.parametrize(
    "overrides,reduce",
    [
        ({}, lambda g: g.abs().amax(dim=0)),
        ({"reduce": "sum"}, lambda g: g.abs().sum(dim=0)),
        ({"reduce": "l2"}, lambda g: g.pow(2).sum(dim=0).sqrt()),
        ({"abs": False}, lambda g: g.amax(dim=0)),
        ({"abs": False, "reduce": "sum"}, lambda g: g.sum(dim=0)),
    ],
)
def test_gradient_equals_hand_computed_input_gradient(overrides, reduce):
    model, W = _linear_model()  # logit_c = <W_c, x> + b_c, so ∂logit_c/∂x = W_c
    x = torch.randn(2, 3, 4, 5)
    ex = mp.explain(model, x, target=torch.tensor([2, 0]), method="gradient", **overrides)
    assert torch.allclose(ex.saliency[0], reduce(W[2]), atol=1e-6)
    assert torch.allclose(ex.saliency[1], reduce(W[0]), atol=1e-6)


def test_gradient_several_classes_is_gradient_of_summed_score():
    model, W = _linear_model()
    x = torch.randn(2, 3, 4, 5)
    ex = mp.explain(model, x, target=[[0, 1], [2]], method="gradient")
    assert torch.allclose(ex.saliency[0], (W[0] + W[1]).abs().amax(dim=0), atol=1e-6)
    assert torch.allclose(ex.saliency[1], W[2].abs().amax(dim=0), atol=1e-6)
    assert ex.target == [[0, 1], [2]]


def test_gradient_of_probability_score():
    model, _ = _linear_model()
    x = torch.randn(1, 3, 4, 5)
    xr = x.clone().requires_grad_(True)
    torch.softmax(model(xr), dim=1)[0, 1].backward()
    ex = mp.explain(model, x, target=1, method="gradient", score="prob")
    assert torch.allclose(ex.saliency[0], xr.grad[0].abs().amax(dim=0), atol=1e-7)


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.detach().mean(dim=(2, 3)))


def test_gradient_without_gradient_path_raises_model_error():
    with pytest.raises(mp.ModelError, match="no gradient path"):
        mp.explain(_Detached(), torch.randn(1, 3, 8, 8), method="gradient")


# ------------------------------------------------------------------------- Grad-CAM: exact
class _TinyCNN(nn.Module):
    def __init__(self, stride: int = 1, inplace: bool = False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=1), nn.ReLU(inplace=inplace))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _hand_gradcam(model: _TinyCNN, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """ReLU(Σ_k α_k A_k) with A = ReLU(conv(x)). For y = fc(mean_u A) the gradient
    ∂y_c/∂A_k(u) = fc.weight[c, k] / (h·w) is the same at every u, so α_k (its spatial
    mean, Grad-CAM eq. 1) is that value."""
    with torch.no_grad():
        A = model.features(x)  # (N, K, h, w)
        h, w = A.shape[-2:]
        alpha = model.fc.weight[target] / (h * w)  # (N, K): ∂(fc·mean A)/∂A_k(u), constant in u
        return torch.relu((alpha[:, :, None, None] * A).sum(dim=1))  # (N, h, w)


@pytest.mark.parametrize("inplace", [False, True])
def test_gradcam_equals_hand_computed_at_layer_resolution(inplace):
    torch.manual_seed(1)
    model = _TinyCNN(stride=1, inplace=inplace)
    x = torch.randn(2, 3, 8, 8)
    ex = mp.explain(model, x, target=torch.tensor([1, 2]), method="gradcam")
    assert ex.extra == {"layer": "features", "layer_size": [8, 8], "tokens": False, "prefix_tokens": 0}
    # Same resolution as the input: the bilinear "upsampling" is the identity.
    assert torch.allclose(ex.saliency, _hand_gradcam(model, x, [1, 2]), atol=1e-6)


def test_gradcam_downsampled_layer_is_upsampled_bilinearly():
    torch.manual_seed(2)
    model = _TinyCNN(stride=2)
    x = torch.randn(2, 3, 12, 12)
    ex = mp.explain(model, x, target=torch.tensor([0, 1]), method="gradcam")
    cam = _hand_gradcam(model, x, [0, 1])
    assert ex.extra["layer_size"] == [6, 6]
    expected = F.interpolate(cam.unsqueeze(1), size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(ex.saliency, expected, atol=1e-6)


def test_gradcam_several_classes_sums_before_relu():
    torch.manual_seed(3)
    model = _TinyCNN()
    x = torch.randn(1, 3, 8, 8)
    ex = mp.explain(model, x, target=[[0, 2]], method="gradcam")
    with torch.no_grad():
        A = model.features(x)
        alpha = (model.fc.weight[0] + model.fc.weight[2]) / 64
        expected = torch.relu((alpha[None, :, None, None] * A).sum(dim=1))
    assert torch.allclose(ex.saliency, expected, atol=1e-6)


class _VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(2)  # 4-D but after the last conv block
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn(self.conv(x)))


class _ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_Block(), _Block())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.avgpool(self.layer1(self.stem(x))).flatten(1))


def test_layer_autodetection_picks_last_conv_block():
    x = torch.randn(1, 3, 16, 16)
    # VGG: the rectified last conv (like relu5_3), not the pooled output after it.
    assert find_layer(_VGGish().eval(), x) == "features.4"
    # ResNet: the whole last stage (like layer4), whose output is its last block's.
    assert find_layer(_ResNetish().eval(), x) == "layer1"
    assert find_layer(_TinyCNN(), x) == "features"
    ex = mp.explain(_ResNetish(), torch.randn(2, 3, 16, 16), method="gradcam")
    assert ex.extra == {"layer": "layer1", "layer_size": [8, 8], "tokens": False, "prefix_tokens": 0}


def test_gradcam_named_layer_and_errors():
    model = _VGGish()
    x = torch.randn(1, 3, 16, 16)
    ex = mp.explain(model, x, method="gradcam", layer="features.1")
    assert ex.extra == {"layer": "features.1", "layer_size": [16, 16], "tokens": False, "prefix_tokens": 0}
    with pytest.raises(mp.ConfigError, match=r"no submodule 'features\.99'.*'features\.4'"):
        mp.explain(model, x, method="gradcam", layer="features.99")
    with pytest.raises(mp.ConfigError, match="4-D"):
        mp.explain(model, x, method="gradcam", layer="classifier")
    with pytest.raises(mp.ConfigError, match="nn.Module"):
        mp.explain(lambda t: model(t), x, method="gradcam")


# ------------------------------------------------------------------------ occlusion: exact
class _RegionSum(nn.Module):
    """logit_k = Σ of x over box k (all channels); one box per class."""

    def __init__(self, size, boxes):
        super().__init__()
        self.register_buffer("regions", region_masks(size, boxes))

    def forward(self, x):
        return torch.einsum("nchw,khw->nk", x, self.regions)


def _hand_occlusion(x, region, window, stride):
    """Mean over the windows covering each pixel of Σ_{window ∩ region} x (baseline 0)."""
    _, H, W = x.shape
    total = torch.zeros(H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for y0 in range(0, H - window + 1, stride):
        for x0 in range(0, W - window + 1, stride):
            inside = torch.zeros(H, W, dtype=torch.float64)
            inside[y0 : y0 + window, x0 : x0 + window] = 1
            drop = (x.double() * (inside * region)).sum()
            total += drop * inside
            count += inside
    return total / count


def test_occlusion_equals_hand_computed_score_drop():
    size, window, stride = 8, 4, 2  # windows at 0, 2, 4: every window lies inside the image
    boxes = [(0.25, 0.25, 0.75, 0.5), (0.0, 0.5, 0.5, 1.0)]
    model = _RegionSum(size, boxes)
    x = torch.randn(2, 3, size, size)
    common = dict(window=window, stride=stride, reference_size=size, score="logit")
    ex = mp.explain(model, x, target=torch.tensor([0, 1]), method="occlusion", **common)
    regions = region_masks(size, boxes).double()
    for i in range(2):
        # The patch covers all channels: each pixel's value is the drop of Σ over channels.
        expected = _hand_occlusion(x[i], regions[i], window, stride)
        assert torch.allclose(ex.saliency[i].double(), expected, atol=1e-5)
    assert ex.extra == {"window": [4, 4], "stride": [2, 2]}
    both = mp.explain(model, x[:1], target=[[0, 1]], method="occlusion", head="sigmoid", **common)
    # With two classes [[0, 1]] is the multi-hot label "class 1", and both classes are the
    # multi-hot [[1, 1]]; a set of every class needs a sigmoid head (a softmax refuses it).
    one = mp.explain(model, x[:1], target=1, method="occlusion", head="sigmoid", **common)
    assert both.target == [[1]] and torch.allclose(both.saliency, one.saliency)
    pair = mp.explain(model, x[:1], target=[[1, 1]], method="occlusion", head="sigmoid", **common)
    assert pair.target == [[0, 1]]
    assert torch.allclose(pair.saliency[0], ex.saliency[0] + one.saliency[0], atol=1e-5)


# ----------------------------------------------------------------------------------- RISE
def test_rise_masks_follow_the_paper_distribution():
    g = torch.Generator().manual_seed(0)
    masks = RiseMasks(400, 7, 0.5, (28, 35), g)
    assert masks.cell == (4, 5)
    m = masks.chunk(0, 400, dtype=torch.float32, device="cpu")
    assert m.shape == (400, 1, 28, 35) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.5) < 0.03
    # Chunking does not change the masks.
    parts = torch.cat([masks.chunk(a, min(a + 64, 400), dtype=torch.float32, device="cpu") for a in range(0, 400, 64)])
    assert torch.equal(parts, m)


def test_rise_deterministic_and_seeded():
    size = 24
    model = TextureOracle(size)
    x = textured_image(size, 1, seed=4)
    a = mp.explain(model, x, method="rise", n_masks=40, seed=3)
    b = mp.explain(model, x, method="rise", n_masks=40, seed=3)
    c = mp.explain(model, x, method="rise", n_masks=40, seed=4)
    assert torch.equal(a.saliency, b.saliency)
    assert not torch.allclose(a.saliency, c.saliency)


def test_rise_batch_of_two_equals_one_by_one():
    size = 24
    model = TextureOracle(size)
    x = torch.cat([textured_image(size, k, seed=k) for k in (0, 3)])
    kw = dict(n_masks=50, batch_size=16)
    together = mp.explain(model, x, method="rise", **kw)
    for i in range(2):
        alone = mp.explain(model, x[i : i + 1], method="rise", **kw)
        assert torch.equal(alone.saliency[0], together.saliency[i])


class _RegionStat(nn.Module):
    """logit_0 = gain · mean over a box of ``x^power`` (channel mean) - bias; logit_1 = 0."""

    def __init__(self, size, box, *, power=1, gain=1.0, bias=0.0):
        super().__init__()
        self.register_buffer("region", region_masks(size, [box])[0])
        self.power, self.gain, self.bias = power, gain, bias

    def forward(self, x):
        z = self.gain * (x.pow(self.power).mean(dim=1) * self.region).sum(dim=(1, 2)) / self.region.sum() - self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


@pytest.mark.parametrize(
    "perturbation,score,power",
    [("fade", "logit", 1), ("fade", "prob", 1), ("constant", "prob", 1), ("blur", "prob", 2)],
)
def test_rise_higher_inside_region_the_model_averages(perturbation, score, power):
    size = 28
    box = (0.5, 0.1, 0.9, 0.5)
    inside = region_masks(size, [box])[0].bool()
    if power == 1:
        # logit = mean of x over the box; x = 2 inside, -1 around it: fading to 0 or to
        # the mean colour lowers the box mean where a mask removes the image.
        model = _RegionStat(size, box, gain=1.0 if score == "logit" else 2.0, bias=0.0 if score == "logit" else 2.0)
        x = torch.full((1, 3, size, size), -1.0)
        x[:, :, inside] = 2.0
    else:
        # Blur keeps a box mean; it removes detail: a ±2 checkerboard in the box, scored by energy.
        model = _RegionStat(size, box, power=2, gain=1.0, bias=2.0)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        x = (((yy + xx) % 2) * 4.0 - 2.0).mul(inside).expand(1, 3, size, size).clone()
    ex = mp.explain(model, x, target=0, method="rise", n_masks=1000, perturbation=perturbation, score=score)
    s = ex.saliency[0]
    assert s[inside].mean() > s[~inside].mean()
    assert _argmax_inside(ex.saliency, inside.float().unsqueeze(0)) == [True]


def test_rise_fade_linear_model_matches_formula():
    """For ``fade`` and a logit score, S = Σ_i <w, x ⊙ M_i>·M_i / (N·p): check literally."""
    model, W = _linear_model(c=1, h=7, w=7, classes=2, seed=5)
    x = torch.randn(1, 1, 7, 7)
    ex = mp.explain(model, x, target=1, method="rise", n_masks=30, s=3, p=0.3, score="logit", seed=9, centre=False)
    centred = mp.explain(model, x, target=1, method="rise", n_masks=30, s=3, p=0.3, score="logit", seed=9)
    g = torch.Generator().manual_seed(9)
    masks = RiseMasks(30, 3, 0.3, (7, 7), g).chunk(0, 30, dtype=torch.float32, device="cpu")[:, 0]
    b = model[1].bias[1].detach()
    f = (W[1, 0] * x[0, 0] * masks).sum(dim=(1, 2)) + b
    expected = (f.view(-1, 1, 1) * masks).sum(dim=0) / (30 * 0.3)
    assert torch.allclose(ex.saliency[0], expected, atol=1e-5)
    # Default: centred by the mean masked score (a constant shift: same ranks, same masks).
    assert centred.extra["mean_score"][0] == pytest.approx(float(f.mean()), abs=1e-5)
    assert torch.allclose(centred.saliency[0], expected - f.mean(), atol=1e-5)
    assert torch.allclose(centred.masks, ex.masks, atol=1e-5)


def test_rise_reports_progress_per_batch():
    calls = []
    model = TextureOracle(16)
    x = torch.cat([textured_image(16, k, seed=k) for k in range(2)])
    mp.explain(model, x, method="rise", n_masks=25, batch_size=10, callback=lambda t, n: calls.append((t, n)))
    assert calls == [(t, 6) for t in range(1, 7)]  # 2 images × 3 mask batches


# ----------------------------------------------------------------------- random / center
def test_random_deterministic_per_seed():
    model = TextureOracle(16)
    x = textured_image(16, 0).repeat(2, 1, 1, 1)
    a = mp.explain(model, x, method="random", seed=1)
    assert torch.equal(a.saliency, mp.explain(model, x, method="random", seed=1).saliency)
    assert not torch.equal(a.saliency, mp.explain(model, x, method="random", seed=2).saliency)
    assert a.saliency.min() >= 0 and a.saliency.max() < 1


@pytest.mark.parametrize("h,w", [(15, 15), (20, 31)])
def test_center_peaks_at_centre(h, w):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    ex = mp.explain(model, torch.randn(2, 3, h, w), method="center")
    s = ex.saliency[0]
    peak = divmod(int(s.argmax()), w)
    assert abs(peak[0] - (h - 1) / 2) <= 0.5 and abs(peak[1] - (w - 1) / 2) <= 0.5
    assert torch.equal(ex.saliency[0], ex.saliency[1])
    # σ = 1/4 of the short side: value exp(-1/2) at distance σ from the centre.
    m = center_prior((40, 41), 0.25)  # σ = 10 px; centre (19.5, 20)
    assert abs(float(m[19, 20]) - float(m[20, 20])) < 1e-7 and float(m[19, 20]) < 1
    assert abs(float(m[0, 20]) / float(m[19, 20]) - torch.exp(torch.tensor(-(19.5**2 - 0.5**2) / 200)).item()) < 1e-6


# ----------------------------------------------------------------------- errors and state
@pytest.mark.parametrize(
    "method,overrides,match",
    [
        ("rise", {"n_masks": 0}, "n_masks"),
        ("rise", {"p": 0.0}, "p:"),
        ("rise", {"p": 1.0}, "p:"),
        ("rise", {"p": 1.5}, "p:"),
        ("rise", {"perturbation": "noise"}, "perturbation"),
        ("gradient", {"reduce": "mean"}, "reduce"),
        ("gradient", {"abs": "yes"}, "abs"),
        ("occlusion", {"window": 0}, "window"),
        ("occlusion", {"stride": 1.5}, "stride"),
        ("gradcam", {"layer": ""}, "layer"),
        ("center", {"sigma": 0}, "sigma"),
        ("random", {"sigma": 1}, "not a setting"),
    ],
)
def test_bad_knobs_raise_config_error(method, overrides, match):
    with pytest.raises(mp.ConfigError, match=match):
        mp.explain(_TinyCNN(), torch.randn(1, 3, 8, 8), method=method, **overrides)


def _state(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


class _WithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


@pytest.mark.parametrize("method", BASELINES)
def test_model_state_and_input_left_as_found(method):
    model = _WithBN()
    model.train()
    model.drop.eval()  # mixed flags must come back exactly
    model.fc.weight.requires_grad_(False)
    before = _state(model)
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    x = torch.randn(2, 3, 12, 12)
    x0 = x.clone()
    overrides = {"rise": {"n_masks": 8}, "occlusion": {"window": 4, "stride": 4, "reference_size": 12}}.get(method, {})
    a = mp.explain(model, x, method=method, **overrides)
    assert _state(model) == before
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(buffers, model.buffers()))  # eval: BN stats untouched
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0) and not x.requires_grad and x.grad is None
    # Eval mode during the call: dropout off, so the result is reproducible.
    assert torch.equal(a.saliency, mp.explain(model, x, method=method, **overrides).saliency)


def test_model_state_restored_when_gradcam_raises():
    model = _VGGish()
    model.train()
    before = _state(model)
    with pytest.raises(mp.ConfigError):
        mp.explain(model, torch.randn(1, 3, 16, 16), method="gradcam", layer="nope")
    assert _state(model) == before
