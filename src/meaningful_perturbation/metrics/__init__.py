"""Metrics for saliency maps: localisation, faithfulness, weak localisation, deletion game, sanity.

Conventions (shared with the rest of the package):

* ``saliency``: ``(N, H, W)`` float, higher = more important.
* ground-truth / distractor masks: ``(N, H, W)`` bool.
* ``x``: ``(N, C, H, W)`` normalised model input; ``model`` maps it to ``(N, classes)``
  logits; ``target``: ``(N,)`` long (or one int).
* boxes: ``(x0, y0, x1, y1)`` half-open pixel-edge coordinates (columns ``x0 ≤ col < x1``).
* Everything is batched torch on the data's device and deterministic: pixel rankings
  break ties by raster index, argmax takes the first maximum in raster order.
* Model calls run under ``torch.no_grad()`` in chunks of ``batch_size``; the model is
  used as given (call ``model.eval()`` yourself).
* Each function's docstring says whether higher or lower is better. Bad arguments raise
  :class:`~meaningful_perturbation.errors.InputError` naming the argument.

Localisation (does the map fall on the object?) and faithfulness (does the model depend
on the ranked pixels?) are reported separately: deletion/insertion do not measure
localisation.
"""

from __future__ import annotations

from .deletion_game import DEFAULT_LEVELS, DEFAULT_THRESHOLDS, deletion_game_box, threshold_boxes
from .faithfulness import CurveResult, deletion_insertion, make_substrate, minimal_area
from .localisation import (
    PointingResult,
    auroc,
    distractor_mass,
    energy_in_box,
    energy_in_mask,
    pointing_game,
    rank_accuracy,
    scaled_tolerance,
)
from .sanity import SanityResult, cascading_randomization, parameter_layers, spearman
from .stats import bootstrap_ci
from .weak_localisation import (
    DEFAULT_ALPHAS,
    THRESHOLD_METHODS,
    box_iou,
    choose_alpha,
    saliency_to_box,
    threshold_saliency,
    weak_localisation,
)

__all__ = [
    # localisation
    "PointingResult",
    "pointing_game",
    "scaled_tolerance",
    "rank_accuracy",
    "auroc",
    "distractor_mass",
    "energy_in_box",
    "energy_in_mask",
    # faithfulness
    "CurveResult",
    "deletion_insertion",
    "minimal_area",
    "make_substrate",
    # weak localisation
    "THRESHOLD_METHODS",
    "DEFAULT_ALPHAS",
    "threshold_saliency",
    "saliency_to_box",
    "box_iou",
    "weak_localisation",
    "choose_alpha",
    # deletion game
    "DEFAULT_LEVELS",
    "DEFAULT_THRESHOLDS",
    "threshold_boxes",
    "deletion_game_box",
    # sanity
    "SanityResult",
    "spearman",
    "parameter_layers",
    "cascading_randomization",
    # statistics
    "bootstrap_ci",
]
