"""``extremal-channels``: extremal perturbation of the channels of an intermediate layer.

Fong, Patrick & Vedaldi (ICCV 2019), section on intermediate layers: instead of a
spatial mask on the image, a mask ``m ∈ [0, 1]^C`` over the ``C`` channels of a chosen
layer's activation ``a`` (``(N, C, h, w)`` feature map or ``(N, T, C)`` token sequence) is
learned; the layer's output is replaced by the gated activation

    zero (default):  ã_c = m_c·a_c
    mean:            ã_c = m_c·a_c + (1 − m_c)·mean_positions(a_c)

and, per channel fraction ``a`` (the "area", now a fraction of the channels), the same games
as :mod:`.extremal`::

    preserve:  min_m  −f_c(net(x; ã(m)))                        + λ_t·R_a(m)
    delete:    min_m   f_c(net(x; ã(1 − m)))                    + λ_t·R_a(m)
    dual:      min_m  −f_c(net(x; ã(m))) + f_c(net(x; ã(1 − m))) + λ_t·R_a(m)

with the same area ranking term ``R_a(m) = mean_c((sort(m) − r_a)²)`` over the ``C``
channels (:func:`.extremal.area_term`: ``r_a`` = ``C − round(a·C)`` zeros then
``round(a·C)`` ones), the same weight path ``λ_t = 300·1.0035^(800·t/steps)``, SGD
(lr 0.01, momentum 0.9, dampening 0.9), 800 steps and [0, 1] projection, all run by the one
loop (:func:`..core.loop.optimise`). Here the mask *is* the parameter (no smooth
upsampling): the loop's image blend is the identity (both levels are ``x``) and a forward
hook on the layer multiplies its output by the mask rows of the batch (images × areas ×
games, in the loop's order).

Result (:class:`~meaningful_perturbation.Explanation`):

* ``channel_masks`` ``(N, K, C)`` in [0, 1]: keep-masks over channels (1 = channel kept):
  ``m`` for preserve and dual, ``1 − m`` for delete (as ``masks`` of :mod:`.extremal`).
* ``masks`` ``(N, K, H, W)`` in [0, 1]: for display, the activation of the *salient*
  channels (kept by preservation, removed by deletion), ``Σ_c m_c·a_c`` on the layer's
  grid, upsampled bilinearly to the image and min-max normalised per map. These are
  attribution maps, not keep-masks over pixels (there is no perturbed image to draw).
* ``saliency`` ``(N, H, W)``: the sum of the K maps (as extremal sums its K masks).
* ``extra``: ``layer`` (full module name), ``layer_shape`` (one image's activation shape),
  ``channels`` ``C``, ``layout`` (``nchw``/``nhwc``/``tokens``), ``prefix_tokens``,
  ``areas``, ``achieved_area`` ``(N, K)`` (fraction of channels with salient ``m > ½``) and
  ``salient_channels`` (per image and area, the indices with ``m > ½``, largest ``m`` first).

Layers. ``layer`` names a module as in ``model.named_modules()`` (a unique suffix is
accepted: the command line wraps Hugging Face models as ``model.<name>``); ``None`` takes
the layer Grad-CAM would (the last conv block's output, or the last transformer block whose
patch tokens reach the score; :func:`.baselines.gradcam.find_layer`). The layer must run
exactly once per forward pass and return a tensor (or a tuple / ``ModelOutput`` whose first
element is one) of shape ``(N, C, h, w)`` (``(N, h, w, C)``, as timm's Swin stages return,
is recognised on the patch grid, or forced with ``layout="nhwc"``) or ``(N, T, C)``: tokens
(ViTs; channels last), put back on the patch grid for the display map with the class and
register tokens dropped from the map (the channel mask gates every token). Anything else —
an unknown or unused module, a non-tensor output, ``(N, C)`` vectors or a grid under 2×2
(e.g. a pooled ``(N, C, 1, 1)``) with no positions to draw, a module run twice — is a
:class:`~meaningful_perturbation.ConfigError` naming the layer (by name or type, never by its
``repr``); unknown names list the closest valid ones. ``layer`` may also be the submodule
object. The automatic choice skips a shared module (the last layer before it that runs once,
with a warning). Warnings: a forced ``nchw``/``nhwc`` layout whose grid does not have the
image's aspect ratio; a token layer whose patch tokens do not reach the score.

The model is left as found: the hook is removed in a ``finally`` (also when the call
raises); parameters are never written; ``explain`` restores train/eval flags and
``requires_grad``.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.loop import Game, Problem, Term, forward_scores, optimise
from ..core.objective import SCORES, class_probability
from ..core.precision import to_model_input
from ..errors import AreaWarning, ConfigError
from ..explanation import Explanation
from .baselines import gradcam as _gc
from .common import MAX_STEPS, Context, check_choice, check_range
from .extremal import AREA_TOLERANCE, GAMES, PAPER_STEPS, area_term, check_areas
from .registry import config_as_dict, register

__all__ = ["ChannelsConfig", "resolve_layer_name", "module_name", "channel_maps"]

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class ChannelsConfig:
    """Knobs of channel attribution; the optimisation defaults are :class:`.extremal.ExtremalConfig`'s."""

    layer: str | nn.Module | None = None  # module name (or the submodule object itself) (model.named_modules()); None: the layer Grad-CAM picks (last conv block / last transformer block reaching the score)
    areas: tuple[float, ...] = (0.05, 0.1, 0.2)  # fractions of the layer's channels kept; project choice: extremal's 0.025 dropped (under 2 channels of a 64-channel layer)
    steps: int = 800  # 2019 paper §4: 800 iterations (as extremal)
    lr: float = 0.01  # SGD learning rate 0.01 (2019 reference code, as extremal)
    momentum: float = 0.9  # SGD momentum 0.9 (2019 reference code, as extremal)
    dampening: float = 0.9  # SGD dampening 0.9 (2019 reference code, as extremal)
    game: str = "preserve"  # 2019 §3: preservation is the default game; "delete" and "dual" available
    perturbation: str = "zero"  # a removed channel is set to 0 (the mask multiplies the activation, a_c·m_c); "mean": to its mean over positions
    score: str = "logit"  # "simple" reward = the class logit (2019 §3); "contrastive" available
    area_weight: float = 300.0  # λ0 = 300 (2019 reference code, as extremal)
    area_growth: float = 1.0035  # λ_t = λ0·1.0035^t over 800 steps (2019 reference code); other step counts follow the same path
    init: float | None = None  # None: 1.0 (every channel kept) for preserve and dual, 0.0 for delete (as extremal)
    jitter: str = "none"  # a channel mask has no position for a flip to decorrelate from the image; "flip" available (extremal's jitter)
    layout: str = "auto"  # where the channels are: auto (4-D: (N, C, h, w), or (N, h, w, C) on the patch grid; 3-D: (N, T, C) tokens), or nchw / nhwc / tokens
    top_k: int = 1  # classes explained when target is None
    early_stop: int | None = None  # off by default; a window in steps (as extremal)
    autocast: bool = False  # bfloat16 autocast of the model forward
    channels_last: bool = False  # channels_last memory format for the model input

    def validate(self) -> None:
        if isinstance(self.layer, int) and not isinstance(self.layer, bool) and self.layer >= 0:
            # `--set layer=3` arrives as the JSON number 3: an nn.Sequential child's name.
            object.__setattr__(self, "layer", str(self.layer))
        if self.layer is not None and not isinstance(self.layer, nn.Module) and (not isinstance(self.layer, str) or not self.layer.strip()):
            got = repr(self.layer) if isinstance(self.layer, (str, int, float)) or self.layer is None else f"a {type(self.layer).__name__}"
            raise ConfigError(f"layer: expected a module name such as 'features.10' (see model.named_modules()), "
                              f"a submodule of the model, or None (automatic), got {got}")
        check_areas(self.areas, "channel fractions", "a fraction of the channels")
        check_range("steps", self.steps, 1, MAX_STEPS, integer=True)
        check_range("lr", self.lr, 0, low_open=True)
        check_range("momentum", self.momentum, 0, 1)
        check_range("dampening", self.dampening, 0, 1)
        check_choice("game", self.game, GAMES)
        check_choice("perturbation", self.perturbation, ("zero", "mean"))
        check_choice("score", self.score, SCORES)
        check_range("area_weight", self.area_weight, 0)
        check_range("area_growth", self.area_growth, 1)
        if self.init is not None:
            check_range("init", self.init, 0, 1)
        check_choice("jitter", self.jitter, ("none", "flip"))
        check_choice("layout", self.layout, LAYOUTS)
        check_range("top_k", self.top_k, 1, integer=True)
        if self.early_stop is not None:
            check_range("early_stop", self.early_stop, 1, integer=True)

    @property
    def area_tuple(self) -> tuple[float, ...]:
        return (float(self.areas),) if isinstance(self.areas, (int, float)) else tuple(float(a) for a in self.areas)


