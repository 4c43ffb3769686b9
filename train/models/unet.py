"""2D U-Net of docs/method.md section 4: per level two (3x3 conv -> BatchNorm -> ReLU), 2x2 max-pool,
decoder of 2x2 stride-2 transposed convs with skip concatenation, 1x1 conv head (logits)."""

from __future__ import annotations

import torch
from torch import nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with one logit per output channel (sigmoid is applied outside the network).

    Args:
        in_channels: input image channels (1 for a T2 slice).
        num_classes: output channels, one per hierarchy node.
        widths: feature widths per level, top to bottom; ``len(widths)`` levels, so
            ``len(widths) - 1`` poolings. The paper's network is (16, 32, 64, 128, 256).

    Shapes: (N, in_channels, H, W) -> (N, num_classes, H, W); H and W must be divisible by
    ``2 ** (len(widths) - 1)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 11,
                 widths: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"U-Net needs at least 2 levels, got widths={tuple(widths)}")
        self.widths = tuple(widths)
        self.down = nn.ModuleList(double_conv(cin, cout)
                                  for cin, cout in zip((in_channels,) + self.widths[:-1], self.widths))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w_in, w_out, 2, stride=2)
                                for w_in, w_out in zip(self.widths[:0:-1], self.widths[-2::-1]))
        self.merge = nn.ModuleList(double_conv(2 * w, w) for w in self.widths[-2::-1])
        self.head = nn.Conv2d(self.widths[0], num_classes, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"Wrong input shape height={h}, width={w}: this U-Net expects sizes divisible by "
                             f"{self.divisor}. Pad or crop the slices, e.g. to "
                             f"({-(-h // self.divisor) * self.divisor}, {-(-w // self.divisor) * self.divisor}).")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
