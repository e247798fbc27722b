"""Channel attribution, ``extremal-channels`` (issue 15 §3; Fong, Patrick & Vedaldi 2019,
"Attribution at intermediate layers").

The oracle has hand-set weights: a 1×1 convolution ``features`` with 16 channels, where
channels {2, 5} copy input channel 0, channels {7, 11} copy input channel 1 and the rest copy
input channel 2, then a ReLU, global average pooling and a linear head whose class 0 reads
channels {2, 5} with weight 1 (0.05-0.125 elsewhere) and class 1 reads {7, 11}. Input channel 0 is
lit in the top-left quadrant only, channel 1 in the bottom-right one. So the 2-channel
extremal mask of class 0 is exactly {2, 5} (preserving them keeps the most logit, deleting
them removes the most) and their activation lies in the top-left quadrant.
"""

import json
import warnings

import pytest
import torch
import torch.nn as nn

import meaningful_perturbation as mp
from meaningful_perturbation import Explanation
from meaningful_perturbation.cli import main
from meaningful_perturbation.errors import ConfigError

SIZE = 16
EVIDENCE = {0: [2, 5], 1: [7, 11]}
FAST = {"areas": (2 / 16,), "steps": 60}


class Oracle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU())
        self.unused = nn.Conv2d(16, 16, 1)  # defined, never called
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            w = torch.zeros(16, 3)
            w[:, 2] = 1.0
            for src, chans in EVIDENCE.items():
                w[chans] = 0.0
                w[chans, src] = 1.0
            self.features[0].weight.copy_(w.view(16, 3, 1, 1))
            self.features[0].bias.zero_()
            head = 0.05 + 0.005 * torch.arange(16.0).repeat(3, 1)  # distinct small votes: no ties
            for c, chans in EVIDENCE.items():
                head[c, chans] = 1.0
            head[2] = 0.3
            self.fc.weight.copy_(head)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.features(x))))


def images(n: int = 2) -> torch.Tensor:
    x = torch.zeros(n, 3, SIZE, SIZE)
    h = SIZE // 2
    x[:, 0, :h, :h] = 1.0  # channel 0: top-left quadrant
    x[:, 1, h:, h:] = 1.0  # channel 1: bottom-right quadrant
    x[:, 2] = 0.5
    x[1:, :2] *= 1.5  # the images differ
    return x


def run(model=None, x=None, target=(0, 1), **kw):
    model = Oracle() if model is None else model
    x = images() if x is None else x
    opts = {**FAST, **kw}
    return mp.explain(model, x, target=torch.tensor(target), method="extremal-channels", layer="features", **opts)


def _binary(cm: torch.Tensor) -> list[list[int]]:
    return [sorted(int(c) for c in torch.nonzero(row > 0.5).flatten()) for row in cm]


def test_preservation_keeps_exactly_the_evidence_channels():
    ex = run()
    cm = ex.channel_masks[:, 0]  # (N, C) keep-masks
    assert ex.channel_masks.shape == (2, 1, 16)
    assert _binary(cm) == [EVIDENCE[0], EVIDENCE[1]]
    assert float(cm[0, EVIDENCE[0]].min()) > 0.9 and float(cm[0].max()) <= 1.0
    others = [c for c in range(16) if c not in EVIDENCE[0]]
    assert float(cm[0, others].max()) < 0.1
    assert ex.extra["salient_channels"] == [[EVIDENCE[0]], [EVIDENCE[1]]]
    assert ex.extra["layer"] == "features" and ex.extra["channels"] == 16 and ex.extra["layout"] == "nchw"
    assert ex.extra["achieved_area"] == [[0.125], [0.125]]
    # Two channels of sixteen keep the class more probable than all of them (the rest vote for it weakly).
    assert (ex.scores["masked"][:, 0] > ex.scores["clean"]).all()
    assert torch.allclose(ex.scores["perturbed"], torch.full((2,), 1 / 3))  # every channel removed: equal logits


def test_deletion_removes_the_evidence_channels():
    ex = run(game="delete")
    keep = ex.channel_masks[:, 0]
    assert _binary(1 - keep) == [EVIDENCE[0], EVIDENCE[1]]  # the removed channels
    assert float(keep[0, EVIDENCE[0]].max()) < 0.1
    assert (ex.scores["masked"][:, 0] < ex.scores["clean"]).all()
    assert ex.extra["salient_channels"] == [[EVIDENCE[0]], [EVIDENCE[1]]]


