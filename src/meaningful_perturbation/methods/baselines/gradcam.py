"""``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017), for CNNs and vision transformers.

For the activations ``A`` ``(K, h, w)`` of a layer and class score ``y_c`` (the logit,
before the softmax)::

    α_k = mean_{i,j} ∂y_c/∂A_k(i, j)                      (paper eq. 1)
    L_c = ReLU(Σ_k α_k·A_k)          (h, w)                (paper eq. 2)

then ``L_c`` is upsampled bilinearly to the image size (paper §3; Captum's
``LayerAttribution.interpolate``). The gradients are taken with respect to the layer output
(captured by a forward hook; the parameters are frozen). For several target classes the
maps are summed *before* the ReLU (Grad-CAM of the summed score).

Feature maps and token sequences. A layer may return a ``(N, K, h, w)`` feature map or a
``(N, T, D)`` token sequence (a transformer block; a tuple or an HF ``ModelOutput`` counts by
its first tensor). Tokens are put back on the patch grid before eq. 1: the last ``h·w``
tokens are the patches in row-major order, the ``T - h·w`` tokens before them (class,
distillation, register tokens) are dropped, and ``(N, h·w, D)`` becomes ``(N, D, h, w)`` —
the usual practice for Grad-CAM on ViTs (the ``reshape_transform`` of jacobgil's
pytorch-grad-cam, written here from that description). The grid ``(h, w)``, in order:

1. the output size of a patch-embedding convolution seen in the forward pass (a ``Conv2d``
   with ``kernel_size == stride > 1``, no padding);
2. a declared patch size ``p``, ``(H // p, W // p)``: HF ``model.config.patch_size`` or a
   submodule's ``patch_size`` (timm ``patch_embed``);
3. the size of any 4-D feature map seen (hybrid models flatten a CNN's map);
4. inferred from ``T`` alone: the unique ``(h, w)`` with the image's aspect ratio, ``H``
   and ``W`` multiples of ``h`` and ``w``, and ``0 <= T - h·w < h·w``.

A grid from 1–3 matches when ``h·w <= T < 2·h·w`` (fewer prefix tokens than patches), or,
with no prefix tokens, at that grid halved 1, 2, 3... times (hierarchical stages, Swin).
A token layer that matches no grid is a :class:`ConfigError` naming it. A named layer's
channels-last ``(N, h, w, C)`` map (timm Swin stages) is permuted to ``(N, C, h, w)`` when its
dims 1–2 lie on the patch grid (rules 1–2, or a halved stage) and dims 2–3 do not.

Layer choice: ``layer="features.29"`` names a submodule (``model.get_submodule``). With
``layer=None`` one forward pass of the first image with hooks on every submodule finds:

* CNNs: the last ``Conv2d`` to run, followed by the modules that run after it and keep its
  spatial size (its activation, an enclosing block); the last of them is used — the
  rectified output of the last convolution block (``relu5_3`` of VGG16, ``layer4`` of a
  ResNet), the layer of the paper's experiments. The same map channels-last (ConvNeXt's norm
  and MLP inside a block) does not end the extension, and the result is lifted to the last
  enclosing module returning a map of its size (a convolution inside a residual branch →
  its block or stage). Models without a ``Conv2d`` fall back to the last module with a 4-D
  output larger than 1×1.
* Token models (token sequences on the grid run after that layer): the last transformer
  block (a non-leaf element of an ``nn.Sequential``/``nn.ModuleList`` returning the token
  sequence; any token layer if there is none) whose *patch* tokens reach the score (one
  backward pass of the top logit). With a class-token classifier the last block's patch
  tokens never reach the score (only its class token is read), so the block before it — the
  input of the last block — is used; with average pooling it is the last block. Channels-last
  ``(N, h, w, C)`` maps on a stage of the patch grid (Swin stages) count as token layers
  without prefix; window partitions ``(N·windows, T, D)`` do not; without a block, layers
  inside a block's residual branch are not candidates.

If the layer found runs within the first third of the model's leaf modules (e.g. only the
patch embedding has a usable output), a ``UserWarning`` names it and says how to pass
``layer=``. The result's ``extra`` holds ``layer``, ``layer_size`` (the grid ``[h, w]``),
``tokens`` (whether a token sequence was reshaped) and ``prefix_tokens`` (how many were
dropped; 0 for a feature map).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ...core.precision import at_least_float32, to_model_input
from ...errors import ConfigError, ModelError
from ...explanation import Explanation
from ..common import Context, check_choice
from ..registry import register
from ._common import SCORE_KINDS, model_outputs, package, score_forward, sum_over_targets

__all__ = ["GradCamConfig", "find_layer"]

# A layer in the first third of the model's leaf modules is "early" (warned about).
EARLY_FRACTION = 1 / 3


@dataclass(frozen=True)
class GradCamConfig:
    """Knobs of Grad-CAM."""

    layer: str | nn.Module | None = None  # a name or the submodule object; None: the last conv block's output (Selvaraju et al. 2017 use the last conv layer) / the last transformer block reaching the score
    relu: bool = True  # ReLU of the weighted combination (Selvaraju et al. 2017 eq. 2)
    interpolation: str = "bilinear"  # upsampling to the image (Selvaraju et al. 2017 §3: bilinear)
    score: str = "logit"  # y_c "before the softmax" (Selvaraju et al. 2017 §3)

    def validate(self) -> None:
        if isinstance(self.layer, int) and not isinstance(self.layer, bool) and self.layer >= 0:
            # `--set layer=3` arrives as the JSON number 3: an nn.Sequential child's name.
            object.__setattr__(self, "layer", str(self.layer))
        if self.layer is not None and not isinstance(self.layer, nn.Module) and (not isinstance(self.layer, str) or not self.layer):
            got = repr(self.layer) if isinstance(self.layer, (str, int, float)) else f"a {type(self.layer).__name__}"
            raise ConfigError(f"layer: expected a submodule name such as 'features.29', a submodule of the model, "
                              f"or None (automatic), got {got}")
        if not isinstance(self.relu, bool):
            raise ConfigError(f"relu: expected True or False, got {self.relu!r}")
        check_choice("interpolation", self.interpolation, ("bilinear", "nearest"))
        check_choice("score", self.score, SCORE_KINDS)


# ----------------------------------------------------------------------- module outputs
def _first_tensor(out: Any) -> torch.Tensor | None:
    """The activation of a module output: the tensor, the first element of a tuple/list, or
    the first field of an HF ``ModelOutput``; None for anything else."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0] if out and isinstance(out[0], torch.Tensor) else None
    if hasattr(out, "to_tuple") and hasattr(out, "keys"):
        values = out.to_tuple()
        return values[0] if values and isinstance(values[0], torch.Tensor) else None
    return None