# ------------------------------------------------------------------------- layer names
def resolve_layer_name(model: nn.Module, name: str) -> str:
    """The full module name ``name`` refers to in ``model``.

    ``name`` is a key of ``dict(model.named_modules())`` (not ``""``), or a unique suffix of
    one after a dot (``vit.encoder.layer.3`` finds ``model.vit.encoder.layer.3`` in a wrapped
    model).

    Raises:
        ConfigError: no such module (the message lists the closest names first, then a few
            others), or the suffix is ambiguous.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer_name(net, "0")
        '0'
    """
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return name
    suffix = [n for n in names if n.endswith("." + name)]
    if len(suffix) == 1:
        return suffix[0]
    if suffix:
        raise ConfigError(f"layer: {name!r} ends {len(suffix)} module names ({', '.join(map(repr, suffix[:4]))}); give more of it")
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    rest = [n for n in names if n not in close]
    shown = rest[: max(0, 8 - len(close))]
    listing = ", ".join(map(repr, shown)) + (f" ... ({len(names)} in all)" if len(names) > len(close) + len(shown) else "")
    if not names:
        found = "the model has no submodules"
    elif close:
        found = f"closest {', '.join(map(repr, close))}" + (f"; others: {listing}" if shown else "")
    else:
        found = f"valid names include {listing}"
    raise ConfigError(f"layer: the model has no module {name!r}; expected a name from model.named_modules(): {found}")


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """The name of submodule ``layer`` (the object itself) in ``model``.

    Raises:
        ConfigError: ``layer`` is the model itself or not one of its submodules (named by
            type, never by its full ``repr``).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> module_name(net, net[1])
        '1'
    """
    for n, m in model.named_modules():
        if m is layer and n:
            return n
    what = "the model itself" if layer is model else "not a submodule of the model"
    raise ConfigError(f"layer: the {type(layer).__name__} given is {what}; pass one of model.named_modules() "
                      "(the object or its name)")


