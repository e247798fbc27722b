"""Real-time masks: a masking model trained once per classifier (Dabkowski & Gal, "Real Time
Image Saliency for Black Box Classifiers", NeurIPS 2017) that predicts a keep-mask in one
forward pass instead of optimising it for hundreds of steps.

* :func:`train_masker` / ``mperturb train-masker``: train a masker for a classifier
  (:mod:`.train`), on any data source (:mod:`.data`);
* ``explain(model, x, target, method="masker", masker=PATH_OR_MASKER)``: use it
  (:mod:`.method`); with the demo model the shipped masker (:data:`DEMO_MASKER_PATH`) is the
  default;
* :func:`load_masker` / :meth:`Masker.save`: safetensors files, never pickles.

Example:
    >>> import torch, meaningful_perturbation as mp
    >>> from meaningful_perturbation.demo import load_demo_model
    >>> from meaningful_perturbation.data import make_shape_evidence
    >>> t = make_shape_evidence(2, size=64, seed=1).to_tensors()
    >>> ex = mp.explain(load_demo_model(), t.images, t.labels, method="masker")
    >>> ex.masks.shape
    torch.Size([2, 1, 64, 64])
"""

from pathlib import Path

from .data import ArraySource, GroundTruthSource, RunFolderSource, ShapesSource, data_source, register_data_source
from .model import Masker, MaskerSpec, load_masker
from .net import FeatureTap, MaskerNet, classifier_fingerprint
from .train import TrainConfig, TrainResult, evaluate_masker, masker_loss, model_card, train_masker

#: The masker shipped for the demo model (trained by the command in its MASKER_CARD.md).
DEMO_MASKER_PATH: Path = Path(__file__).with_name("demo_masker.safetensors")

__all__ = [
    "DEMO_MASKER_PATH",
    "ArraySource",
    "FeatureTap",
    "GroundTruthSource",
    "Masker",
    "MaskerNet",
    "MaskerSpec",
    "RunFolderSource",
    "ShapesSource",
    "TrainConfig",
    "TrainResult",
    "classifier_fingerprint",
    "data_source",
    "evaluate_masker",
    "load_masker",
    "masker_loss",
    "model_card",
    "register_data_source",
    "train_masker",
]