def test_dual_game_finds_them_in_both_games():
    ex = run(game="dual")
    assert _binary(ex.channel_masks[:, 0]) == [EVIDENCE[0], EVIDENCE[1]]
    assert set(ex.scores) == {"clean", "masked", "masked_delete", "perturbed"}
    assert (ex.scores["masked"] > ex.scores["masked_delete"]).all()
    assert set(ex.history) == {"loss", "score_preserve", "score_delete", "area"}


def test_display_map_is_the_activation_of_the_salient_channels():
    ex = run()
    h = SIZE // 2
    for i, (r, c) in enumerate([(slice(0, h), slice(0, h)), (slice(h, None), slice(h, None))]):
        m = ex.masks[i, 0]
        assert float(m.min()) == 0.0 and float(m.max()) == 1.0
        inside = m[r, c].mean()
        assert float(inside) > 0.8 and float(m.sum() - m[r, c].sum()) / (SIZE * SIZE - h * h) < 0.15
    assert torch.allclose(ex.saliency, ex.masks.sum(dim=1))


def test_batched_equals_one_by_one():
    x = images()
    both = run(x=x, areas=(2 / 16, 4 / 16))
    for i, t in enumerate((0, 1)):
        one = run(x=x[i : i + 1], target=(t,), areas=(2 / 16, 4 / 16))
        assert torch.allclose(both.channel_masks[i], one.channel_masks[0], atol=1e-5)
        assert torch.allclose(both.saliency[i], one.saliency[0], atol=1e-5)
        assert torch.allclose(both.scores["masked"][i], one.scores["masked"][0], atol=1e-6)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_model_left_as_found_also_on_error():
    model = Oracle().train()
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(p.requires_grad) for p in model.parameters()]
    for kw in ({}, {"areas": (0.01,)}):  # the second raises after the hook is installed
        try:
            run(model=model, **kw)
        except ConfigError:
            assert kw
        assert _hooks(model) == 0
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "layer, expected",
    [
        ("featurs", "layer: the model has no module 'featurs'; expected a name from model.named_modules(): closest 'features'"),
        ("unused", "layer: 'unused' did not run in the model's forward pass; name a layer the forward pass uses"),
        ("flat", "layer: 'flat' returns shape (2, 16); channel attribution (layout='auto') needs a 4-D (N, C, h, w) feature map"),
        ("", "layer: expected a module name such as 'features.10'"),
    ],
)
def test_bad_layers_are_refused_by_name(layer, expected):
    with pytest.raises(ConfigError) as e:
        mp.explain(Oracle(), images(), target=0, method="extremal-channels", layer=layer, steps=2)
    assert str(e.value).startswith(expected), str(e.value)


class _Tagged(nn.Module):
    def forward(self, x):
        return {"not": "a tensor", "x": x}


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tag = _Tagged()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.tag(self.conv(x))["x"]
        y = self.conv(x) + y  # conv runs twice
        return self.head(y.mean(dim=(2, 3)))


def test_non_tensor_output_and_shared_layer_are_refused():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"^layer: 'tag' returns dict, expected a tensor \(or a tuple whose first element is one\)$"):
        mp.explain(_Odd(), x, target=0, method="extremal-channels", layer="tag", steps=2)
    with pytest.raises(ConfigError, match=r"^layer: 'conv' runs 2 times in one forward pass \(a shared module\)"):
        mp.explain(_Odd(), x, target=0, method="extremal-channels", layer="conv", steps=2)


@pytest.mark.parametrize(
    "areas, expected",
    [
        ((0.01,), "areas: 0.01 of the 16 channels of layer 'features' rounds to 0 channels; use areas >= 0.0312"),
        ((0.0,), "areas: every area must be a fraction of the channels in (0, 1], got 0.0"),
        ((1.5,), "areas: every area must be a fraction of the channels in (0, 1], got 1.5"),
        ((), "areas: expected a non-empty sequence of channel fractions in (0, 1], got ()"),
    ],
)
def test_bad_areas_are_refused(areas, expected):
    with pytest.raises(ConfigError) as e:
        run(areas=areas, steps=2)
    assert str(e.value).startswith(expected), str(e.value)