# --------------------------------------------------------------------------- the gate
class _Gate:
    """Forward hook on the chosen layer.

    Capture mode (``rows is None``): record the activation and pass a copy on (later in-place
    operations such as ``ReLU(inplace=True)`` cannot change the record). Gate mode: replace
    the activation by the gated one, ``rows()`` giving one channel-mask row ``(B, C)`` per
    batch element.
    """

    def __init__(self, name: str, perturbation: str) -> None:
        self.name = name
        self.perturbation = perturbation
        self.rows: Callable[[], torch.Tensor] | None = None
        self.activation: torch.Tensor | None = None
        self.calls = 0
        self.raw: Any = None
        self.channel_dim = 1
        self.position_dims: tuple[int, ...] = (2, 3)

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        self.calls += 1
        t = _gc._first_tensor(output)
        if self.rows is None:
            self.raw = output
            if t is None:
                return None
            self.activation = t.detach()
            return _gc._replace_first(output, t.clone())
        m = self.rows()
        if m.shape[0] != t.shape[0]:
            raise ConfigError(f"layer: {self.name!r} returned a batch of {t.shape[0]} for an input batch of {m.shape[0]}; "
                              "channel attribution needs a layer whose first dimension is the batch")
        shape = [1] * t.dim()
        shape[0], shape[self.channel_dim] = m.shape[0], m.shape[1]
        gate = m.reshape(shape).to(t.dtype)
        if self.perturbation == "mean":
            base = t.mean(dim=self.position_dims, keepdim=True)
            gated = base + gate * (t - base)
        else:
            gated = t * gate
        return _gc._replace_first(output, gated)


