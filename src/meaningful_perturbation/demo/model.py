"""The demo classifier: a small CNN for ShapeEvidence (DESIGN.md §4).

Five 3×3 conv + BatchNorm + ReLU blocks with 2×2 max-pooling after the 1st, 3rd and 4th
(resolutions 64 → 32 → 16 → 8 at 64 px input), global average pooling and one linear
layer. One block at full resolution keeps training cheap on a CPU (DESIGN.md §4: "a couple
of minutes on 2 CPU cores") while thin arms (2 px at 64 px) are still seen before pooling. Because of the GAP head it accepts any input
side >= 32 px (it is trained at 64 px). Inputs are normalised with the ImageNet mean / std,
like an ImageNet classifier's (see ``DEMO_PREPROCESSING``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ShapeNet"]


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ShapeNet(nn.Module):
    """Small GAP-head CNN.

    Args:
        num_classes: number of outputs (logits).
        widths: channels ``(w1, w2, w3)``: block 1 has ``w1``, blocks 2-3 ``w2``, blocks 4-5 ``w3``.

    Shapes:
        ``(N, 3, H, W)`` normalised images with ``H, W >= 32`` → ``(N, num_classes)`` logits.

    Example:
        >>> net = ShapeNet().eval()
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 6])
    """

    def __init__(self, num_classes: int = 6, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_block(3, w1), nn.MaxPool2d(2),
            *_block(w1, w2), *_block(w2, w2), nn.MaxPool2d(2),
            *_block(w2, w3), nn.MaxPool2d(2),
            *_block(w3, w3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
