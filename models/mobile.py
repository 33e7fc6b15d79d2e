"""Mobile architectures: MobileNetV2, MobileNetV3-Small, ShuffleNetV2 x1.0."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .common import RESIDUAL_GAMMA, conv_bn, even_ch, finalize, make_divisible, seeded

__all__ = ["MobileNetV2", "MobileNetV3Small", "ShuffleNetV2", "channel_shuffle", "build_mobilenetv2",
           "build_mobilenetv3", "build_shufflenetv2"]

NUM_CLASSES = 10
MOBILE_INPUT = (1, 3, 64, 64)


# ------------------------------------------------------------------ MobileNetV2
class InvertedResidual(nn.Module):
    """Expand 1x1 (ReLU6) -> depthwise 3x3 (ReLU6) -> linear 1x1 projection; residual if stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=lambda: nn.ReLU6(inplace=True)))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=lambda: nn.ReLU6(inplace=True)),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        if self.use_res:
            layers[-1].zoo_gamma_range = RESIDUAL_GAMMA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2 with width multiplier (channels rounded to multiples of 8)."""

    # t (expansion), c (channels), n (repeats), s (stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        feats: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=lambda: nn.ReLU6(inplace=True))]
        for t, c, n, s in self.SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(conv_bn(cin, last, 1, act=lambda: nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


@seeded
def build_mobilenetv2(width: float = 1.0, seed: int = 0) -> nn.Module:
    """MobileNetV2 (inverted residuals, depthwise 3x3, ReLU6, linear bottlenecks)."""
    return finalize(MobileNetV2(width), [MOBILE_INPUT])


# ------------------------------------------------------------------ MobileNetV3
class SqueezeExcitation(nn.Module):
    """SE: AdaptiveAvgPool -> 1x1 conv -> ReLU -> 1x1 conv -> Hardsigmoid, multiply the input."""

    def __init__(self, cin: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, cin, 1)
        self.scale_act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_act(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class V3Block(nn.Module):
    """MobileNetV3 bneck: [expand 1x1] -> depthwise kxk -> [SE] -> linear 1x1 project (+ residual)."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: Callable[[], nn.Module],
                 stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, make_divisible(exp // 4, 8)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        if self.use_res:
            layers[-1][1].zoo_gamma_range = RESIDUAL_GAMMA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res else y


class MobileNetV3Small(nn.Module):
    """torchvision-layout MobileNetV3-Small."""

    # in, kernel, expanded, out, SE, activation ("RE"/"HS"), stride
    CONF = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1))

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES, last_channel: int = 1024) -> None:
        super().__init__()
        hs, re = (lambda: nn.Hardswish(inplace=True)), (lambda: nn.ReLU(inplace=True))
        adj = lambda c: make_divisible(c * width)  # noqa: E731
        layers: list[nn.Module] = [conv_bn(3, adj(16), 3, 2, act=hs)]
        for cin, k, exp, cout, se, a, s in self.CONF:
            layers.append(V3Block(adj(cin), k, adj(exp), adj(cout), se, hs if a == "HS" else re, s))
        last_conv = 6 * adj(96)
        layers.append(conv_bn(adj(96), last_conv, 1, act=hs))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = adj(last_channel)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@seeded
def build_mobilenetv3(width: float = 1.0, seed: int = 0) -> nn.Module:
    """MobileNetV3-Small (SE with Hardsigmoid, Hardswish, depthwise 3x3/5x5)."""
    return finalize(MobileNetV3Small(width), [MOBILE_INPUT])


# ----------------------------------------------------------------- ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channel groups via view -> transpose -> view."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. stride 1: chunk(2) -> branch on half -> cat; stride 2: two branches -> cat.
    Always followed by channel_shuffle(groups=2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision-layout ShuffleNetV2 x1.0 (repeats 4/8/4, channels 24/116/232/464/1024)."""

    def __init__(self, width: float = 1.0, repeats: tuple[int, ...] = (4, 8, 4),
                 channels: tuple[int, ...] = (24, 116, 232, 464, 1024), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        chans = [even_ch(c, width) for c in channels]
        cin = chans[0]
        self.conv1 = conv_bn(3, cin, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for n, cout in zip(repeats, chans[1:-1]):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = conv_bn(cin, chans[-1], 1)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


@seeded
def build_shufflenetv2(width: float = 1.0, seed: int = 0) -> nn.Module:
    """ShuffleNetV2 x1.0 (channel split, branch, cat, channel shuffle; stride-2 downsampling units)."""
    return finalize(ShuffleNetV2(width), [MOBILE_INPUT])
