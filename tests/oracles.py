"""Hand-set models whose evidence region is known exactly (shared by the tests)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def region_masks(size: int, boxes) -> torch.Tensor:
    """``(K, size, size)`` float masks of boxes given as fractions (y0, x0, y1, x1)."""
    out = torch.zeros(len(boxes), size, size)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        out[k, round(y0 * size) : round(y1 * size), round(x0 * size) : round(x1 * size)] = 1
    return out


# Four quadrant-interior regions: class k's evidence is the texture inside box k.
BOXES = [(0.1, 0.1, 0.4, 0.4), (0.1, 0.6, 0.4, 0.9), (0.6, 0.1, 0.9, 0.4), (0.6, 0.6, 0.9, 0.9)]


class TextureOracle(nn.Module):
    """Logit ``k`` = ``gain ·`` (mean squared Laplacian response inside region ``k``) ``- bias``,
    plus a last class with constant logit 0.

    Blurring (or replacing) the texture in region ``k`` lowers logit ``k`` and nothing
    else, so the correct explanation of class ``k`` is exactly region ``k``.
    """

    def __init__(self, size: int, boxes=BOXES, gain: float = 0.1, bias: float = 3.0, log: bool = False) -> None:
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(lap.expand(3, 1, 3, 3))
        regions = region_masks(size, boxes)
        self.register_buffer("regions", regions / regions.sum(dim=(1, 2), keepdim=True))
        self.gain = gain
        self.bias = bias
        # log=True: logit = gain·log(E + 0.01) − bias, a log-evidence response that keeps a
        # gradient when the texture is nearly gone (like the logits of trained networks).
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.conv(x).pow(2).sum(dim=1)  # (N, H, W)
        e = F.interpolate(e.unsqueeze(1), size=self.regions.shape[-2:], mode="area").squeeze(1)
        energy = torch.einsum("nhw,khw->nk", e, self.regions)
        z = self.gain * (torch.log(energy + 0.01) if self.log else energy) - self.bias
        # A last "nothing" class with a constant logit 0: when the evidence of class k is
        # removed its logit falls to -bias and its probability towards 0.
        return torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)


def textured_image(size: int, k: int, *, seed: int = 0, amplitude: float = 1.0, boxes=BOXES, grain: float = 0.0) -> torch.Tensor:
    """A smooth image with a texture only inside region ``k``: ``(1, 3, size, size)``.

    ``grain`` > 0 low-passes the white-noise texture with a Gaussian of that many pixels
    (renormalised to unit variance), so that mild blur weakens it instead of erasing it.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.3 * yy, 0.3 * xx, 0.2 * (yy + xx)]) - 0.2
    tex = torch.randn(1, 3, size, size, generator=g)
    if grain > 0:
        from meaningful_perturbation.core.perturbation import gaussian_blur

        tex = gaussian_blur(tex, grain)
        tex = tex / tex.std()
    tex = tex[0] * amplitude
    reg = region_masks(size, [boxes[k]])[0]
    return (base + tex * reg).unsqueeze(0)


class BrightnessOracle(nn.Module):
    """Logit ``k`` = ``gain ·`` mean of the first channel inside region ``k`` (others: 0).

    With the "fade" perturbation (zero in normalised space) the evidence of class ``k`` is
    exactly the bright pixels of region ``k``.
    """

    def __init__(self, size: int, boxes=BOXES, gain: float = 4.0) -> None:
        super().__init__()
        regions = region_masks(size, boxes)
        self.register_buffer("regions", regions / regions.sum(dim=(1, 2), keepdim=True))
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gain * torch.einsum("nhw,khw->nk", x[:, 0], self.regions)
        return torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)


def bright_image(size: int, k: int, boxes=BOXES, level: float = 2.0) -> torch.Tensor:
    """Zero image (the fade substrate) with region ``k`` bright in the first channel."""
    x = torch.zeros(1, 3, size, size)
    x[0, 0] = level * region_masks(size, [boxes[k]])[0]
    return x