class _TinyViT(nn.Module):
    """Patch embedding (4 px patches), a class token, one token-wise "block" whose 8 channels
    are copies of the patch embedding, mean pooling over the patch tokens, a linear head on
    channels {1, 6} for class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            w = torch.zeros(8, 3, 4, 4)
            w[:, 2] = 1 / 16
            w[[1, 6], 2] = 0.0
            w[[1, 6], 0] = 1 / 16  # channels 1 and 6 see input channel 0
            self.patch_embed.weight.copy_(w)
            self.patch_embed.bias.zero_()
            self.blocks[0][0].weight.copy_(torch.eye(8))
            self.blocks[0][0].bias.zero_()
            head = torch.full((2, 8), 0.1)
            head[0, [1, 6]] = 1.0
            self.head.weight.copy_(head)
            self.head.bias.zero_()

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)  # (N, 17, 8)
        t = self.blocks(t)
        return self.head(t[:, 1:].mean(dim=1))


def test_token_layers_gate_channels_last_and_draw_on_the_patch_grid():
    x = images(1)
    ex = mp.explain(_TinyViT(), x, target=0, method="extremal-channels", layer="blocks.0", areas=(2 / 8,), steps=60, head="logits")
    assert ex.extra["layout"] == "tokens" and ex.extra["prefix_tokens"] == 1 and ex.extra["layer_shape"] == [17, 8]
    assert _binary(ex.channel_masks[:, 0]) == [[1, 6]]
    m = ex.masks[0, 0]
    assert float(m[:8, :8].mean()) > 0.8 and float(m[8:, 8:].max()) < 0.2  # channel 0 is lit top-left


@pytest.mark.filterwarnings("ignore::meaningful_perturbation.AreaWarning")  # 5 steps: not converged
def test_save_load_round_trip_and_old_files(tmp_path):
    ex = run(steps=5)
    back = Explanation.load(ex.save(tmp_path / "ch.npz"))
    assert torch.equal(back.channel_masks, ex.channel_masks) and torch.equal(back.masks, ex.masks)
    assert back.extra["salient_channels"] == ex.extra["salient_channels"]
    assert torch.equal(back[1].channel_masks, ex.channel_masks[1:])
    plain = mp.explain(Oracle(), images(), target=0, method="extremal", steps=2, areas=(0.1,))
    assert Explanation.load(plain.save(tmp_path / "plain.npz")).channel_masks is None


def test_automatic_layer_is_gradcams():
    ex = mp.explain(Oracle(), images(), target=torch.tensor([0, 1]), method="extremal-channels", **FAST)
    assert ex.extra["layer"] == "features"  # the block ending in the ReLU after the last convolution
    assert _binary(ex.channel_masks[:, 0]) == [EVIDENCE[0], EVIDENCE[1]]


# ------------------------------------------------------------------------------ CLI
def test_cli_layer_option(tmp_path, capsys):
    from PIL import Image
    import numpy as np

    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["explain", str(img), "--layer", "featurs.13", "--steps", "2", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "mperturb: error: --layer: the model has no module 'featurs.13'; expected a name from model.named_modules(): "
        "closest 'features.13'")
    assert not out.exists()  # refused before anything was written
    assert main(["explain", str(img), "--layer", "features.13", "--method", "paper", "--out", str(out), "-q"]) == 2
    assert "--layer: method 'paper' takes no layer" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["explain", str(img), "--layer", "features.13", "--steps", "3", "--areas", "0.1", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    ex = Explanation.load(out / "img.npz")
    assert ex.method == "extremal-channels" and ex.channel_masks.shape == (1, 1, 64)
    summary = json.loads((out / "img_summary.json").read_text())
    assert summary["channels"]["layer"] == "features.13" and len(summary["channels"]["channel_masks"][0]) == 64
    assert (out / "img_panel.png").stat().st_size > 0


def test_runner_layer_option(tmp_path, capsys):
    from PIL import Image
    import numpy as np

    from meaningful_perturbation.runner import read_jsonl

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(imgs / f"i{i}.png")
    out = tmp_path / "out"
    fast = ["--model", "demo", "--steps", "2", "--input-size", "32", "--areas", "0.1", "-q"]
    assert main(["run", str(imgs), "--out", str(out), "--layer", "classifer", *fast]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mperturb: error: --layer: the model has no module 'classifer'")
    assert not (out / "results.jsonl").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(imgs), "--out", str(out), "--layer", "features.13", *fast]) == 0, capsys.readouterr().err
    recs = read_jsonl(out / "results.jsonl")
    assert len(recs) == 2
    ex = Explanation.load(out / "items" / f"{recs[0]['id']}.npz")
    assert ex.method == "extremal-channels" and ex.channel_masks.shape == (1, 1, 64) and ex.extra["layer"] == "features.13"


@pytest.mark.filterwarnings("ignore::meaningful_perturbation.AreaWarning")  # 5 steps: not converged
def test_mean_perturbation_keeps_a_pooled_head_unchanged():
    # Replacing a channel by its mean over positions leaves its global average unchanged, so
    # a GAP + linear head cannot tell: removing every channel changes nothing.
    ex = run(perturbation="mean", steps=5)
    assert torch.allclose(ex.scores["perturbed"], ex.scores["clean"], atol=1e-6)
    assert torch.allclose(ex.scores["masked"][:, 0], ex.scores["clean"], atol=1e-6)


class _ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.oracle = Oracle()
        self.to_nhwc = _Permute()

    def forward(self, x):
        a = self.to_nhwc(self.oracle.features(x))  # (N, h, w, C)
        return self.oracle.fc(a.mean(dim=(1, 2)))


class _Permute(nn.Module):
    def forward(self, a):
        return a.permute(0, 2, 3, 1)


def test_channels_last_layout():
    x = images()
    ex = mp.explain(_ChannelsLast(), x, target=torch.tensor([0, 1]), method="extremal-channels", layer="to_nhwc",
                    layout="nhwc", **FAST)
    assert ex.extra["layout"] == "nhwc" and ex.extra["layer_shape"] == [SIZE, SIZE, 16]
    assert _binary(ex.channel_masks[:, 0]) == [EVIDENCE[0], EVIDENCE[1]]
    assert float(ex.masks[0, 0, : SIZE // 2, : SIZE // 2].mean()) > 0.8


def test_automatic_layer_error_names_this_method():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with pytest.raises(ConfigError, match=r"^layer: no submodule .* so extremal-channels has no layer to choose; pass layer="):
        mp.explain(model, torch.randn(1, 3, 4, 4), target=0, method="extremal-channels", steps=2)


# ---------------------------------------------------------------- fix15: small grids
def test_pooled_1x1_layer_is_refused_with_no_positions_to_draw():
    with pytest.raises(ConfigError) as e:
        mp.explain(Oracle(), images(), target=0, method="extremal-channels", layer="pool", steps=2)
    msg = str(e.value)
    assert msg.startswith("layer: 'pool' returns shape (2, 16, 1, 1), a 1x1 grid (nchw)"), msg
    assert "no positions to draw" in msg and "at least 2x2 positions" in msg


@pytest.mark.parametrize("grid", [(2, 2), (3, 5), (5, 3)])
def test_display_map_places_small_grid_cells_where_they_are(grid):
    from meaningful_perturbation.methods.channels import channel_maps

    h, w = grid
    H, W = 6 * h, 6 * w
    for r in range(h):
        for c in range(w):
            act = torch.zeros(1, 1, h, w)
            act[0, 0, r, c] = 1.0
            m = channel_maps(act, torch.ones(1, 1, 1), "nchw", None, (H, W))[0, 0]
            # the map's peak lies inside the image cell of that grid position
            peak = int(torch.argmax(m))
            pr, pc = divmod(peak, W)
            assert r * 6 <= pr < (r + 1) * 6 and c * 6 <= pc < (c + 1) * 6, (grid, r, c, pr, pc)
            cell = m[r * 6:(r + 1) * 6, c * 6:(c + 1) * 6].mean()
            assert float(cell) > float(m.mean()) + 0.2


def test_every_channel_removed_keeping_the_score_is_degenerate_and_worded_for_channels():
    model = Oracle()
    with torch.no_grad():
        model.fc.weight[2] = -0.5  # class 2 reads every channel negatively: removing all of them raises it
    ex = mp.explain(model, images(1), target=2, method="extremal-channels", layer="features", **FAST)
    assert float(ex.scores["perturbed"][0]) > float(ex.scores["clean"][0])
    reason = ex.degenerate_reason(0)
    assert reason.startswith("no region found that changes the score (every channel removed keeps it: p "), reason
    flat = Oracle()
    with torch.no_grad():
        flat.fc.weight.zero_()  # no channel matters: the whole-model check, worded for channels
        flat.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    ex = mp.explain(flat, images(1), target=0, method="extremal-channels", layer="features", **FAST)
    assert ex.degenerate_reason(0).startswith("no region found that changes the score (removing every channel changes it by 0")


class _SharedLast(nn.Module):
    """The last conv is one module called twice: Grad-CAM's automatic layer runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x))).mean(dim=(2, 3)))