def _replace_first(out: Any, t: torch.Tensor) -> Any:
    """``out`` with its activation (see :func:`_first_tensor`) replaced by ``t``."""
    if isinstance(out, torch.Tensor):
        return t
    if isinstance(out, list):
        return [t, *out[1:]]
    if isinstance(out, tuple):
        return out._replace(**{out._fields[0]: t}) if hasattr(out, "_fields") else (t, *out[1:])
    out[next(iter(out.keys()))] = t  # HF ModelOutput: its first set field is to_tuple()[0]
    return out


def _spatial(out) -> tuple[int, int] | None:
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        return int(out.shape[-2]), int(out.shape[-1])
    return None


@dataclass(frozen=True)
class _Event:
    """One finished submodule call of the probe pass."""

    name: str
    module: nn.Module
    spatial: tuple[int, int] | None  # (h, w) of a 4-D tensor output (the CNN rule's view)
    shape: tuple[int, ...] | None  # shape of the activation (first tensor of the output)


def _probe(model: nn.Module, x: torch.Tensor) -> list[_Event]:
    """One :class:`_Event` per submodule call, in the order the calls finish, from one
    no-grad forward pass of ``x``."""
    events: list[_Event] = []
    handles = []

    def hook(m, i, o, name):
        t = _first_tensor(o)
        events.append(_Event(name, m, _spatial(o), tuple(t.shape) if t is not None else None))

    try:
        for name, module in model.named_modules():
            if name == "":
                continue
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return events


def _layer_names(events: list[_Event], limit: int = 8) -> str:
    names = list(dict.fromkeys(e.name for e in events if e.spatial is not None))
    if not names:
        names = list(dict.fromkeys(e.name for e in events))
    shown = names[-limit:]
    return ", ".join(repr(n) for n in shown) + (" (last of them shown)" if len(names) > limit else "")


