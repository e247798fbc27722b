"""The shipped demo classifiers: one for ShapeEvidence (:mod:`meaningful_perturbation.data.shapes`,
the default, model spec ``demo``) and one for TextureEvidence
(:mod:`meaningful_perturbation.data.textures`, ``load_demo_model(family="textures")``, model
spec ``demo:textures``).

A ~70k-parameter CNN (:class:`~meaningful_perturbation.demo.model.ShapeNet`) trained on the
``"train"`` split of :func:`meaningful_perturbation.data.make_shape_evidence`; weights ship
as ``shapes_cnn.safetensors`` (loaded with safetensors, never pickle). The TextureEvidence
model is the same architecture with 4 outputs trained by the same recipe
(``textures_cnn.safetensors``). See ``MODEL_CARD.md`` for the recipe and the measured
accuracies of both.

The model takes ``(N, 3, H, W)`` images with ``H, W >= 32`` (trained at 64 px), first scaled
to [0, 1] and then normalised with the ImageNet mean / std given in
:data:`DEMO_PREPROCESSING`, exactly as an ImageNet classifier's inputs would be.

Importing this module is light: torch, safetensors and the model definition only.

Example:
    >>> import torch
    >>> from meaningful_perturbation.demo import DEMO_PREPROCESSING, load_demo_model
    >>> model = load_demo_model()
    >>> x = torch.zeros(1, 3, DEMO_PREPROCESSING["input_size"], DEMO_PREPROCESSING["input_size"])
    >>> model(x).shape
    torch.Size([1, 6])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelError
from .model import ShapeNet

__all__ = [
    "DEMO_FAMILIES",
    "DEMO_NOTE",
    "DEMO_PREPROCESSING",
    "WEIGHTS_PATH",
    "ShapeNet",
    "demo_preprocessing",
    "load_demo_model",
]

#: Printed once by ``mperturb explain`` / ``mperturb run`` when the demo model makes a
#: low-confidence prediction (:func:`meaningful_perturbation.explanation.low_confidence`): it
#: knows six synthetic shapes, not photographs.
DEMO_NOTE = (
    "mperturb: note: the default model (--model demo) is a 6-class shape classifier trained on "
    "synthetic ShapeEvidence images like examples/; on other images its predictions are near "
    "chance and their explanations mean little. For photographs pass an ImageNet model, e.g. "
    "--model torchvision:resnet50 (see `mperturb models`)."
)

#: The shipped weights (safetensors).
WEIGHTS_PATH: Path = Path(__file__).with_name("shapes_cnn.safetensors")

#: How to prepare inputs for the demo model. ``mean`` / ``std`` are the ImageNet statistics
#: (the same values as :data:`meaningful_perturbation.data.MEAN` / ``STD``), applied to
#: images in [0, 1]; ``class_names`` are in logit order.
DEMO_PREPROCESSING: dict[str, Any] = {
    "input_size": 64,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "class_names": ("disc", "square", "triangle", "plus", "ring", "x"),
}

#: Shipped weights and preprocessing of each demo model, by ground-truth family
#: (:data:`meaningful_perturbation.data.FAMILIES`). Both are trained at 64 px on inputs
#: normalised with the ImageNet statistics.
DEMO_FAMILIES: dict[str, tuple[Path, dict[str, Any]]] = {
    "shapes": (WEIGHTS_PATH, DEMO_PREPROCESSING),
    "textures": (
        Path(__file__).with_name("textures_cnn.safetensors"),
        {**DEMO_PREPROCESSING, "class_names": ("0deg", "45deg", "90deg", "135deg")},
    ),
}


def _family(family: Any) -> tuple[Path, dict[str, Any]]:
    if not isinstance(family, str) or family not in DEMO_FAMILIES:
        raise InputError(f"family: expected one of {', '.join(DEMO_FAMILIES)}, got {family!r}")
    return DEMO_FAMILIES[family]


def demo_preprocessing(family: str = "shapes") -> dict[str, Any]:
    """The preprocessing of the demo model of ``family`` (a copy of its
    :data:`DEMO_FAMILIES` entry): ``input_size``, ``mean``, ``std``, ``class_names``.

    Raises:
        InputError: unknown ``family``.

    Example:
        >>> demo_preprocessing("textures")["class_names"]
        ('0deg', '45deg', '90deg', '135deg')
    """
    return dict(_family(family)[1])


def load_demo_model(
    device: str | torch.device = "cpu", weights: str | Path | None = None, family: str = "shapes"
) -> torch.nn.Module:
    """Build :class:`ShapeNet` and load the shipped (or given) safetensors weights.

    Args:
        device: where to put the model.
        weights: a ``.safetensors`` state dict; default: the family's shipped file
            (:data:`WEIGHTS_PATH` for ``"shapes"``).
        family: ``"shapes"`` (6 classes, ShapeEvidence) or ``"textures"`` (4 orientation
            classes, TextureEvidence); see :data:`DEMO_FAMILIES`.

    Returns:
        The model in eval mode, parameters with ``requires_grad=True`` (as any freshly
        loaded model; explanation methods freeze them themselves); ``model.mirror_invariant``
        is False for a family whose labels change under a mirror (``"textures"``), which
        turns off flip jitter by default (:func:`meaningful_perturbation.api.mirror_invariant`).

    Raises:
        InputError: unknown ``family``, or the weights file does not exist.
        ModelError: the file does not hold a ShapeNet state dict of the family's classes.
    """
    from safetensors.torch import load_file

    default, prep = _family(family)
    path = Path(weights) if weights is not None else default
    if not path.is_file():
        raise InputError(
            f"weights: file {str(path)!r} not found; expected a .safetensors state dict "
            f"(train one with `python -m meaningful_perturbation.demo train --family {family} --out PATH`)"
        )
    state = load_file(str(path), device="cpu")
    model = ShapeNet(num_classes=len(prep["class_names"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights: {str(path)!r} is not a ShapeNet state dict: {e}") from e
    # A family whose labels change under a mirror (TextureEvidence: FLIP_PERMUTATION) declares
    # it, so methods whose default jitter is a flip do not optimise against another class.
    from ..data.families import FAMILIES

    model.mirror_invariant = FAMILIES[family].flip is None
    return model.to(device).eval()
