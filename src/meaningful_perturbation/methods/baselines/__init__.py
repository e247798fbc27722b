"""Baselines to compare the mask-learning presets against, behind the same
:func:`~meaningful_perturbation.explain`:

* ``gradient`` — input gradient (Simonyan et al. 2014), Captum ``Saliency``;
* ``gradcam`` — Grad-CAM (Selvaraju et al. 2017) at a conv feature map or a transformer block's tokens on the patch grid;
* ``occlusion`` — sliding-window occlusion (Zeiler & Fergus 2014), Captum ``Occlusion``;
* ``rise`` — RISE (Petsiuk et al. 2018), written here on the project's perturbation operators;
* ``random`` and ``center`` — model-free sanity baselines.

Every baseline returns an :class:`~meaningful_perturbation.Explanation` with ``saliency``
``(N, H, W)`` (higher = more important) and, since no keep-mask is learned,
``masks[:, 0]`` = the saliency min-max normalised per image to [0, 1] — an importance map,
not a mask of kept pixels. ``history`` is empty and ``scores`` holds ``clean`` only.
Several target classes per image are explained as the sum of their scores.
"""

from . import gradient, gradcam, occlusion, rise, priors  # noqa: F401  (registration order = listing order)
from .gradcam import GradCamConfig, find_layer
from .gradient import GradientConfig
from .occlusion import OcclusionConfig
from .priors import CenterConfig, RandomConfig, center_prior
from .rise import RiseConfig, RiseMasks

__all__ = [
    "GradientConfig",
    "GradCamConfig",
    "OcclusionConfig",
    "RiseConfig",
    "RandomConfig",
    "CenterConfig",
    "RiseMasks",
    "center_prior",
    "find_layer",
]
