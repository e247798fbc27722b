"""meaningful-perturbation: perturbation-based explanations of image classifiers.

Implements Meaningful Perturbation (Fong & Vedaldi, ICCV 2017; presets ``paper`` and
``paper-loc``), the jacobgil/pytorch-explain-black-box re-implementation (``seed``) and
Extremal Perturbation (Fong, Patrick & Vedaldi, ICCV 2019; ``extremal``), with baselines,
metrics, a CLI (``mperturb``) and a batch runner.

Conventions:
    * ``x`` is an ``(N, C, H, W)`` float tensor already normalised for the model; the model
      maps it to ``(N, classes)`` scores.
    * ``target`` is an int, an ``(N,)`` integer tensor, or a list of class lists per image.
    * A **mask** ``m`` lies in [0, 1] with **1 = keep the original pixel**, 0 = fully
      perturbed. Result masks are ``(N, K, H, W)``: K masks per image (K areas for
      extremal, K = 1 otherwise). Channel attribution (``extremal-channels``) learns
      ``channel_masks`` ``(N, K, C)`` over a layer's channels (1 = channel kept); its
      ``masks`` are display maps of the salient channels' activation (docs/channels.md).
    * **saliency** is ``(N, H, W)`` and always "higher = more important": ``1 - m`` for the
      deletion game, ``m`` for preservation, the sum over the K areas for extremal.
    * Everything follows ``x.device``; all randomness comes from ``seed``: same seed, same
      inputs → bitwise-identical masks on CPU.
    * Precision: pass ``x`` in the model's dtype (float16, bfloat16, float32 or float64).
      Masks, perturbations and optimiser state are computed in float32 (float64 for float64
      ``x``); only the model's input is cast to ``x.dtype``, and the backward pass through a
      float16 model is rescaled per image so its gradients do not underflow. Saliency and
      masks are returned as float32 on the CPU.
    * The caller's model is left exactly as found (training flags, ``requires_grad``),
      also when a call raises; parameters are frozen while optimising.

Example:
    >>> import torch, meaningful_perturbation as mp
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
    ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> ex = mp.explain(model, torch.randn(1, 3, 32, 32), method="paper", steps=3)
    >>> tuple(ex.saliency.shape)
    (1, 32, 32)
"""

from __future__ import annotations

from .api import explain
from .errors import (
    AreaWarning,
    ConfigError,
    HeadWarning,
    InputError,
    MeaningfulPerturbationError,
    MeaningfulPerturbationWarning,
    ModelError,
)
from .explanation import Explanation
from .methods.registry import get_method, methods

__version__ = "0.1.0"

__all__ = [
    "explain",
    "Explanation",
    "methods",
    "method_config",
    "load_model",
    "MeaningfulPerturbationError",
    "InputError",
    "ConfigError",
    "ModelError",
    "MeaningfulPerturbationWarning",
    "AreaWarning",
    "HeadWarning",
    "__version__",
]


def method_config(name: str):
    """The default (frozen dataclass) config of preset ``name``."""
    return get_method(name).default_config()


def __getattr__(name: str):
    # load_model on first use: the hub loaders (torchvision, timm, transformers) stay out of
    # `import meaningful_perturbation`
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module 'meaningful_perturbation' has no attribute {name!r}")
