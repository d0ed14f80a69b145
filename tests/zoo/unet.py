"""Small U-Net: (conv3x3-BN-ReLU)x2 blocks, maxpool down, x2 upsampling (bilinear via
nn.Upsample by default, or nearest via F.interpolate), skip concatenation with torch.cat,
1x1 output conv.  Input H, W must be divisible by 2**depth (16 by default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import seeded_factory

__all__ = ["DoubleConv", "Down", "Up", "UNet", "unet"]


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Upsample x2, concat with the skip tensor, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode
        if mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        elif mode != "nearest":
            raise ValueError(f"unknown upsampling mode {mode!r}")
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 16, depth: int = 4,
                 up_mode: str = "bilinear") -> None:
        super().__init__()
        chs = [base * 2 ** i for i in range(depth + 1)]  # 16, 32, 64, 128, 256
        self.inc = DoubleConv(in_channels, chs[0])
        self.downs = nn.ModuleList([Down(chs[i], chs[i + 1]) for i in range(depth)])
        ups = []
        cur = chs[depth]
        for i in reversed(range(depth)):
            ups.append(Up(cur, chs[i], chs[i], mode=up_mode))
            cur = chs[i]
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(chs[0], num_classes, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


@seeded_factory
def unet(in_channels: int = 3, num_classes: int = 2, base: int = 16, depth: int = 4,
         up_mode: str = "bilinear") -> UNet:
    return UNet(in_channels, num_classes, base, depth, up_mode)