def test_automatic_layer_skips_a_shared_module():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"^extremal-channels: the automatic layer 'block' runs 2 times in one forward "
                                         r"pass \(a shared module\); using 'stem', the last layer before it that runs once"):
        ex = mp.explain(_SharedLast(), x, target=0, method="extremal-channels", steps=2, areas=(0.5,))
    assert ex.extra["layer"] == "stem"


class _AllShared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)).mean(dim=(2, 3)))


def test_automatic_layer_failure_suggests_layer():
    with pytest.raises(ConfigError, match=r"^layer: the automatic choice failed: 'block' runs 2 times in one forward pass "
                                          r"\(a shared module\) and channel attribution needs a layer that runs once; pass --layer"):
        mp.explain(_AllShared(), torch.randn(1, 3, 8, 8), target=0, method="extremal-channels", steps=2, areas=(0.5,))


def test_layer_accepts_the_module_object_and_errors_never_print_its_repr():
    model = Oracle()
    ex = mp.explain(model, images(), target=torch.tensor([0, 1]), method="extremal-channels", **{**FAST, "layer": model.features})
    assert ex.extra["layer"] == "features" and ex.config["layer"] == "features"
    assert _binary(ex.channel_masks[:, 0]) == [EVIDENCE[0], EVIDENCE[1]]
    stranger = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU())
    with pytest.raises(ConfigError) as e:
        mp.explain(model, images(1), target=0, method="extremal-channels", layer=stranger, steps=2)
    assert str(e.value) == ("layer: the Sequential given is not a submodule of the model; pass one of "
                            "model.named_modules() (the object or its name)")
    with pytest.raises(ConfigError) as e:
        mp.explain(model, images(1), target=0, method="extremal-channels", layer=[1, 2], steps=2)
    assert str(e.value).endswith("got a list") and "Conv2d(" not in str(e.value)