def _layout(model: nn.Module, x: torch.Tensor, name: str, act: torch.Tensor, cfg: ChannelsConfig, size: tuple[int, int]):
    """``(layout, channel_dim, position_dims, (grid, prefix))`` of the layer's activation."""
    shape = tuple(act.shape)
    want = cfg.layout
    if act.dim() == 4 and want in ("auto", "nchw", "nhwc"):
        nhwc = want == "nhwc"
        if want == "auto" and shape[-1] != shape[-2]:
            # (N, h, w, C) maps (timm Swin stages): dims 1-2 on the patch grid (or a stage of
            # it) and dims 2-3 not; the rule Grad-CAM uses (baselines/gradcam.py).
            family = _gc._halvings(_gc._patch_grids(model, _gc._probe(model, x[:1]), size, maps=False))
            nhwc = tuple(shape[1:3]) in family and tuple(shape[2:4]) not in family
        return ("nhwc", 3, (1, 2), None) if nhwc else ("nchw", 1, (2, 3), None)
    if act.dim() == 3 and want in ("auto", "tokens"):
        grids = _gc._patch_grids(model, _gc._probe(model, x[:1]), size)
        found = _gc._token_layout(int(shape[1]), grids, size)
        if found is None:
            raise _gc._grid_error(name, shape, grids, size)
        return "tokens", 2, (1,), found
    expected = {"auto": "a 4-D (N, C, h, w) feature map or a 3-D (N, T, C) token sequence",
                "nchw": "a 4-D (N, C, h, w) feature map", "nhwc": "a 4-D (N, h, w, C) feature map",
                "tokens": "a 3-D (N, T, C) token sequence"}[want]
    raise ConfigError(
        f"layer: {name!r} returns shape {shape}; channel attribution (layout={want!r}) needs {expected}, "
        "whose positions can be drawn on the image (a (N, C) vector has none); choose a convolutional layer or a transformer block"
    )


#: Fewest positions per side of a layer's grid: a 1-wide grid (e.g. AdaptiveAvgPool2d(1),
#: (N, C, 1, 1)) is constant along that side once upsampled, so its map draws nothing.
MIN_GRID = 2


def _check_grid(name: str, shape: tuple[int, ...], layout: str, grid_prefix: Any) -> None:
    """Refuse a layer whose spatial grid has fewer than :data:`MIN_GRID` positions on a side."""
    if layout == "nchw":
        grid = shape[2:4]
    elif layout == "nhwc":
        grid = shape[1:3]
    else:
        grid = tuple(grid_prefix[0])
    if min(grid) < MIN_GRID:
        raise ConfigError(
            f"layer: {name!r} returns shape {shape}, a {grid[0]}x{grid[1]} grid ({layout}); channel attribution needs "
            f"at least {MIN_GRID}x{MIN_GRID} positions (a pooled 1x1 output has no positions to draw on the image); "
            "choose a convolutional layer before the global pooling, or a transformer block"
        )


#: A forced layout whose grid's aspect ratio differs from the image's by more than this factor
#: is probably the wrong one (a stage of a CNN or ViT keeps the image's aspect ratio up to rounding).
ASPECT_FACTOR = 1.5


def _warn_aspect(method: str, name: str, shape: tuple[int, ...], layout: str, size: tuple[int, int]) -> None:
    """Warn when a forced ``layout``'s grid does not have the image's aspect ratio."""
    gh, gw = shape[2:4] if layout == "nchw" else shape[1:3]
    ratio = (gh / gw) / (size[0] / size[1])
    if ratio > ASPECT_FACTOR or ratio < 1 / ASPECT_FACTOR:
        other = "nchw" if layout == "nhwc" else "nhwc"
        warnings.warn(
            f"{method}: layout={layout!r} reads layer {name!r} of shape {shape} as a {gh}x{gw} grid, whose aspect ratio "
            f"does not match the {size[0]}x{size[1]} image; the map is probably drawn wrong: check the layout "
            f"(layout={other!r}, or 'auto')",
            UserWarning, stacklevel=5)


