"""Dense-prediction models: a small UNet and a YOLOv8n-style detector."""

from __future__ import annotations

import torch
from torch import nn

from .common import RESIDUAL_GAMMA, ch, finalize, seeded

__all__ = ["UNet", "YOLOv8", "C2f", "SPPF", "Detect", "build_unet", "build_yolo"]


# ------------------------------------------------------------------------- UNet
class DoubleConv(nn.Sequential):
    """(Conv3x3-BN-ReLU) x 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """4-level UNet. Decoder upsamples with ConvTranspose2d (levels 4, 2), bilinear Upsample
    (level 3) and nearest Upsample (level 1); every level concatenates the encoder skip."""

    def __init__(self, width: float = 1.0, in_ch: int = 3, n_classes: int = 2, base: int = 32) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (ch(base * m, width) for m in (1, 2, 4, 8, 16))
        self.inc = DoubleConv(in_ch, c1)
        self.down1, self.down2, self.down3, self.down4 = (DoubleConv(a, b) for a, b in
                                                          ((c1, c2), (c2, c3), (c3, c4), (c4, c5)))
        self.pool = nn.MaxPool2d(2)
        self.up4 = nn.ConvTranspose2d(c5, c4, 2, 2)
        self.dec4 = DoubleConv(2 * c4, c4)
        self.up3 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec3 = DoubleConv(c4 + c3, c3)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, 2)
        self.dec2 = DoubleConv(2 * c2, c2)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = DoubleConv(c2 + c1, c1)
        self.outc = nn.Conv2d(c1, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.inc(x)
        e2 = self.down1(self.pool(e1))
        e3 = self.down2(self.pool(e2))
        e4 = self.down3(self.pool(e3))
        b = self.down4(self.pool(e4))
        d = self.dec4(torch.cat([self.up4(b), e4], 1))
        d = self.dec3(torch.cat([self.up3(d), e3], 1))
        d = self.dec2(torch.cat([self.up2(d), e2], 1))
        d = self.dec1(torch.cat([self.up1(d), e1], 1))
        return self.outc(d)


@seeded
def build_unet(width: float = 1.0, seed: int = 0) -> nn.Module:
    """Small UNet (32..512 channels), 3-channel 64x64 input -> 2-class per-pixel logits."""
    return finalize(UNet(width), [(1, 3, 64, 64)])


# ----------------------------------------------------------------------- YOLOv8
class Conv(nn.Module):
    """Ultralytics Conv: Conv2d(bias=False, pad k//2) -> BN -> SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Convs with optional residual add (only when shortcut and c1 == c2)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c2, 3), Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2
        if self.add:
            self.cv2.bn.zoo_gamma_range = RESIDUAL_GAMMA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convs: cv1 -> split in 2 halves -> n bottlenecks chained on the last
    piece -> cat all -> cv2. (Uses ``split`` like ultralytics' ``forward_split``; ``chunk`` makes
    the dynamo exporter emit an opset-18 Split that fails the conversion to opset 17.)"""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = max(1, int(c2 * e))
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling - fast: cv1 -> 3 chained MaxPool2d(5,1,2) -> cat(4) -> cv2."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(4 * c_, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """YOLOv8 decoupled head: per scale, box branch (4*reg_max) and class branch (nc), concatenated.
    Returns the raw per-scale maps [B, 4*reg_max + nc, H, W] (training-mode outputs, no DFL decode)."""

    def __init__(self, chs: tuple[int, ...], nc: int = 80, reg_max: int = 16) -> None:
        super().__init__()
        c2, c3 = max(16, chs[0] // 4, reg_max * 4), max(chs[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in chs)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in chs)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((b(x), c(x)), 1) for x, b, c in zip(xs, self.cv2, self.cv3)]


class YOLOv8(nn.Module):
    """YOLOv8 backbone (Conv/C2f/SPPF) + PAN neck (Upsample + cat) + 3-scale Detect head.

    ``width=1.0`` reproduces YOLOv8n (channels 16..256, depth multiple 0.33);
    ``width`` multiplies those channels further.
    """

    def __init__(self, width: float = 1.0, nc: int = 80, depth: tuple[int, int] = (1, 2)) -> None:
        super().__init__()
        c = [ch(v, width) for v in (16, 32, 64, 128, 256)]
        d3, d6 = depth  # repeats for the "x3" and "x6" C2f blocks at depth multiple 0.33
        self.b0, self.b1 = Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2)
        self.b2 = C2f(c[1], c[1], d3, True)
        self.b3, self.b4 = Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], d6, True)  # P3/8
        self.b5, self.b6 = Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], d6, True)  # P4/16
        self.b7, self.b8 = Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], d3, True)  # P5/32
        self.sppf = SPPF(c[4], c[4], 5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(c[4] + c[3], c[3], d3)
        self.h15 = C2f(c[3] + c[2], c[2], d3)
        self.h16, self.h18 = Conv(c[2], c[2], 3, 2), C2f(c[2] + c[3], c[3], d3)
        self.h19, self.h21 = Conv(c[3], c[3], 3, 2), C2f(c[3] + c[4], c[4], d3)
        self.detect = Detect((c[2], c[3], c[4]), nc)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.sppf(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat([self.up(p5), p4], 1))
        h15 = self.h15(torch.cat([self.up(h12), p3], 1))
        h18 = self.h18(torch.cat([self.h16(h15), h12], 1))
        h21 = self.h21(torch.cat([self.h19(h18), p5], 1))
        return self.detect([h15, h18, h21])


@seeded
def build_yolo(width: float = 1.0, seed: int = 0) -> nn.Module:
    """YOLOv8n-style detector; 64x64 input -> 3 outputs [1,144,8,8], [1,144,4,4], [1,144,2,2]."""
    return finalize(YOLOv8(width), [(1, 3, 64, 64)])
