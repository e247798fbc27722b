"""``rise``: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

Masks (paper §3.2): ``N`` binary grids ``s × s`` with each cell kept with probability ``p``,
upsampled bilinearly to ``(s+1)·C_H × (s+1)·C_W`` (cell ``C = ⌈side / s⌉``) and cropped to
``H × W`` at a random offset in ``[0, C_H) × [0, C_W)``, which gives smooth masks whose
cells do not align with a fixed grid. For image ``x`` and class score ``f_c`` (softmax
probability)::

    S(u) = 1 / (N·p) · Σ_i f_c(x̃_i)·M_i(u),     x̃_i = blend(levels, M_i)      (paper eq. 6)

The returned saliency is centred, ``S(u) − f̄`` with ``f̄ = (1/N)·Σ_i f_c(x̃_i)`` the mean score
over the masked images (``centre=True``, the default; ``extra["mean_score"]`` holds ``f̄``):
"the expected score when ``u`` is kept, relative to the average masked score". A constant shift
leaves every pixel ranking, and so every rank-based metric, exactly as eq. 6 gives it, but a
saturated score (a probability near 1 under most masks, typical of a confident sigmoid or
softmax head) no longer buries the map under a uniform offset of ``f̄``. ``centre=False``
returns eq. 6's values.

``x̃_i`` is the project's perturbation operator: ``fade`` (zero in normalised space — the
paper's ``x ⊙ M_i``, a black image after normalisation by the mean), ``blur`` or
``constant``. The masks come from the seeded generator and are the same for every image
of the batch, and each image is scored in its own forward passes of ``batch_size`` masked
copies, so an image's map does not depend on the other images in the batch.
Upsampling uses ``F.interpolate(..., align_corners=False)`` (edge values replicated); the
authors' code uses scikit-image's ``resize(..., mode="reflect")``, which differs only in
the outermost half cell, inside the cropped margin for most offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.objective import Targets, class_score
from ...core.perturbation import blend
from ...errors import ConfigError
from ...explanation import Explanation
from ..common import Context, check_choice, check_range, make_levels, pixels
from ..registry import register
from ._common import SCORE_KINDS, model_outputs, package

__all__ = ["RiseConfig", "RiseMasks", "PERTURBATIONS"]

PERTURBATIONS = ("fade", "blur", "constant")


@dataclass(frozen=True)
class RiseConfig:
    """Knobs of RISE."""

    n_masks: int = 4000  # N = 4000 masks for ResNet50 (Petsiuk et al. 2018 §4); 1000-2000 is a cheaper, noisier choice
    s: int = 7  # grid s × s = 7 × 7 (Petsiuk et al. 2018 §4)
    p: float = 0.5  # probability of keeping a cell, p1 = 0.5 (Petsiuk et al. 2018 §4)
    perturbation: str = "fade"  # I ⊙ M: masked pixels set to 0 (Petsiuk et al. 2018 §3.1)
    blur_sigma: float = 10.0  # σ of "blur" at 224: σ0 of Fong & Vedaldi 2017 §4.1
    score: str = "prob"  # f is the class probability (Petsiuk et al. 2018 §3)
    batch_size: int = 100  # masked images per forward pass (speed/memory only)
    reference_size: int = 224  # blur_sigma is given for 224×224 inputs
    centre: bool = True  # subtract the mean masked score f̄ (ranks = eq. 6's; see the module docstring)

    def validate(self) -> None:
        check_range("n_masks", self.n_masks, 1, integer=True)
        check_range("s", self.s, 1, integer=True)
        check_range("p", self.p, 0, 1, low_open=True)
        if self.p >= 1:
            raise ConfigError(f"p: expected a probability strictly between 0 and 1, got {self.p!r}")
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        check_range("blur_sigma", self.blur_sigma, 0, low_open=True)
        check_choice("score", self.score, SCORE_KINDS)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("reference_size", self.reference_size, 1, integer=True)
        if not isinstance(self.centre, bool):
            raise ConfigError(f"centre: expected true or false, got {self.centre!r}")


class RiseMasks:
    """The RISE mask distribution, drawn once and materialised in chunks.

    All random numbers (grids, then offsets) are drawn up front on the CPU from
    ``generator``, so the masks do not depend on the chunking, the device or the batch.

    Args:
        n: number of masks.
        s: grid side.
        p: probability of keeping a cell.
        size: ``(H, W)`` of the image.
        generator: CPU generator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> masks = RiseMasks(10, 7, 0.5, (32, 32), g)
        >>> masks.chunk(0, 4, dtype=torch.float32, device="cpu").shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, n: int, s: int, p: float, size: tuple[int, int], generator: torch.Generator) -> None:
        self.n, self.s, self.p = int(n), int(s), float(p)
        self.size = (int(size[0]), int(size[1]))
        self.cell = (math.ceil(self.size[0] / self.s), math.ceil(self.size[1] / self.s))
        self.grids = torch.rand((self.n, 1, self.s, self.s), generator=generator) < self.p  # (n, 1, s, s)
        self.dy = torch.randint(0, self.cell[0], (self.n,), generator=generator).tolist()
        self.dx = torch.randint(0, self.cell[1], (self.n,), generator=generator).tolist()

    def __len__(self) -> int:
        return self.n

    def chunk(self, start: int, stop: int, *, dtype: torch.dtype, device) -> torch.Tensor:
        """Masks ``start:stop`` as a ``(B, 1, H, W)`` tensor in [0, 1]."""
        H, W = self.size
        up_size = ((self.s + 1) * self.cell[0], (self.s + 1) * self.cell[1])
        grids = self.grids[start:stop].to(device=device, dtype=dtype)
        up = F.interpolate(grids, size=up_size, mode="bilinear", align_corners=False)
        crops = [up[j, :, dy : dy + H, dx : dx + W] for j, (dy, dx) in enumerate(zip(self.dy[start:stop], self.dx[start:stop]))]
        return torch.stack(crops)