def channel_maps(act: torch.Tensor, salient: torch.Tensor, layout: str, grid_prefix: Any, size: tuple[int, int]) -> torch.Tensor:
    """Display maps ``(N, K, H, W)`` in [0, 1]: ``Σ_c salient[n, k, c]·act[n, c]`` on the layer's
    grid, upsampled bilinearly to ``size`` and min-max normalised per map (a flat map is 0).

    Args:
        act: the layer's clean activation, ``(N, C, h, w)``, ``(N, h, w, C)`` or ``(N, T, C)``
            per ``layout`` (``"nchw"``, ``"nhwc"``, ``"tokens"``; tokens use
            ``grid_prefix = ((h, w), prefix)``: the first ``prefix`` tokens are dropped).
        salient: ``(N, K, C)`` channel weights in [0, 1].
    """
    a = act.float()
    if layout == "nhwc":
        a = a.permute(0, 3, 1, 2)
    elif layout == "tokens":
        grid, prefix = grid_prefix
        a = _gc._as_map(a, grid, prefix)
    maps = torch.einsum("nkc,nchw->nkhw", salient.float().to(a.device), a)
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    lo = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - lo
    return torch.where(span > 0, (up - lo) / span.clamp_min(1e-30), torch.zeros_like(up))


# ---------------------------------------------------------------------------- the method
def _run(ctx: Context, cfg: ChannelsConfig) -> Explanation:
    model = ctx.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"method {ctx.method!r}: needs a torch.nn.Module to hook a layer, got {type(model).__name__}; "
            "wrap the function in an nn.Module"
        )
    xin = to_model_input(ctx.x, ctx.input_dtype)
    if isinstance(cfg.layer, nn.Module):
        name = module_name(model, cfg.layer)
    else:
        name = _automatic_layer(model, xin[:1], ctx.method) if cfg.layer is None else resolve_layer_name(model, cfg.layer)
    cfg = dataclasses.replace(cfg, layer=name) if isinstance(cfg.layer, nn.Module) else cfg  # the config records the name
    module = model.get_submodule(name)
    gate = _Gate(name, cfg.perturbation)
    handle = module.register_forward_hook(gate)
    try:
        return _optimise(ctx, cfg, model, xin, name, gate)
    finally:
        handle.remove()