# ------------------------------------------------------------------------- token grids
def _pair(p: Any) -> tuple[int, int] | None:
    if isinstance(p, int) and not isinstance(p, bool) and p > 0:
        return p, p
    if isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p):
        return int(p[0]), int(p[1])
    return None


def _patch_grids(model: nn.Module, events: list[_Event], size: tuple[int, int], maps: bool = True) -> list[tuple[int, int]]:
    """Candidate patch grids ``(h, w)`` for an input of ``size`` (rules 1–3 of the module
    docstring; rule 3 only with ``maps``), most trusted first, without repeats."""
    grids: list[tuple[int, int]] = []
    for e in events:  # 1. a patch-embedding convolution: non-overlapping patches
        m = e.module
        unpadded = m.padding == "valid" or (isinstance(m.padding, tuple) and not any(m.padding)) if isinstance(m, nn.Conv2d) else False
        if unpadded and e.spatial is not None and m.kernel_size == m.stride and m.stride != (1, 1):
            grids.append(e.spatial)
    declared = [getattr(getattr(model, "config", None), "patch_size", None)]
    declared += [getattr(m, "patch_size", None) for m in model.modules()]
    for p in map(_pair, declared):  # 2. a declared patch size (HF config, timm patch_embed)
        if p is not None and size[0] >= p[0] and size[1] >= p[1]:
            grids.append((size[0] // p[0], size[1] // p[1]))
    if maps:
        grids += [e.spatial for e in reversed(events) if e.spatial is not None]  # 3. feature maps
    return list(dict.fromkeys(grids))


def _infer_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """Rule 4: the unique grid with the image's aspect ratio and whole patches that leaves
    fewer prefix tokens than patches; None when there is no such grid or several."""
    H, W = size
    found = []
    for h in range(1, H + 1):
        if H % h or (h * W) % H:
            continue
        w = h * W // H
        if W % w == 0 and h * w <= tokens < 2 * h * w:
            found.append((h, w))
    return found[0] if len(found) == 1 else None


def _token_layout(tokens: int, grids: list[tuple[int, int]], size: tuple[int, int]) -> tuple[tuple[int, int], int] | None:
    """``((h, w), prefix)`` for a sequence of ``tokens`` tokens, or None (no grid fits)."""
    for h, w in grids:
        if h * w <= tokens < 2 * h * w:
            return (h, w), tokens - h * w
    for h, w in _halvings(grids):  # hierarchical stages (patch merging): no prefix tokens
        if h * w == tokens:
            return (h, w), 0
    grid = _infer_grid(tokens, size)
    return (grid, tokens - grid[0] * grid[1]) if grid is not None else None


def _halvings(grids: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The grids, then each halved (ceil) again and again down to 1x1, without repeats."""
    out = []
    for h, w in grids:
        s = 1
        while h > s // 2 or w > s // 2:
            out.append((-(-h // s), -(-w // s)))
            s *= 2
    return list(dict.fromkeys(out))


def _is_tokens(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 3


def _grid_error(name: str, shape: tuple[int, ...], grids: list[tuple[int, int]], size: tuple[int, int]) -> ConfigError:
    tried = ", ".join(f"{h}x{w}" for h, w in grids) or "none found in the model"
    return ConfigError(
        f"layer: {name!r} returns a token sequence of shape {tuple(shape)} (N, T, D) whose T={shape[1]} tokens "
        f"do not fit a patch grid of the {size[0]}x{size[1]} input (grids tried: {tried}; a grid h x w needs "
        f"h*w <= T < 2*h*w, the first T - h*w tokens being class/register tokens); choose a layer whose "
        "output is a (N, K, h, w) feature map or a (N, 1 + h*w, D) token sequence"
    )


# ----------------------------------------------------------------------- layer choice
def _channels_last_on(shape: tuple[int, ...] | None, grid: tuple[int, int] | None) -> bool:
    """A 4-D ``(N, h, w, C)`` activation on ``grid`` (ConvNeXt's norm and MLP, Swin's stages)."""
    return grid is not None and shape is not None and len(shape) == 4 and tuple(shape[1:3]) == grid \
        and tuple(shape[2:4]) != grid


def _cnn_choice(events: list[_Event]) -> int | None:
    """Index of the event the CNN rule picks (module docstring), or None."""
    last_conv = max(
        (i for i, e in enumerate(events) if isinstance(e.module, nn.Conv2d) and e.spatial is not None and e.spatial[0] * e.spatial[1] > 1),
        default=None,
    )
    if last_conv is not None:
        size = events[last_conv].spatial
        chosen = last_conv
        for i in range(last_conv + 1, len(events)):
            if _channels_last_on(events[i].shape, size):
                continue  # the same map channels-last inside a block (ConvNeXt's norm / MLP): go on
            if events[i].spatial != size:
                break
            chosen = i
        return _enclosing(events, chosen)
    return max((i for i, e in enumerate(events) if e.spatial is not None and e.spatial[0] * e.spatial[1] > 1), default=None)


def _enclosing(events: list[_Event], chosen: int) -> int:
    """The last later event of a module that contains ``events[chosen]``'s module and returns a
    map of the same size: the block or stage a convolution inside a residual branch belongs to
    (MaxViT's MBConv inside its layer), never an activation before the skip connection."""
    name, size = events[chosen].name, events[chosen].spatial
    for i in range(chosen + 1, len(events)):
        e = events[i]
        if name.startswith(e.name + ".") and e.spatial == size:
            chosen, name = i, e.name
    return chosen


def _is_block(model: nn.Module, name: str, module: nn.Module) -> bool:
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return isinstance(parent, (nn.Sequential, nn.ModuleList)) and any(True for _ in module.children())


def _patch_tokens_reach_score(model: nn.Module, x: torch.Tensor, layers: dict[str, tuple[nn.Module, int]]) -> set[str]:
    """Names of the token ``layers`` (name -> (module, prefix)) whose patch tokens get a
    non-zero gradient of the top logit of ``x``, from one forward and backward pass."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def hook(m, i, o, name):
        t = _first_tensor(o)
        if t is not None and t.requires_grad:
            acts[name] = t

    try:
        for name, (module, _) in layers.items():
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)))
        with torch.enable_grad():
            out = model_outputs(model, x.detach().clone().requires_grad_(True), where="while choosing the Grad-CAM layer")
            names = list(acts)
            if not names:
                return set()
            grads = torch.autograd.grad(out.max(dim=1).values.sum(), [acts[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {n for n, g in zip(names, grads) if g is not None and bool(g[:, layers[n][1] :].ne(0).any())}


def find_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the Grad-CAM layer chosen automatically for ``model`` (module docstring).

    Args:
        model: the classifier.
        x: ``(1, C, H, W)`` example input.

    Returns:
        A submodule name for ``model.get_submodule``.

    Raises:
        ConfigError: no submodule returns a feature map or a token sequence on a patch grid.

    Warns:
        UserWarning: the layer found is early in the model (first third of its leaf modules).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_layer(net, torch.randn(1, 3, 8, 8))
        '1'
    """
    events = _probe(model, x)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    chosen = _cnn_choice(events)
    grids = _patch_grids(model, events, size)
    start = 0 if chosen is None else chosen + 1
    family = _halvings(_patch_grids(model, events, size, maps=False))
    batch = int(x.shape[0])
    tokens = {}  # event index -> prefix, for token sequences (or channels-last maps) on a grid after the CNN choice
    for i in range(start, len(events)):
        shape = events[i].shape
        if _is_tokens(shape) and shape[0] == batch:  # not (N·windows, T, D): Swin's window partitions
            layout = _token_layout(shape[1], grids, size)
            if layout is not None:
                tokens[i] = layout[1]
        elif shape is not None and len(shape) == 4 and shape[0] == batch \
                and tuple(shape[1:3]) in family and tuple(shape[2:4]) not in family:
            tokens[i] = 0  # a channels-last (N, h, w, C) map on a stage of the patch grid (Swin stages)
    if tokens:
        # Transformer blocks; if there are none, the token layers outside every block: a layer
        # inside a block's residual branch (timm Swin's drop_path2) is not the block's output.
        inside = [n for n, m in model.named_modules() if n and _is_block(model, n, m)]
        blocks = [i for i in tokens if _is_block(model, events[i].name, events[i].module)] or [
            i for i in tokens if not any(events[i].name.startswith(b + ".") for b in inside)]
        last = {events[i].name: i for i in blocks}  # a module run twice counts at its last call
        reach = _patch_tokens_reach_score(model, x, {n: (events[i].module, tokens[i]) for n, i in last.items()})
        chosen = max((i for n, i in last.items() if n in reach), default=chosen)
    if chosen is None:
        raise ConfigError(
            "layer: no submodule of the model returns a 4-D (N, C, h, w) feature map or a (N, T, D) token "
            "sequence on a patch grid, so Grad-CAM has no layer to use; pass layer='<submodule name>' "
            "or use method='gradient', 'occlusion' or 'rise'"
        )
    name = events[chosen].name
    leaves = [i for i, e in enumerate(events) if not any(True for _ in e.module.children())]
    done = sum(1 for i in leaves if i <= chosen)
    if leaves and done <= EARLY_FRACTION * len(leaves):
        warnings.warn(
            f"gradcam: the automatic layer {name!r} is early in the model (it finishes after {done} of its "
            f"{len(leaves)} leaf modules): no later layer returns a (N, C, h, w) feature map or a token sequence "
            "on the patch grid that reaches the score, and Grad-CAM this close to the input is little more than "
            "an edge map; pass layer='<submodule name>' naming a late block",
            UserWarning,
            stacklevel=2,
        )
    return name


def _block_names(model: nn.Module, limit: int = 4) -> str:
    """The last few transformer/residual blocks (children of a Sequential/ModuleList that have
    children of their own), for hints."""
    names = [n for n, m in model.named_modules() if n and _is_block(model, n, m)]
    return ", ".join(repr(n) for n in names[-limit:])


def _resolve_layer(model: nn.Module, x: torch.Tensor, name: str | None) -> tuple[str, nn.Module]:
    """``name`` → ``(full name, module)``. A name relative to a wrapped model is accepted when
    exactly one submodule ends with it: the command line wraps Hugging Face models (their
    modules are ``model.<name>``), so ``vit.layers.3`` finds ``model.vit.layers.3``."""
    if name is None:
        name = find_layer(model, x[:1])
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return name, modules[name]
    suffix = [n for n in modules if n.endswith("." + name)]
    if len(suffix) == 1:
        return suffix[0], modules[suffix[0]]
    blocks = _block_names(model)
    raise ConfigError(
        f"layer: the model has no submodule {name!r}"
        + (f" (it ends {len(suffix)} names: {', '.join(map(repr, suffix[:4]))}; give more of it)" if suffix else "")
        + f"; layers with a 4-D output include {_layer_names(_probe(model, x[:1]))}"
        + (f"; blocks include {blocks}" if blocks else "")
    )


def _first_layer_of(model: nn.Module, block: str) -> str | None:
    """The first leaf inside ``block`` that a forward pass reaches first: its input norm in a
    pre-norm transformer block."""
    module = model.get_submodule(block)
    for n, m in module.named_modules():
        if n and not any(True for _ in m.children()):
            return f"{block}.{n}"
    return None


# ---------------------------------------------------------------------------- Grad-CAM
def _capture(layer: nn.Module, name: str, forward, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, ∂Σ_n y_{n, target_n}/∂A)`` at the output of ``layer`` for the input ``x``."""
    saved: list[torch.Tensor] = []

    def hook(m, i, o):
        t = _first_tensor(o)
        if t is None:
            raise ConfigError(f"layer: {name!r} must return a tensor (or a tuple whose first element is one) for Grad-CAM, got {type(o).__name__}")
        saved[:] = [t]  # a module run several times: its last call
        # Later modules get a copy, so in-place operations after the layer (ReLU(inplace=True))
        # cannot change the saved activation.
        return _replace_first(o, t.clone())

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            # The parameters are frozen: the layer output carries a gradient only through x.
            scores = forward(x.clone().requires_grad_(True)).gather(1, target.view(-1, 1))
            if not saved:
                raise ConfigError(f"layer: {name!r} did not run in the model's forward pass; name a layer the forward pass uses")
            act = saved[0]
            grad = None
            if act.requires_grad:
                (grad,) = torch.autograd.grad(scores, act, grad_outputs=torch.ones_like(scores), allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        raise ModelError(f"layer {name!r}: the class score does not depend on its output (no gradient path); name a layer between the input and the classifier")
    return act.detach(), grad


def _as_map(a: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """``(N, T, D)`` tokens -> ``(N, D, h, w)``: the prefix dropped, patches row-major."""
    n, _, d = a.shape
    return a[:, prefix:].transpose(1, 2).reshape(n, d, *grid)


def _run(ctx: Context, cfg: GradCamConfig) -> Explanation:
    from captum.attr import LayerAttribution

    model = ctx.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"method 'gradcam': needs a torch.nn.Module to hook a layer, got {type(model).__name__}; "
            "wrap the function in an nn.Module or use method='gradient', 'occlusion' or 'rise'"
        )
    xin = to_model_input(ctx.x, ctx.input_dtype)  # what the model sees (its own dtype)
    if isinstance(cfg.layer, nn.Module):  # the submodule object: its name (the config records the name)
        from ..channels import module_name

        cfg = dataclasses.replace(cfg, layer=module_name(model, cfg.layer))
    name, layer = _resolve_layer(model, xin, cfg.layer)
    forward = score_forward(model, cfg.score, where="while computing Grad-CAM", head=ctx.head, dtype=ctx.input_dtype)
    layout: dict[str, Any] = {}

    def to_map(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.dim() == 4:
            layout.setdefault("tokens", (None, 0))
            if "channels_last" not in layout:
                # (N, h, w, C) maps (timm Swin stages): dims 1-2 on the patch grid (or a stage
                # of it), dims 2-3 not. Only probed for maps whose last two sizes differ.
                family = set()
                if a.shape[-1] != a.shape[-2]:
                    family = _halvings(_patch_grids(model, _probe(model, xin[:1]), ctx.size, maps=False))
                layout["channels_last"] = tuple(a.shape[1:3]) in family and tuple(a.shape[2:4]) not in family
            if layout["channels_last"]:
                return a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
            return a, g
        if a.dim() != 3:
            raise ConfigError(
                f"layer: {name!r} must return a 4-D (N, K, h, w) feature map or a 3-D (N, T, D) token sequence "
                f"for Grad-CAM, got shape {tuple(a.shape)}; choose a convolutional layer or a transformer block"
            )
        if "tokens" not in layout:
            size = ctx.size
            grids = _patch_grids(model, _probe(model, xin[:1]), size)
            found = _token_layout(int(a.shape[1]), grids, size)
            if found is None:
                raise _grid_error(name, tuple(a.shape), grids, size)
            layout["tokens"] = found
        grid, prefix = layout["tokens"]
        if not bool(g[:, prefix:].ne(0).any()) and bool(g[:, :prefix].ne(0).any()):
            blocks = [n for n, m in model.named_modules() if n and _is_block(model, n, m)]
            # the named block's input: the block before it, or its own first layer (input norm);
            # a layer after the blocks (the final norm): the last block's input the same way
            last = name if name in blocks else (blocks[-1] if blocks else None)
            before = blocks[blocks.index(last) - 1] if last is not None and blocks.index(last) > 0 else None
            first = _first_layer_of(model, last) if last is not None else None
            hint = " or ".join(repr(n) for n in (before, first) if n) or "a layer before the class token is read out"
            raise ConfigError(
                f"layer: the class score depends on {name!r} only through its {prefix} class/register token(s), "
                "not its patch tokens (a class-token classifier after the last block reads only the class token), "
                f"so Grad-CAM there is zero everywhere; name {hint} (the input of the last block, whose patch "
                "tokens still reach the score)"
            )
        return _as_map(a, grid, prefix), _as_map(g, grid, prefix)

    def attribute(target: torch.Tensor) -> torch.Tensor:
        a, g = to_map(*_capture(layer, name, forward, ctx.x, target))  # forward casts x to the model's dtype
        alpha = torch.mean(g, dim=(2, 3), keepdim=True)  # eq. 1: spatial mean of the gradient
        # eq. 2 before the ReLU; the layer's own precision may be float16
        return at_least_float32(torch.sum(alpha * a, dim=1, keepdim=True).detach())

    cam = sum_over_targets(ctx, attribute)  # (N, 1, h, w): Σ_k α_k·A_k of the summed score
    if cfg.relu:
        cam = cam.clamp_min(0)
    layer_size = [int(cam.shape[-2]), int(cam.shape[-1])]
    up = LayerAttribution.interpolate(cam, ctx.size, interpolate_mode=cfg.interpolation)
    grid, prefix = layout["tokens"]
    extra = {"layer": name, "layer_size": layer_size, "tokens": grid is not None, "prefix_tokens": prefix}
    return package(ctx, up[:, 0], cfg, extra=extra)


register("gradcam", GradCamConfig, "Grad-CAM (Selvaraju et al. 2017) at the last conv block / transformer block or a named layer", requires={"captum": "baselines"})(_run)