def test_forced_nhwc_on_an_nchw_layer_warns_about_the_aspect_ratio():
    x = images(1)  # 16x16; features returns (1, 16, 16, 16): square either way, so use a wider image
    wide = torch.cat([x, x], dim=-1)  # 16x32: (1, 16, 16, 32) NCHW; read as NHWC its grid is 16x16
    with pytest.warns(UserWarning, match=r"^extremal-channels: layout='nhwc' reads layer 'features' of shape "
                                         r"\(1, 16, 16, 32\) as a 16x16 grid, whose aspect ratio does not match the 16x32 image"):
        mp.explain(Oracle(), wide, target=0, method="extremal-channels", layer="features", layout="nhwc", steps=2, areas=(0.5,))
    import warnings as w

    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        mp.explain(Oracle(), wide, target=0, method="extremal-channels", layer="features", layout="nchw", steps=2, areas=(2 / 16,))
    assert not [c for c in caught if "aspect ratio" in str(c.message)]


class _ClsHeadViT(_TinyViT):
    """The class token gathers the patches before the block; the head reads only the class
    token after it: the block's patch tokens never reach the score."""

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1) + t.mean(dim=1, keepdim=True), t], dim=1)
        return self.head(self.blocks(t)[:, 0])


def test_patch_tokens_that_do_not_reach_the_score_are_noted():
    import warnings as w

    x = images(1)
    with pytest.warns(UserWarning, match=r"^extremal-channels: the patch tokens of layer 'blocks.0' do not reach the score"):
        mp.explain(_ClsHeadViT(), x, target=0, method="extremal-channels", layer="blocks.0", areas=(2 / 8,), steps=2, head="logits")
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        mp.explain(_TinyViT(), x, target=0, method="extremal-channels", layer="blocks.0", areas=(2 / 8,), steps=2, head="logits")
    assert not [c for c in caught if "do not reach the score" in str(c.message)]


def test_panel_names_the_kept_channels_and_says_every_channel_removed():
    from meaningful_perturbation.cli.explain import _channel_columns, _panel_title

    ex = run(target=(0,), x=images(1))
    cols = _channel_columns(ex, images(1), "p(0)", lambda t, region=None: t)
    assert cols[0][0].startswith("kept: 2 of 16 channels (target 12.5%)\n[") and "] of features\np(0) = " in cols[0][0]
    listed = cols[0][0].split("[")[1].split("]")[0]
    assert sorted(int(c) for c in listed.split(", ")) == EVIDENCE[0]
    scores = {k: v[0].tolist() for k, v in ex.scores.items()}
    line = _panel_title("a.png", "extremal-channels", ex, ["0"], scores, False, "m")[1]
    assert "; every channel removed " in line and "whole image" not in line


def test_gradcam_layer_accepts_the_module_object_too():
    pytest.importorskip("captum")
    model = Oracle()
    ex = mp.explain(model, images(1), target=0, method="gradcam", layer=model.features[1])
    assert ex.extra["layer"] == "features.1" and ex.config["layer"] == "features.1"
    with pytest.raises(ConfigError, match=r"^layer: the Conv2d given is not a submodule of the model"):
        mp.explain(model, images(1), target=0, method="gradcam", layer=nn.Conv2d(3, 3, 1))
