"""``masker``: the keep-mask of a trained masker (Dabkowski & Gal 2017), one forward pass.

``explain(model, x, target, method="masker", masker=PATH_OR_MASKER)`` runs the frozen
classifier once to read its tapped features, and the masker's decoder once, for the whole
batch. The result is the usual :class:`~meaningful_perturbation.Explanation`: ``masks``
``(N, 1, H, W)`` keep-masks (1 = the evidence kept, as the preservation game), ``saliency =
masks[:, 0]``, and scores ``clean`` ``(N,)``, ``masked`` ``(N, 1)`` (the class probability of the image with only
the mask kept, ``Φ(x, m)``) and ``masked_delete`` ``(N, 1)`` (with the mask deleted, ``Φ(x, 1 − m)``).
A target set of several classes gets the pixelwise maximum of its classes' masks.

Errors: a masker trained for another classifier (class count, tapped layers or their
weights differ) raises :class:`~meaningful_perturbation.errors.ModelError`; images of
another size than the masker's raise :class:`~meaningful_perturbation.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.head import model_output
from ..core.objective import Targets, class_probability
from ..core.perturbation import blend
import warnings

from ..errors import ConfigError, MeaningfulPerturbationWarning
from ..explanation import Explanation
from ..methods.common import Context, check_range, perturbation_levels
from ..methods.registry import config_as_dict, register
from .model import Masker, as_masker

__all__ = ["MaskerConfig"]


@dataclass(frozen=True)
class MaskerConfig:
    """Knobs of the ``masker`` method. Pixel values are given at ``reference_size``."""

    masker: Any = "demo"  # a .safetensors masker path, a Masker, or "demo" (the one shipped for the demo model)
    # Φ used for the scores and figures. None (default): the one the masker was trained with
    # (its stored TrainConfig; blur, σ0 = 10 px at 224, 2 levels for maskers without one,
    # as TrainConfig's defaults). A value that differs from the training one warns.
    perturbation: str | None = None  # None: the masker's training one (TrainConfig: "blur"); or "blur" | "constant" | "fade"
    blur_sigma: float | None = None  # None: the training one; σ0 px at reference_size (TrainConfig: 10 px at 224, Fong & Vedaldi 2017 §4.1)
    levels: int | None = None  # None: the training one; Φ(x, m) = x·m + blur(x)·(1 − m) (Dabkowski & Gal 2017 §4): 2
    reference_size: int | None = None  # None: the training one; pixel values are for reference_size inputs (TrainConfig: 224)
    top_k: int = 1  # classes explained when target is None: top-1
    game: str = "preserve"  # the masks keep the evidence (saliency = m), as the preservation game; fixed
    scores: bool = True  # score Φ(x, m), Φ(x, 1 − m), Φ(x, 0) (one forward of 3N); False: masks only, "clean" score only


    def validate(self) -> None:
        if not isinstance(self.masker, (str, Masker)) and not hasattr(self.masker, "__fspath__"):
            raise ConfigError(f"masker: expected a path to a .safetensors masker, 'demo' or a Masker, got {type(self.masker).__name__}")
        if self.perturbation is not None and self.perturbation not in ("blur", "constant", "fade"):
            raise ConfigError(f"perturbation: expected one of 'blur', 'constant', 'fade', got {self.perturbation!r}")
        if self.blur_sigma is not None:
            check_range("blur_sigma", self.blur_sigma, 0, low_open=True)
        if self.levels is not None:
            check_range("levels", self.levels, 2, integer=True)
        if self.reference_size is not None:
            check_range("reference_size", self.reference_size, 1, integer=True)
        check_range("top_k", self.top_k, 1, integer=True)
        if not isinstance(self.scores, bool):
            raise ConfigError(f"scores: expected True or False, got {self.scores!r}")
        if self.game != "preserve":
            raise ConfigError(f"game: the masker's masks keep the evidence; expected 'preserve', got {self.game!r}")


#: The perturbation of maskers whose file records no training config (TrainConfig's defaults).
_TRAINED_DEFAULTS = {"perturbation": "blur", "blur_sigma": 10.0, "levels": 2, "reference_size": 224}


def perturbation_settings(cfg: MaskerConfig, masker: Masker) -> dict[str, Any]:
    """The perturbation to score with: the masker's training one (its stored config), with
    the explicitly set fields of ``cfg`` on top; a set value that differs from the training
    one warns (:class:`~meaningful_perturbation.errors.MeaningfulPerturbationWarning`): the
    scores then measure a perturbation the masker was not trained to explain."""
    trained = dict(_TRAINED_DEFAULTS)
    stored = masker.info.get("config", {}) if isinstance(masker.info, dict) else {}
    trained.update({k: stored[k] for k in _TRAINED_DEFAULTS if k in stored})
    out = dict(trained)
    for k in _TRAINED_DEFAULTS:
        v = getattr(cfg, k)
        if v is None:
            continue
        if v != trained[k]:
            warnings.warn(f"{k}: the masker {masker.source!r} was trained with {k}={trained[k]!r}, got {v!r}; the scores "
                          "measure a perturbation it was not trained for (drop the setting to use the training one)",
                          MeaningfulPerturbationWarning, stacklevel=4)
        out[k] = v
    return out


@torch.no_grad()
def _scores(ctx: Context, cfg: dict[str, Any], m: torch.Tensor) -> dict[str, torch.Tensor]:
    """``masked`` ``(N, 1)``, ``masked_delete`` ``(N, 1)`` and ``perturbed`` ``(N,)``: class
    probabilities of Φ(x, m), Φ(x, 1 − m) and Φ(x, 0), in one forward of 3N images."""
    n = m.shape[0]
    levels = perturbation_levels(ctx.x, cfg, generator=ctx.generator)
    three = torch.cat([blend(levels, m.unsqueeze(2))[:, 0], blend(levels, 1 - m.unsqueeze(2))[:, 0], levels[:, 0]])
    if ctx.input_dtype is not None:
        three = three.to(ctx.input_dtype)
    out = model_output(ctx.model(three), 3 * n, where="model")
    p = class_probability(out, Targets(ctx.targets.lists * 3, device=ctx.x.device), ctx.head)
    return {"masked": p[:n, None], "masked_delete": p[n : 2 * n, None], "perturbed": p[2 * n :]}


def _run(ctx: Context, cfg: MaskerConfig) -> Explanation:
    masker = as_masker(cfg.masker)
    x = ctx.x if ctx.input_dtype is None else ctx.x.to(ctx.input_dtype)
    n = x.shape[0]
    # One row per (image, class) of the target sets; a set's masks are merged by a max.
    rows = [(i, c) for i, classes in enumerate(ctx.targets.lists) for c in classes]
    idx = torch.tensor([i for i, _ in rows], device=x.device)
    classes = torch.tensor([c for _, c in rows], device=x.device)
    xs = x if len(rows) == n else x[idx]
    m = masker.predict(ctx.model, xs, classes).to(ctx.x.dtype)  # (R, 1, H, W); checks the classifier first
    if len(rows) != n:
        m = torch.stack([m[idx == i].amax(dim=0) for i in range(n)])  # every image has >= 1 class
    if ctx.callback is not None:
        ctx.callback(1, 1)
    scores = {"clean": class_probability(ctx.clean_logits, ctx.targets, ctx.head)}
    pert = perturbation_settings(cfg, masker)
    if cfg.scores:
        scores.update(_scores(ctx, pert, m))
    config = config_as_dict(cfg)
    config.update(pert)  # the perturbation used (figures re-create Φ from it)
    config["masker"] = masker.source
    return Explanation(
        saliency=m[:, 0].detach().float().cpu(),
        masks=m.detach().float().cpu(),
        target=ctx.targets.lists,
        history={},
        scores={k: v.detach().float().cpu() for k, v in scores.items()},
        method=ctx.method,
        config=config,
        extra={"seed": ctx.seed, "masker_fingerprint": masker.fingerprint["params_sha256"][:16]},
        head=ctx.head.kind,
    )


register(
    "masker",
    MaskerConfig,
    "Real-time masks (Dabkowski & Gal 2017): a trained masker's keep-mask in one forward pass",
    perturbation_levels=perturbation_levels,
)(_run)
