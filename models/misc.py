"""Graph-pattern models: NHWC transposes, folded BN, Conv+LSTM, plain MLP, Linear-SE net,
EDSR-style super-resolution (pixel shuffle)."""

from __future__ import annotations

import torch
from torch import nn

from .common import ch, conv_bn, finalize, seeded

__all__ = ["NHWCNet", "FoldedBNNet", "ConvLSTM", "MLP", "SENet", "SuperResolution", "build_nhwc", "build_folded_bn",
           "build_conv_lstm", "build_mlp", "build_squeeze_excite_small", "build_super_resolution"]

NUM_CLASSES = 10


# ------------------------------------------------------------------------- NHWC
class NHWCNet(nn.Module):
    """Keras-export-like net on NHWC input: every conv is wrapped in NCHW<->NHWC permutes,
    with per-channel elementwise ops ([C] parameters broadcast on the last axis) done in NHWC."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2, c3 = ch(32, width), ch(64, width), ch(128, width)
        self.conv1, self.bn1 = nn.Conv2d(3, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1)
        self.bias1 = nn.Parameter(torch.randn(c1) * 0.1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2)
        self.scale2 = nn.Parameter(torch.empty(c2).uniform_(0.5, 1.5))
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, 2, 1, bias=False), nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, H, W, C]
        x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.bn1(self.conv1(x))).permute(0, 2, 3, 1)
        x = x + self.bias1
        x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.bn2(self.conv2(x))).permute(0, 2, 3, 1)
        x = x * self.scale2
        x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.bn3(self.conv3(x))).permute(0, 2, 3, 1)
        return self.fc(x.mean(dim=(1, 2)))


@seeded
def build_nhwc(width: float = 1.0, seed: int = 0) -> nn.Module:
    """NHWC-input CNN with Transpose nodes around each conv (input [1,32,32,3])."""
    return finalize(NHWCNet(width), [(1, 32, 32, 3)])


# -------------------------------------------------------------------- folded BN
class ConvAct(nn.Module):
    """Conv2d(bias=True) [-> BN until folded] -> optional ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x) if self.relu else x

    @torch.no_grad()
    def fold(self) -> None:
        """Fold BN into the conv weight/bias and drop the BN module."""
        if self.bn is None:
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.conv.bias.copy_((self.conv.bias - bn.running_mean) * scale + bn.bias)
        self.bn = None


class ResBlock(nn.Module):
    """conv-relu-conv + identity, relu."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = ConvAct(c, c), ConvAct(c, c, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(self.a(x)))


class FoldedBNNet(nn.Module):
    """Conv(bias)-ReLU stacks with residual adds, GAP, Linear; BN already folded into convs."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2, c3 = ch(32, width), ch(64, width), ch(128, width)
        self.body = nn.Sequential(ConvAct(3, c1), ResBlock(c1), ConvAct(c1, c2, 2), ResBlock(c2),
                                  ConvAct(c2, c3, 2), ResBlock(c3))
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))

    def fold(self) -> "FoldedBNNet":
        for m in self.modules():
            if isinstance(m, ConvAct):
                m.fold()
        return self


@seeded
def build_folded_bn(width: float = 1.0, seed: int = 0) -> nn.Module:
    """Residual conv net whose (calibrated, randomised) BNs are folded into conv bias/weights."""
    return finalize(FoldedBNNet(width), [(1, 3, 32, 32)]).fold()


# -------------------------------------------------------------------- Conv+LSTM
class ConvLSTM(nn.Module):
    """Conv feature extractor -> columns as a sequence [B, W, C*H] -> LSTM -> Linear on last step."""

    def __init__(self, width: float = 1.0, hidden: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2 = ch(16, width), ch(32, width)
        self.features = nn.Sequential(conv_bn(3, c1), nn.MaxPool2d(2), conv_bn(c1, c2), nn.MaxPool2d(2))
        self.lstm = nn.LSTM(c2 * 8, ch(hidden, width), batch_first=True)
        self.fc = nn.Linear(ch(hidden, width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # [B, C, 8, 8]
        seq = f.permute(0, 3, 1, 2).flatten(2)  # [B, W, C*H]
        out, _ = self.lstm(seq)
        return self.fc(out[:, -1])


@seeded
def build_conv_lstm(width: float = 1.0, seed: int = 0) -> nn.Module:
    """Conv -> LSTM -> Linear (input [1,3,32,32]); the LSTM consumes conv channels."""
    return finalize(ConvLSTM(width), [(1, 3, 32, 32)])


# -------------------------------------------------------------------------- MLP
class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear on a flat input."""

    def __init__(self, width: float = 1.0, in_features: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        h1, h2 = ch(128, width), ch(64, width)
        self.net = nn.Sequential(nn.Linear(in_features, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                 nn.Linear(h2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@seeded
def build_mlp(width: float = 1.0, seed: int = 0) -> nn.Module:
    """Plain 3-layer MLP, input [1,64]."""
    return finalize(MLP(width))


# ------------------------------------------------------------- SE (Linear form)
class LinearSE(nn.Module):
    """SE with Linear layers: GAP -> flatten -> FC -> ReLU -> FC -> Sigmoid -> view -> multiply."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, max(1, c // r)), nn.ReLU(inplace=True), nn.Linear(max(1, c // r), c),
                                nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        s = self.fc(x.mean(dim=(2, 3))).view(b, c, 1, 1)
        return x * s


class SEBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, SE, + projected shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None), LinearSE(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class SENet(nn.Module):
    """Small SE-ResNet: stem, 3 SE residual blocks, GAP, Linear."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2, c3 = ch(32, width), ch(64, width), ch(128, width)
        self.stem = conv_bn(3, c1)
        self.blocks = nn.Sequential(SEBlock(c1, c1, 1), SEBlock(c1, c2, 2), SEBlock(c2, c3, 2))
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@seeded
def build_squeeze_excite_small(width: float = 1.0, seed: int = 0) -> nn.Module:
    """Small SE-ResNet using Linear-layer squeeze-excitation (Gemm + Reshape + Mul pattern)."""
    return finalize(SENet(width), [(1, 3, 32, 32)])


# ------------------------------------------------------------ super-resolution
class SuperResolution(nn.Module):
    """EDSR-style x4 upscaler: head conv, residual blocks (conv-ReLU-conv, no BN) with a
    global skip, then two conv (C -> 4C) + PixelShuffle(2) stages (DepthToSpace in ONNX) and
    an RGB tail conv."""

    def __init__(self, width: float = 1.0, blocks: int = 2) -> None:
        super().__init__()
        c = ch(32, width)
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(c, c, 3, padding=1)) for _ in range(blocks)])
        self.up = nn.Sequential(*[m for _ in range(2) for m in (nn.Conv2d(c, 4 * c, 3, padding=1),
                                                                  nn.PixelShuffle(2), nn.ReLU())])
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = h
        for block in self.body:
            y = y + block(y)
        return self.tail(self.up(y + h))


@seeded
def build_super_resolution(width: float = 1.0, seed: int = 0) -> nn.Module:
    """EDSR-style x4 super-resolution on a [1, 3, 16, 16] input."""
    return finalize(SuperResolution(width))