def _run(ctx: Context, cfg: RiseConfig) -> Explanation:
    x = ctx.x
    n = x.shape[0]
    H, W = ctx.size
    masks = RiseMasks(cfg.n_masks, cfg.s, cfg.p, (H, W), ctx.generator)
    levels = make_levels(x, cfg.perturbation, sigma=pixels(cfg.blur_sigma, ctx.scale(cfg.reference_size)))  # (N, 2, C, H, W)
    chunks = [(a, min(a + cfg.batch_size, cfg.n_masks)) for a in range(0, cfg.n_masks, cfg.batch_size)]
    total = n * len(chunks)
    sal = torch.zeros((n, H * W), dtype=torch.float32, device=x.device)
    score_sum = torch.zeros(n, dtype=torch.float64, device=x.device)
    step = 0
    with torch.no_grad():
        for a, b in chunks:
            m = masks.chunk(a, b, dtype=x.dtype, device=x.device)  # (B, 1, H, W)
            flat = m.reshape(b - a, H * W).float()
            for i in range(n):  # one image per forward pass: batch-invariant results
                xt = blend(levels[i : i + 1], m.unsqueeze(0))[0]  # (B, C, H, W)
                out = model_outputs(ctx.model, xt, where="on a RISE-masked image", dtype=ctx.input_dtype)
                rows = Targets([ctx.targets.lists[i]] * (b - a), device=x.device)
                f = class_score(out, rows, "prob" if cfg.score == "prob" else "logit", ctx.head)  # (B,)
                sal[i] += f.float() @ flat
                score_sum[i] += f.double().sum()
                step += 1
                if ctx.callback is not None:
                    ctx.callback(step, total)
    sal = sal / (cfg.n_masks * cfg.p)
    mean_score = (score_sum / cfg.n_masks).float()
    if cfg.centre:
        sal = sal - mean_score.view(n, 1)
    extra = {"cell": list(masks.cell), "mean_score": mean_score.cpu().tolist()}
    return package(ctx, sal.view(n, H, W), cfg, extra=extra)


register("rise", RiseConfig, "RISE (Petsiuk et al. 2018): 4000 random 7×7 masks, p=0.5, probability-weighted mask average")(_run)
