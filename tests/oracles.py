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

    def __init__(self, size: int, boxes=BOXES, gain: float = 0.1, bias: float = 3.0) -> None:
        super().__init__()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(lap.expand(3, 1, 3, 3))
        regions = region_masks(size, boxes)
        self.register_buffer("regions", regions / regions.sum(dim=(1, 2), keepdim=True))
        self.gain = gain
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.conv(x).pow(2).sum(dim=1)  # (N, H, W)
        e = F.interpolate(e.unsqueeze(1), size=self.regions.shape[-2:], mode="area").squeeze(1)
        z = self.gain * torch.einsum("nhw,khw->nk", e, self.regions) - self.bias
        # A last "nothing" class with a constant logit 0: when the evidence of class k is
        # removed its logit falls to -bias and its probability towards 0.
        return torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)


def textured_image(size: int, k: int, *, seed: int = 0, amplitude: float = 1.0, boxes=BOXES) -> torch.Tensor:
    """A smooth image with a high-frequency texture only inside region ``k``: ``(1, 3, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.3 * yy, 0.3 * xx, 0.2 * (yy + xx)]) - 0.2
    tex = torch.randn(3, size, size, generator=g) * amplitude
    reg = region_masks(size, [boxes[k]])[0]
    return (base + tex * reg).unsqueeze(0)
