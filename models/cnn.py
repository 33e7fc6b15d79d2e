"""Classic CNN classifiers: VGG, ResNet-18/50, ResNeXt-50 32x4d, DenseNet-121."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import RESIDUAL_GAMMA, ch, finalize, seeded

__all__ = ["VGG", "ResNet", "BasicBlock", "Bottleneck", "DenseNet", "build_vgg", "build_resnet18",
           "build_resnet50", "build_resnext", "build_densenet"]

NUM_CLASSES = 10


# --------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """VGG-style net: conv-BN-ReLU stages with MaxPool, flatten, 2-layer MLP head."""

    def __init__(self, cfg: Sequence[int | str], width: float = 1.0, in_hw: int = 32,
                 hidden: int = 512, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, hw = 3, in_hw
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                hw //= 2
            else:
                cout = ch(int(v), width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        h = ch(hidden, width)
        self.classifier = nn.Sequential(
            nn.Linear(cin * hw * hw, h), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(h, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# VGG-11 conv layout without the last pool, so the flattened map is 2x2 on 32x32 input.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


@seeded
def build_vgg(width: float = 1.0, seed: int = 0) -> nn.Module:
    """VGG-11-style CIFAR net (8 conv-BN-ReLU, 4 max-pools, flatten 512x2x2 -> FC-ReLU-Dropout-FC)."""
    return finalize(VGG(VGG11_CFG, width), [(1, 3, 32, 32)])


# ------------------------------------------------------------------------ ResNet
class BasicBlock(nn.Module):
    """ResNet basic block: 3x3-BN-ReLU-3x3-BN + shortcut (1x1 conv + BN when shape changes)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.bn2.zoo_gamma_range = RESIDUAL_GAMMA
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet/ResNeXt bottleneck: 1x1 reduce, (grouped) 3x3, 1x1 expand (x4), + shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        # torchvision: width = int(planes * base_width / 64) * groups; kept >= 1 per group.
        mid = max(1, int(planes * (base_width / 64.0))) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.bn3.zoo_gamma_range = RESIDUAL_GAMMA
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """torchvision-layout ResNet: 7x7/2 stem + maxpool, 4 stages, adaptive avgpool, fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], width: float = 1.0,
                 groups: int = 1, width_per_group: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.inplanes = ch(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stages.append(self._make_layer(block, ch(planes, width), n, 1 if i == 0 else 2, groups, width_per_group))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int, groups: int, base_width: int) -> nn.Sequential:
        blocks = []
        for i in range(n):
            blocks.append(block(self.inplanes, planes, stride if i == 0 else 1, groups, base_width))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


RESNET_INPUT = (1, 3, 64, 64)


@seeded
def build_resnet18(width: float = 1.0, seed: int = 0) -> nn.Module:
    """ResNet-18 (BasicBlock x [2,2,2,2])."""
    return finalize(ResNet(BasicBlock, (2, 2, 2, 2), width), [RESNET_INPUT])


@seeded
def build_resnet50(width: float = 1.0, seed: int = 0) -> nn.Module:
    """ResNet-50 (Bottleneck x [3,4,6,3], expansion 4)."""
    return finalize(ResNet(Bottleneck, (3, 4, 6, 3), width), [RESNET_INPUT])


@seeded
def build_resnext(width: float = 1.0, seed: int = 0, cardinality: int = 32, width_per_group: int = 4) -> nn.Module:
    """ResNeXt-50 32x4d: ResNet-50 layout with grouped 3x3 convs (groups = cardinality).

    ``width`` scales the stage planes; the cardinality is kept, so each group has
    at least one channel and group counts always stay valid.
    """
    return finalize(ResNet(Bottleneck, (3, 4, 6, 3), width, cardinality, width_per_group), [RESNET_INPUT])


# ---------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k) on the concatenation of all inputs."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth, 3, 1, 1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    """Stack of dense layers; every layer sees torch.cat of the block input and all earlier outputs."""

    def __init__(self, n: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (halve channels)-AvgPool2d(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    """torchvision-layout DenseNet (BC variant, compression 0.5)."""

    def __init__(self, block_config: Sequence[int] = (6, 12, 24, 16), growth: int = 32, init_features: int = 64,
                 bn_size: int = 4, width: float = 1.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        growth, c = ch(growth, width), ch(init_features, width)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(block_config):
            layers.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(block_config) - 1:
                layers.append(Transition(c, c // 2))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


@seeded
def build_densenet(width: float = 1.0, seed: int = 0) -> nn.Module:
    """DenseNet-121 (blocks 6/12/24/16, growth 32, bn_size 4, transitions halve channels)."""
    return finalize(DenseNet(width=width), [RESNET_INPUT])