def _automatic_layer(model: nn.Module, x: torch.Tensor, method: str) -> str:
    """Grad-CAM's automatic layer (:func:`.baselines.gradcam.find_layer`), its warning and
    error reworded for this method."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            name = _gc.find_layer(model, x)
        except ConfigError:
            raise ConfigError(
                f"layer: no submodule of the model returns a 4-D (N, C, h, w) feature map or a (N, T, C) token "
                f"sequence on a patch grid, so {method} has no layer to choose; pass layer='<module name>'"
            ) from None
    for w in caught:
        text = str(w.message)
        if text.startswith("gradcam: "):
            text = f"{method}: " + text[len("gradcam: "):].replace(
                "Grad-CAM this close to the input is little more than an edge map",
                "channels this close to the input are edge and colour detectors")
        warnings.warn(text, w.category, stacklevel=4)
    return _once(model, x, name, method)


def _once(model: nn.Module, x: torch.Tensor, name: str, method: str) -> str:
    """``name`` if it runs once per forward pass; else the last layer before its last call that
    runs once and returns a feature map of at least :data:`MIN_GRID`² positions (a warning names
    both); else a :class:`ConfigError` saying the automatic choice failed, with candidates."""
    events = _gc._probe(model, x)
    calls: dict[str, int] = {}
    for e in events:
        calls[e.name] = calls.get(e.name, 0) + 1
    if calls.get(name, 0) <= 1:
        return name
    last = max(i for i, e in enumerate(events) if e.name == name)
    shared = {n for n, c in calls.items() if c > 1}

    def fits(e) -> bool:
        return e.spatial is not None and min(e.spatial) >= MIN_GRID and calls[e.name] == 1 and not any(
            e.name.startswith(s + ".") for s in shared)  # not inside a shared module either

    before = [e.name for e in events[:last] if fits(e)]
    if before:
        warnings.warn(
            f"{method}: the automatic layer {name!r} runs {calls[name]} times in one forward pass (a shared module); "
            f"using {before[-1]!r}, the last layer before it that runs once; pass layer='<module name>' to choose",
            UserWarning, stacklevel=5)
        return before[-1]
    others = list(dict.fromkeys(e.name for e in events if fits(e)))
    hint = f"; candidates that run once: {', '.join(map(repr, others[-5:]))}" if others else ""
    raise ConfigError(
        f"layer: the automatic choice failed: {name!r} runs {calls[name]} times in one forward pass (a shared module) "
        f"and channel attribution needs a layer that runs once; pass --layer (Python: layer='<module name>'){hint}"
    )


def _optimise(ctx: Context, cfg: ChannelsConfig, model: nn.Module, xin: torch.Tensor, name: str, gate: _Gate) -> Explanation:
    x = ctx.x
    n = x.shape[0]
    H, W = ctx.size
    areas = cfg.area_tuple
    with torch.no_grad():
        model(xin)  # capture pass: the clean activation
    if gate.calls == 0:
        raise ConfigError(f"layer: {name!r} did not run in the model's forward pass; name a layer the forward pass uses")
    if gate.calls > 1:
        raise ConfigError(f"layer: {name!r} runs {gate.calls} times in one forward pass (a shared module); "
                          "channel attribution needs a layer that runs once")
    if gate.activation is None:
        raise ConfigError(f"layer: {name!r} returns {type(gate.raw).__name__}, expected a tensor (or a tuple whose first element is one)")
    act = gate.activation
    layout, cdim, pdims, grid_prefix = _layout(model, xin, name, act, cfg, (H, W))
    _check_grid(name, tuple(act.shape), layout, grid_prefix)
    if cfg.layout in ("nchw", "nhwc"):
        _warn_aspect(ctx.method, name, tuple(act.shape), layout, (H, W))
    if layout == "tokens" and name not in _gc._patch_tokens_reach_score(model, xin[:1], {name: (model.get_submodule(name), grid_prefix[1])}):
        warnings.warn(
            f"{ctx.method}: the patch tokens of layer {name!r} do not reach the score (e.g. a last block before a "
            "class-token head): the channel masks are learned through the class token, and the map drawn from the "
            "patch tokens does not show what the score used; choose an earlier block",
            UserWarning, stacklevel=4)
    gate.channel_dim, gate.position_dims = cdim, pdims
    C = int(act.shape[cdim])
    counts = [int(round(a * C)) for a in areas]
    for a, c in zip(areas, counts):
        if c < 1:
            raise ConfigError(f"areas: {a:g} of the {C} channels of layer {name!r} rounds to 0 channels; "
                              f"use areas >= {0.5 / C:.3g} (half a channel) or a layer with more channels")
    k = len(areas)
    games = {
        "preserve": [Game("preserve", False, -1.0)],
        "delete": [Game("delete", True, 1.0)],
        "dual": [Game("preserve", False, -1.0), Game("delete", True, 1.0)],
    }[cfg.game]
    g = len(games)
    wdt = x.dtype
    state: dict[str, torch.Tensor] = {}

    def mask(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # θ (N, K, C) is the channel mask (the loop keeps it in [0, 1]); the hook reads it.
        state["theta"] = theta
        return theta, torch.ones((n, k, 1, 1, 1), dtype=wdt, device=x.device)  # identity blend

    def optimisation_rows() -> torch.Tensor:
        th = state["theta"]
        parts = [1 - th if game.invert else th for game in games]
        return torch.stack(parts, dim=2).reshape(n * k * g, C)  # the loop's (n, k, g) order

    gate.rows = optimisation_rows
    w0 = cfg.area_weight
    growth = cfg.area_growth ** (PAPER_STEPS / cfg.steps)  # the paper's λ path over any step count
    signs = torch.tensor([gm.sign for gm in games], device=x.device)

    def monitor(loss, scores, values):
        return (scores * signs).sum(dim=-1) + w0 * values["area"]

    init = float(cfg.init) if cfg.init is not None else (0.0 if cfg.game == "delete" else 1.0)
    problem = Problem(
        model=model,
        head=ctx.head,
        levels=x.unsqueeze(1).expand(n, 2, *x.shape[1:]),  # both levels are x: the blend is the identity
        mask=mask,
        theta=torch.full((n, k, C), init, dtype=wdt, device=x.device),
        games=games,
        targets=ctx.targets,
        score=cfg.score,
        terms=[Term("area", lambda t: w0 * growth**t, lambda grid, full: area_term(grid, areas))],
        steps=cfg.steps,
        make_optimizer=lambda params: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening),
        jitter=cfg.jitter,
        generator=ctx.generator,
        autocast=cfg.autocast,
        channels_last=cfg.channels_last,
        input_dtype=ctx.input_dtype,
        early_stop=cfg.early_stop,
        monitor=monitor,
    )
    if ctx.callback is not None:
        problem.callback = lambda t, _h: ctx.callback(t + 1, cfg.steps)
    result = optimise(problem)
    m = result.theta.detach().clamp(0, 1)  # (N, K, C): the salient channels in every game

    scores: dict[str, torch.Tensor] = {"clean": class_probability(ctx.clean_logits, ctx.targets, ctx.head)}
    xk = x.repeat_interleave(k, dim=0)
    with torch.no_grad():
        for j, game in enumerate(games):
            rows = (1 - m if game.invert else m).reshape(n * k, C)
            gate.rows = lambda rows=rows: rows
            p = forward_scores(problem, xk, ctx.targets.repeat(k)).view(n, k)
            scores["masked" if j == 0 else f"masked_{game.name}"] = p
        gate.rows = lambda: torch.zeros((n, C), dtype=wdt, device=x.device)  # every channel removed
        scores["perturbed"] = forward_scores(problem, x, ctx.targets)
    keep = 1 - m if cfg.game == "delete" else m
    maps = channel_maps(act, m, layout, grid_prefix, (H, W))
    achieved = (m > 0.5).float().mean(dim=-1)
    mc = m.detach().float().cpu()  # one transfer, not one per channel
    order = torch.argsort(mc, dim=-1, descending=True, stable=True)
    salient = [[[int(c) for c in order[i, j] if mc[i, j, c] > 0.5] for j in range(k)] for i in range(n)]
    extra: dict[str, Any] = {
        "layer": name,
        "layer_shape": list(act.shape[1:]),
        "channels": C,
        "layout": layout,
        "prefix_tokens": int(grid_prefix[1]) if grid_prefix else 0,
        "areas": list(areas),
        "achieved_area": achieved.tolist(),
        "salient_channels": salient,
        "seed": ctx.seed,
    }
    if problem.early_stop:
        extra["steps_run"] = result.steps_run.cpu().tolist()
    _warn_misses(ctx.method, achieved.cpu(), counts, C, areas)
    return Explanation(
        saliency=maps.sum(dim=1).detach().float().cpu(),
        masks=maps.detach().float().cpu(),
        target=ctx.targets.lists,
        history={key: v.cpu() for key, v in result.history.items()},
        scores={key: v.detach().float().cpu() for key, v in scores.items()},
        method=ctx.method,
        config=config_as_dict(cfg),
        extra=extra,
        head=ctx.head.kind,
        channel_masks=keep.detach().float().cpu(),
    )


def _warn_misses(method: str, achieved: torch.Tensor, counts: list[int], channels: int, areas: tuple[float, ...]) -> None:
    """An :class:`AreaWarning` for masks whose fraction of salient channels ``achieved``
    ``(N, K)`` misses its target ``counts[k] / channels`` (what the ranking term pulls towards)
    by more than half a channel or :data:`.extremal.AREA_TOLERANCE` of the target, whichever
    is larger."""
    target = torch.tensor([c / channels for c in counts], dtype=achieved.dtype).view(1, -1)
    slack = torch.clamp_min(AREA_TOLERANCE * target, 0.5 / channels)
    miss = (achieved - target).abs() > slack
    if not bool(miss.any()):
        return
    idx = miss.nonzero().tolist()
    listed = ", ".join(f"image {i} area {areas[j]:g} -> {float(achieved[i, j]):.3f}" for i, j in idx[:10])
    warnings.warn(
        f"{method}: {len(idx)} of {miss.numel()} channel masks miss their target fraction of channels ({listed}); "
        "the area constraint did not converge for them: use more steps or a larger area_weight",
        AreaWarning,
        stacklevel=4,
    )


register(
    "extremal-channels",
    ChannelsConfig,
    "Extremal perturbation of a layer's channels (Fong, Patrick & Vedaldi 2019, intermediate layers): channel masks (N, K, C) of fixed fractions",
)(_run)
