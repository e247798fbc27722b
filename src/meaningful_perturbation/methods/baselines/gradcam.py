"""``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017).

For the activations ``A`` ``(K, h, w)`` of a convolutional layer and class score ``y_c``
(the logit, before the softmax)::

    α_k = mean_{i,j} ∂y_c/∂A_k(i, j)                      (paper eq. 1)
    L_c = ReLU(Σ_k α_k·A_k)          (h, w)                (paper eq. 2)

then ``L_c`` is upsampled bilinearly to the image size (paper §3). Captum's
``LayerGradCam`` computes the weighted sum (gradients with respect to the layer output;
the parameters are frozen), ``LayerAttribution.interpolate`` upsamples. For several target
classes the maps are summed *before* the ReLU (Grad-CAM of the summed score).

Layer choice: ``layer="features.29"`` names a submodule (``model.get_submodule``). With
``layer=None`` the layer is found by one forward pass of the first image with hooks on
every submodule: the last ``Conv2d`` to run, followed by the modules that run after it and
keep its spatial size (its activation, an enclosing block); the last of them is used — the
rectified output of the last convolution block (``relu5_3`` of VGG16, ``layer4`` of a
ResNet), the layer of the paper's experiments. Models without a ``Conv2d`` fall back to the
last module with a 4-D output larger than 1×1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...core.precision import at_least_float32, to_model_input
from ...errors import ConfigError, ModelError
from ...explanation import Explanation
from ..common import Context, check_choice
from ..registry import register
from ._common import SCORE_KINDS, package, score_forward, sum_over_targets

__all__ = ["GradCamConfig", "find_layer"]


@dataclass(frozen=True)
class GradCamConfig:
    """Knobs of Grad-CAM."""

    layer: str | None = None  # None: the last conv block's output (Selvaraju et al. 2017 use the last conv layer)
    relu: bool = True  # ReLU of the weighted combination (Selvaraju et al. 2017 eq. 2)
    interpolation: str = "bilinear"  # upsampling to the image (Selvaraju et al. 2017 §3: bilinear)
    score: str = "logit"  # y_c "before the softmax" (Selvaraju et al. 2017 §3)

    def validate(self) -> None:
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ConfigError(f"layer: expected a submodule name such as 'features.29' or None (automatic), got {self.layer!r}")
        if not isinstance(self.relu, bool):
            raise ConfigError(f"relu: expected True or False, got {self.relu!r}")
        check_choice("interpolation", self.interpolation, ("bilinear", "nearest"))
        check_choice("score", self.score, SCORE_KINDS)


def _spatial(out) -> tuple[int, int] | None:
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        return int(out.shape[-2]), int(out.shape[-1])
    return None


def _probe(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, int] | None]]:
    """(name, module, spatial size of a 4-D output or None) per submodule call, in the
    order the calls finish, from one no-grad forward pass of ``x``."""
    events: list[tuple[str, nn.Module, tuple[int, int] | None]] = []
    handles = []
    try:
        for name, module in model.named_modules():
            if name == "":
                continue
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: events.append((name, m, _spatial(o)))))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return events


def _layer_names(events, limit: int = 8) -> str:
    names = list(dict.fromkeys(name for name, _, size in events if size is not None))
    if not names:
        names = list(dict.fromkeys(name for name, _, _ in events))
    shown = names[-limit:]
    return ", ".join(repr(n) for n in shown) + (" (last of them shown)" if len(names) > limit else "")


def find_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the Grad-CAM layer chosen automatically for ``model`` (see the module docstring).

    Args:
        model: the classifier.
        x: ``(1, C, H, W)`` example input.
    """
    events = _probe(model, x)
    last_conv = max(
        (i for i, (_, m, s) in enumerate(events) if isinstance(m, nn.Conv2d) and s is not None and s[0] * s[1] > 1),
        default=None,
    )
    if last_conv is not None:
        size = events[last_conv][2]
        chosen = last_conv
        for i in range(last_conv + 1, len(events)):
            if events[i][2] != size:
                break
            chosen = i
        return events[chosen][0]
    spatial = [name for name, _, s in events if s is not None and s[0] * s[1] > 1]
    if not spatial:
        raise ConfigError(
            "layer: no submodule of the model returns a 4-D (N, C, h, w) feature map, so Grad-CAM "
            "has no layer to use; pass layer='<submodule name>' or use method='gradient', 'occlusion' or 'rise'"
        )
    return spatial[-1]


def _resolve_layer(model: nn.Module, x: torch.Tensor, name: str | None) -> tuple[str, nn.Module]:
    if name is None:
        name = find_layer(model, x[:1])
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        pass
    raise ConfigError(f"layer: the model has no submodule {name!r}; layers with a 4-D output include {_layer_names(_probe(model, x[:1]))}")


def _run(ctx: Context, cfg: GradCamConfig) -> Explanation:
    from captum.attr import LayerAttribution, LayerGradCam

    model = ctx.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"method 'gradcam': needs a torch.nn.Module to hook a layer, got {type(model).__name__}; "
            "wrap the function in an nn.Module or use method='gradient', 'occlusion' or 'rise'"
        )
    name, layer = _resolve_layer(model, to_model_input(ctx.x, ctx.input_dtype), cfg.layer)
    algo = LayerGradCam(score_forward(model, cfg.score, where="while computing Grad-CAM", dtype=ctx.input_dtype), layer)

    def attribute(target: torch.Tensor) -> torch.Tensor:
        # The parameters are frozen: the layer output carries a gradient only through x.
        inp = ctx.x.clone().requires_grad_(True)
        try:
            cam = algo.attribute(inp, target=target, relu_attributions=False)
        except AssertionError as e:  # Captum checks the hooked layer's output with asserts
            raise ModelError(f"layer {name!r}: Grad-CAM could not use its output ({e})") from e
        if isinstance(cam, tuple) or cam.dim() != 4:
            got = "several tensors" if isinstance(cam, tuple) else f"shape {tuple(cam.shape)}"
            raise ConfigError(f"layer: {name!r} must return one 4-D (N, K, h, w) feature map for Grad-CAM, got {got}; choose a convolutional layer")
        return at_least_float32(cam.detach())  # the layer's own precision may be float16

    cam = sum_over_targets(ctx, attribute)  # (N, 1, h, w): Σ_k α_k·A_k of the summed score
    if cfg.relu:
        cam = cam.clamp_min(0)
    layer_size = [int(cam.shape[-2]), int(cam.shape[-1])]
    up = LayerAttribution.interpolate(cam, ctx.size, interpolate_mode=cfg.interpolation)
    return package(ctx, up[:, 0], cfg, extra={"layer": name, "layer_size": layer_size})


register("gradcam", GradCamConfig, "Grad-CAM (Selvaraju et al. 2017) at the last conv block or a named layer (Captum LayerGradCam)")(_run)
