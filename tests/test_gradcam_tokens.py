"""Grad-CAM on token models (vision transformers): tokens reshaped to the patch grid, the
automatic layer, the early-layer warning, the error for a token count that fits no grid."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import meaningful_perturbation as mp
from meaningful_perturbation.methods.baselines import find_layer

P = 4  # patch size of the hand-built models
ROWS, COLS = slice(1, 3), slice(3, 5)  # grid cells the region-pooled model reads (off-centre, not square)


class _Block(nn.Module):
    """Pre-norm transformer block: optional self-attention (token mixing), per-token MLP."""

    def __init__(self, d: int, mix: bool, tuple_out: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 1, batch_first=True) if mix else None
        self.norm2 = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.tuple_out = tuple_out

    def forward(self, x):
        x = x[0] if isinstance(x, tuple) else x
        if self.attn is not None:
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return (x, None) if self.tuple_out else x  # HF-v4-style blocks return tuples


class _TinyViT(nn.Module):
    """Conv patch embedding (P×P patches), a class token and ``n_reg`` register tokens before
    the patches, ``depth`` blocks; the head reads the class token (``pool="cls"``) or the mean
    of the last block's patch tokens in the grid cells ``ROWS × COLS`` (``pool="region"``).
    ``keep`` > 0 prunes the patch tokens to the first ``keep`` (no grid left)."""

    def __init__(self, pool="region", depth=2, mix=False, tuple_out=False, n_reg=2, d=8, classes=3, keep=0):
        super().__init__()
        self.patch = nn.Conv2d(3, d, P, stride=P, bias=False)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.reg = nn.Parameter(torch.randn(1, n_reg, d))
        self.blocks = nn.Sequential(*[_Block(d, mix, tuple_out) for _ in range(depth)])
        self.head = nn.Linear(d, classes)
        self.pool, self.prefix, self.keep = pool, 1 + n_reg, keep

    def tokens(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, h*w, d), row-major patches
        if self.keep:
            t = t[:, : self.keep]
        n = t.shape[0]
        return torch.cat([self.cls.expand(n, -1, -1), self.reg.expand(n, -1, -1), t], dim=1)

    def last_block(self, x):
        out = self.blocks(self.tokens(x))
        return out[0] if isinstance(out, tuple) else out

    def forward(self, x):
        t = self.last_block(x)
        if self.pool == "cls":
            return self.head(t[:, 0])
        grid = t[:, self.prefix :].reshape(x.shape[0], x.shape[2] // P, x.shape[3] // P, -1)
        return self.head(grid[:, ROWS, COLS].mean(dim=(1, 2)))


def _no_bias(model: nn.Module) -> nn.Module:
    """Biases 0, so a patch of zero pixels stays a zero token through every block."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def _hand_cam(model: _TinyViT, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """ReLU(Σ_k α_k A_k) at the last block for the region-pooled model: y_c = w_c·mean_{u∈R} A(u)
    gives ∂y_c/∂A_k(u) = w_ck/|R| on R and 0 elsewhere, so α_k = w_ck/(h·w) (Grad-CAM eq. 1)."""
    with torch.no_grad():
        n, _, H, W = x.shape
        h, w = H // P, W // P
        A = model.last_block(x)[:, model.prefix :].reshape(n, h, w, -1)  # token 3 + i*w + j is cell (i, j)
        cam = torch.relu(torch.einsum("nhwd,nd->nhw", A, model.head.weight[target]) / (h * w))
        return F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("mix,tuple_out", [(False, False), (True, True)])
def test_region_pooled_token_model_equals_hand_computed_at_last_block(mix, tuple_out):
    torch.manual_seed(0)
    model = _TinyViT(mix=mix, tuple_out=tuple_out).eval()
    x = torch.randn(2, 3, 16, 24)  # grid 4x6: a transposed reshape would not even fit
    assert find_layer(model, x[:1]) == "blocks.1"  # the last block, no warning (pytest -W error below)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = mp.explain(model, x, target=torch.tensor([0, 2]), method="gradcam")
    assert ex.extra == {"layer": "blocks.1", "layer_size": [4, 6], "tokens": True, "prefix_tokens": 3}
    assert torch.allclose(ex.saliency, _hand_cam(model, x, [0, 2]), atol=1e-6)


def test_token_gradcam_peaks_in_the_patches_the_score_reads():
    torch.manual_seed(1)
    model = _no_bias(_TinyViT(mix=False)).eval()
    x = torch.zeros(1, 3, 16, 24)
    x[:, :, ROWS.start * P : ROWS.stop * P, COLS.start * P : COLS.stop * P] = torch.rand(1, 3, 8, 8)
    top = int(model(x).argmax())
    assert model(x)[0, top] > 0  # so Σ_R cam > 0 while the cells outside R hold zero tokens
    ex = mp.explain(model, x, target=top, method="gradcam")
    outside = torch.ones(16, 24, dtype=torch.bool)
    outside[ROWS.start * P : ROWS.stop * P, COLS.start * P : COLS.stop * P] = False
    i = int(ex.saliency[0].argmax())
    assert not outside.flatten()[i]
    assert ex.saliency[0].max() > 0


def test_class_token_model_uses_the_input_of_the_last_block():
    torch.manual_seed(2)
    model = _TinyViT(pool="cls", depth=3, mix=True).eval()
    x = torch.randn(2, 3, 16, 16)
    # blocks.2's patch tokens never reach the class token the head reads.
    assert find_layer(model, x[:1]) == "blocks.1"
    ex = mp.explain(model, x, method="gradcam")
    assert ex.extra == {"layer": "blocks.1", "layer_size": [4, 4], "tokens": True, "prefix_tokens": 3}
    assert (ex.saliency.flatten(1).amax(dim=1) > 0).all()
    # The last block's first layer (its input norm) is late and reaches the score.
    ex = mp.explain(model, x, method="gradcam", layer="blocks.2.norm1")
    assert ex.extra["tokens"] and ex.extra["layer_size"] == [4, 4]
    with pytest.raises(mp.ConfigError) as err:
        mp.explain(model, x, method="gradcam", layer="blocks.2")
    assert str(err.value).startswith(
        "layer: the class score depends on 'blocks.2' only through its 3 class/register token(s), not its patch "
        "tokens (a class-token classifier after the last block reads only the class token), so Grad-CAM there is "
        "zero everywhere; name 'blocks.1' or 'blocks.2.norm1' (the input of the last block, whose patch tokens "
        "still reach the score)"
    )
    # A name relative to a wrapper's inner model resolves when unambiguous (the CLI wraps HF
    # models as `.model`), and an integer child index of a Sequential is a name.
    wrapped = torch.nn.Sequential(model)
    ex = mp.explain(wrapped, x, method="gradcam", layer="blocks.2.norm1")
    assert ex.extra["layer"] == "0.blocks.2.norm1"
    with pytest.raises(mp.ConfigError, match=r"layer: the model has no submodule 'blocks.9'; layers with a 4-D "
                                             r"output include .*; blocks include .*'0.blocks.2'"):
        mp.explain(wrapped, x, method="gradcam", layer="blocks.9")


def test_same_result_alone_and_in_a_batch():
    torch.manual_seed(3)
    model = _TinyViT(pool="cls", depth=2, mix=True).eval()
    x = torch.randn(3, 3, 16, 16)
    both = mp.explain(model, x, method="gradcam", target=torch.tensor([0, 1, 2]))
    one = mp.explain(model, x[1:2], method="gradcam", target=1)
    assert torch.allclose(both.saliency[1], one.saliency[0], atol=1e-6)


def test_untokenisable_count_is_a_config_error_and_the_fallback_warns():
    torch.manual_seed(4)
    model = _TinyViT(pool="cls", mix=True, keep=10).eval()  # 3 + 10 tokens: no grid
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(mp.ConfigError) as err:
        mp.explain(model, x, method="gradcam", layer="blocks.1")
    assert str(err.value) == (
        "layer: 'blocks.1' returns a token sequence of shape (2, 13, 8) (N, T, D) whose T=13 tokens do not fit a "
        "patch grid of the 16x16 input (grids tried: 4x4; a grid h x w needs h*w <= T < 2*h*w, the first T - h*w "
        "tokens being class/register tokens); choose a layer whose output is a (N, K, h, w) feature map or a "
        "(N, 1 + h*w, D) token sequence"
    )
    # Only the patch embedding has a grid: it is used, with a warning saying so.
    with pytest.warns(UserWarning) as rec:
        ex = mp.explain(model, x, method="gradcam")
    assert ex.extra == {"layer": "patch", "layer_size": [4, 4], "tokens": False, "prefix_tokens": 0}
    (msg,) = [str(r.message) for r in rec if "gradcam" in str(r.message)]
    assert msg.startswith("gradcam: the automatic layer 'patch' is early in the model (it finishes after 1 of its ")
    assert msg.endswith("pass layer='<submodule name>' naming a late block")


def test_early_only_feature_map_warns_and_late_one_does_not():
    patch_mlp = nn.Sequential(
        nn.Conv2d(3, 4, P, stride=P), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"^gradcam: the automatic layer '0' is early in the model \(it finishes after 1 of its 7 leaf modules\)"):
        assert find_layer(patch_mlp, torch.randn(1, 3, 16, 16)) == "0"
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_layer(cnn, torch.randn(1, 3, 16, 16)) == "3"


# ------------------------------------------------------------------- transformers ViT
def _hf_vit():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=64, num_labels=4,
    )  # fmt: skip
    torch.manual_seed(5)
    return transformers.ViTForImageClassification(cfg).eval()


def _blocks(vit) -> list[str]:
    return [n for n, m in vit.named_modules() if type(m).__name__ == "ViTLayer"]


def test_hf_vit_automatic_layer_equals_hand_computed_from_hidden_states():
    vit = _hf_vit()
    blocks = _blocks(vit)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ex = mp.explain(vit, x, method="gradcam", target=torch.tensor([3, 1]))
    # Class-token classifier: the last block's input (the output of the block before it).
    assert ex.extra == {"layer": blocks[-2], "layer_size": [4, 4], "tokens": True, "prefix_tokens": 1}
    xr = x.clone().requires_grad_(True)
    out = vit(xr, output_hidden_states=True)
    hidden = out.hidden_states[len(blocks) - 1]  # hidden_states[0] = embeddings, [k] = block k-1 output
    (g,) = torch.autograd.grad(out.logits.gather(1, torch.tensor([[3], [1]])).sum(), hidden)
    A, G = hidden.detach()[:, 1:].reshape(2, 4, 4, 32), g[:, 1:].reshape(2, 4, 4, 32)
    cam = torch.relu(torch.einsum("nhwd,nd->nhw", A, G.mean(dim=(1, 2))))
    expected = F.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(ex.saliency, expected, atol=1e-5)


def test_hf_vit_named_layers():
    vit = _hf_vit()
    last = _blocks(vit)[-1]
    x = torch.randn(1, 3, 32, 32)
    ex = mp.explain(vit, x, method="gradcam", layer=f"{last}.layernorm_before")
    assert ex.extra == {"layer": f"{last}.layernorm_before", "layer_size": [4, 4], "tokens": True, "prefix_tokens": 1}
    assert ex.saliency.max() > 0
    with pytest.raises(mp.ConfigError, match=f"depends on '{last}' only through its 1 class/register token"):
        mp.explain(vit, x, method="gradcam", layer=last)


# ------------------------------------------------ channels-last maps, hierarchical stages
class _Stage(nn.Module):
    """(N, h, w, C) channels-last map -> LayerNorm + Linear per position (a Swin-like stage)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class _Merge(nn.Module):
    """(N, h*w, D) tokens -> (N, h/2 * w/2, 4D): 2x2 patch merging, then a Linear."""

    def __init__(self, d: int, grid: tuple[int, int]):
        super().__init__()
        self.grid, self.fc = grid, nn.Linear(4 * d, d)

    def forward(self, t):
        n, _, d = t.shape
        h, w = self.grid
        g = t.reshape(n, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(n, (h // 2) * (w // 2), 4 * d)
        return self.fc(g)


class _ChannelsLast(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.patch = nn.Conv2d(3, d, P, stride=P)
        self.stages = nn.Sequential(_Stage(d), _Stage(d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.stages(self.patch(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class _Hierarchical(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 2, stride=2)
        self.stages = nn.Sequential(_Merge(d, (8, 12)), _Merge(d, (4, 6)))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.stages(self.patch(x).flatten(2).transpose(1, 2)).mean(dim=1))


def _cam_of(A: torch.Tensor, G: torch.Tensor, size) -> torch.Tensor:
    """Grad-CAM eqs. 1-2 of a (N, K, h, w) map and its gradient, upsampled to ``size``."""
    cam = torch.relu((G.mean(dim=(2, 3), keepdim=True) * A).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]


def test_channels_last_map_is_permuted():
    torch.manual_seed(6)
    model = _ChannelsLast().eval()
    x = torch.randn(2, 3, 16, 24)
    ex = mp.explain(model, x, method="gradcam", target=torch.tensor([0, 2]), layer="stages.1")
    assert ex.extra == {"layer": "stages.1", "layer_size": [4, 6], "tokens": False, "prefix_tokens": 0}
    out = model.stages(model.patch(x).permute(0, 2, 3, 1))  # (N, 4, 6, 8)
    (g,) = torch.autograd.grad(model.head(out.mean(dim=(1, 2))).gather(1, torch.tensor([[0], [2]])).sum(), out)
    assert torch.allclose(ex.saliency, _cam_of(out.detach().permute(0, 3, 1, 2), g.permute(0, 3, 1, 2), (16, 24)), atol=1e-6)


def test_hierarchical_tokens_on_a_halved_grid_and_chosen_automatically():
    torch.manual_seed(7)
    model = _Hierarchical().eval()
    x = torch.randn(2, 3, 16, 24)
    ex = mp.explain(model, x, method="gradcam", target=torch.tensor([1, 0]))
    assert ex.extra == {"layer": "stages.1", "layer_size": [2, 3], "tokens": True, "prefix_tokens": 0}
    t = model.stages(model.patch(x).flatten(2).transpose(1, 2))  # (N, 6, 8)
    (g,) = torch.autograd.grad(model.head(t.mean(dim=1)).gather(1, torch.tensor([[1], [0]])).sum(), t)
    as_map = lambda a: a.transpose(1, 2).reshape(2, 8, 2, 3)  # noqa: E731
    assert torch.allclose(ex.saliency, _cam_of(as_map(t.detach()), as_map(g), (16, 24)), atol=1e-6)


def test_channels_last_stage_is_chosen_automatically():
    # Swin-like: (N, h, w, C) stages after a patch-embedding convolution. The last stage
    # (a block of the Sequential) is chosen, not the patch embedding and not a leaf inside it.
    torch.manual_seed(6)
    model = _ChannelsLast().eval()
    x = torch.randn(1, 3, 16, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not the "early layer" warning of the patch embedding
        assert find_layer(model, x) == "stages.1"


class _ResidualBranchStage(nn.Module):
    """(N, h, w, C) tokens with the block's MLP branch behind an Identity before the skip
    connection (timm Swin's ``drop_path2``): the Identity carries the branch only."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.fc, self.drop_path = nn.LayerNorm(d), nn.Linear(d, d), nn.Identity()

    def forward(self, x):
        n, h, w, c = x.shape
        t = x.reshape(n, h * w, c)
        t = t + self.drop_path(self.fc(self.norm(t)))  # (N, T, D) inside the block
        return t.reshape(n, h, w, c)


class _SwinLike(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.patch = nn.Conv2d(3, d, P, stride=P)
        self.layers = nn.Sequential(nn.Sequential(_ResidualBranchStage(d), _ResidualBranchStage(d)))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.layers(self.patch(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


def test_layer_inside_a_residual_branch_is_never_chosen():
    torch.manual_seed(8)
    model = _SwinLike().eval()
    x = torch.randn(1, 3, 16, 24)
    name = find_layer(model, x)
    assert name in ("layers.0", "layers.0.1"), name  # the stage or its last block, not '...drop_path'
    ex = mp.explain(model, x, method="gradcam")
    assert ex.extra["layer"] == name and ex.extra["layer_size"] == [4, 6]


class _ConvNeXtLike(nn.Module):
    """A depthwise conv, then LayerNorm + MLP channels-last, then back, plus the skip."""

    def __init__(self, d=8):
        super().__init__()
        self.stem = nn.Conv2d(3, d, P, stride=P)
        self.stages = nn.Sequential(_CNBlock(d), _CNBlock(d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class _CNBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.dw = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        y = self.fc(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + y


def test_convolution_inside_a_residual_branch_is_lifted_to_its_stage():
    # The last Conv2d is the depthwise convolution inside the last block's branch; its map
    # continues channels-last (norm, MLP): the block, then the stage around it, are used.
    torch.manual_seed(9)
    model = _ConvNeXtLike().eval()
    x = torch.randn(1, 3, 16, 24)
    assert find_layer(model, x) == "stages"
