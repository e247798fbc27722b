"""The evaluation protocols of ``mperturb evaluate``, as data: one dict per protocol.

Every parameter carries its source in ``sources``; :func:`resolve_protocol` applies user
overrides (``--param KEY=VALUE``) and the resolved dict is written beside the results
(``protocol.json``) so a table can always be traced to the settings that made it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from ..errors import ConfigError
from ..metrics.deletion_game import DEFAULT_LEVELS
from ..metrics.weak_localisation import DEFAULT_ALPHAS

__all__ = ["PROTOCOLS", "DATASETS", "resolve_protocol"]

#: Data sets and the protocols they serve; the first data set listed is a protocol's default.
DATASETS = {"imagenet": "ILSVRC2012 validation set with boxes", "voc07": "PASCAL VOC 2007 test",
            "coco14": "COCO 2014 val"}

_CROP_SOURCE = ("model: the model's own preprocessing (torchvision ImageNet models: short side 256, centre crop "
                "224; the cut-off border gets the map's minimum); none: the whole image stretched to the input size "
                "(nothing cut off)")

PROTOCOLS: dict[str, dict[str, Any]] = {
    "imagenet-loc": {
        "summary": "weak localisation: one box from the thresholded saliency, correct if IoU >= 0.5 with a "
                   "ground-truth box of the class; error per thresholding rule, alpha chosen on held-out images",
        "datasets": ["imagenet"],
        "params": {
            "rules": ["value", "energy", "mean"],
            "alphas": {k: list(v) for k, v in DEFAULT_ALPHAS.items()},
            "iou_threshold": 0.5,
            "component": "all",
            "heldout_every": 10,
            "degenerate": "miss",
            "head": "auto",
            "crop": "model",
        },
        "sources": {
            "rules": "Fong & Vedaldi 2017 §5.2 / Table 1: value (alpha*max), energy (alpha of the mass), mean (alpha*mean)",
            "alphas": "Fong & Vedaldi 2017 §5.2: value and energy alpha in 0:0.05:0.95, mean alpha in 0:0.5:10",
            "iou_threshold": "ILSVRC localisation criterion (Russakovsky et al. 2015), used by the 2017 paper §5.2",
            "component": "2017 §5.2: one box around everything that survives the threshold",
            "heldout_every": "2017 §5.2 chose alpha on held-out images; here every 10th (image, class) pair in "
                             "annotation order (the 1st, 11th, ...) is held out for choosing alpha and the others "
                             "are scored (this split is the project's choice, see docs/reproduce.md)",
            "degenerate": "project choice: a degenerate explanation (no region found that changes the score) carries "
                          "no information, so it cannot localise: 'miss' (default) counts it as wrong, 'skip' leaves "
                          "it out, 'score' scores its map as any other",
            "head": "ImageNet classifiers: softmax over 1000 classes (auto-detected)",
            "crop": _CROP_SOURCE,
        },
    },
    "pointing": {
        "summary": "pointing game: a hit when the saliency maximum lies within 15 px of an object of the class; "
                   "accuracy per class, mean over classes, on all pairs and on the difficult subset",
        "datasets": ["voc07", "coco14"],
        "params": {
            "tolerance_px": 15.0,
            "difficult_area_fraction": 0.25,
            "difficult_min_classes": 2,
            "voc_split": "test",
            "degenerate": "miss",
            "head": "sigmoid",
            "crop": "model",
        },
        "sources": {
            "tolerance_px": "Zhang et al. 2016 (Top-down neural attention by excitation backprop) §5.1: 15 px "
                            "tolerance, in pixels of the original image",
            "difficult_area_fraction": "Zhang et al. 2016 §5.1: the difficult set holds the images whose objects of "
                                       "the class cover less than 1/4 of the image and that contain another class",
            "difficult_min_classes": "Zhang et al. 2016 §5.1: at least one distractor class in the image",
            "voc_split": "Zhang et al. 2016 / Fong et al. 2019 §4.1: VOC 2007 test",
            "degenerate": "project choice: a degenerate explanation (no region found that changes the score) carries "
                          "no information, so it cannot point: 'miss' (default) counts it as a miss, 'skip' leaves it "
                          "out, 'score' scores its map's maximum as any other",
            "head": "Fong et al. 2019 §4.1: multi-label classifiers (one sigmoid per class)",
            "crop": _CROP_SOURCE,
        },
    },
    "deletion-game": {
        "summary": "deletion game: area of the smallest saliency-derived box whose blur suppresses 80/90/95/99 % "
                   "of the class probability, averaged over images (lower is better)",
        "datasets": ["imagenet"],
        "params": {
            "levels": list(DEFAULT_LEVELS),
            "thresholds": 101,
            "blur_sigma": 10.0,
            "suppression": "probability",
            "degenerate": "score",
            "head": "auto",
            "crop": "model",
        },
        "sources": {
            "levels": "Fong & Vedaldi 2017 §5.3 (Table 2 reports 99 %)",
            "thresholds": "0, 0.01, ..., 1 on the min-max normalised saliency (metrics.deletion_game)",
            "blur_sigma": "Fong & Vedaldi 2017 §5.3: Gaussian blur sigma = 10 px inside the box, at 224 px",
            "suppression": "Fong & Vedaldi 2017 §5.3 / Table 2: a box reaches level s when its blur lowers the class "
                           "probability to (1 - s) * p_clean; 'relative-to-blur' (not the paper's) measures the share "
                           "of the drop a whole-image blur gives",
            "degenerate": "project choice: a degenerate explanation (no region found that changes the score) still "
                          "gives boxes the model can measure, so it is scored ('miss': counted as not reached at "
                          "every level; 'skip': left out)",
            "head": "ImageNet classifiers: softmax probability of the class",
            "crop": _CROP_SOURCE,
        },
    },
}


def _check(name: str, value: Any, default: Any) -> Any:
    """``value`` for parameter ``name`` with the type of ``default``; ConfigError otherwise."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"--param {name}: expected {expected}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("an integer >= 1")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise bad("a finite number >= 0")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise bad("a non-empty JSON list")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad("a JSON object")
        return {**default, **value}
    raise bad(type(default).__name__)  # pragma: no cover


def resolve_protocol(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The protocol ``name`` with ``overrides`` applied to its ``params``: a new dict.

    Raises:
        ConfigError: unknown protocol, unknown parameter, or a value of the wrong type, naming it.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"PROTOCOL: expected one of {', '.join(PROTOCOLS)}, got {name!r}")
    proto = copy.deepcopy(PROTOCOLS[name])
    proto["name"] = name
    params = proto["params"]
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ConfigError(f"--param: protocol {name!r} has no parameter {key!r} "
                              f"(its parameters: {', '.join(params)})")
        params[key] = _check(key, value, params[key])
        proto["sources"][key] = f"set by --param {key} (default: {proto['sources'].get(key, 'see PROTOCOLS')})"
    if params["crop"] not in ("model", "none"):
        raise ConfigError(f"--param crop: expected 'model' or 'none', got {params['crop']!r}")
    from ..core.head import HEADS

    if params["head"] not in HEADS:
        raise ConfigError(f"--param head: expected one of {', '.join(HEADS)}, got {params['head']!r}")
    if name == "imagenet-loc":
        bad = [r for r in params["rules"] if r not in DEFAULT_ALPHAS]
        if bad:
            raise ConfigError(f"--param rules: expected some of value, energy, mean, got {params['rules']!r}")
        for r in params["rules"]:
            grid = params["alphas"].get(r)
            if not isinstance(grid, list) or not grid or not all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a >= 0
                    for a in grid):
                raise ConfigError(f"--param alphas: expected a non-empty list of numbers >= 0 for rule {r!r}, "
                                  f"got {grid!r}")
            if r != "mean" and max(grid) > 1:
                raise ConfigError(f"--param alphas: rule {r!r} takes alpha in [0, 1], got {grid!r}")
        if params["component"] not in ("all", "largest"):
            raise ConfigError(f"--param component: expected 'all' or 'largest', got {params['component']!r}")
    if params["degenerate"] not in ("miss", "skip", "score"):
        raise ConfigError(f"--param degenerate: expected 'miss', 'skip' or 'score', got {params['degenerate']!r}")
    if name == "deletion-game":
        from ..metrics.deletion_game import SUPPRESSION_MODES

        if params["suppression"] not in SUPPRESSION_MODES:
            raise ConfigError(f"--param suppression: expected one of {', '.join(SUPPRESSION_MODES)}, "
                              f"got {params['suppression']!r}")
        lv = params["levels"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in lv):
            raise ConfigError(f"--param levels: expected numbers in (0, 1], got {lv!r}")
        if params["thresholds"] < 2:
            raise ConfigError(f"--param thresholds: expected an integer >= 2, got {params['thresholds']!r}")
    return proto
