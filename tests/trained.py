"""Small networks trained in the tests on data that ships inside PyPI packages."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def digits_split(seed: int = 0):  # noqa: ANN201
    """scikit-learn's digits as [N, 1, 8, 8] float32 in [0, 1]: (train, test) of (x, y)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target.astype(np.int64), test_size=500, stratify=d.target,
                                          random_state=seed)
    return (xtr, ytr), (xte, yte)


class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, two residual blocks with BN, GAP, linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)) for _ in range(2))
        self.mid = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width),
                                 nn.ReLU())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        x = self.mid(x)
        return self.head(x.mean((2, 3)))


def trained_residual_cnn(path, epochs: int = 15, seed: int = 0):  # noqa: ANN001, ANN201
    torch.manual_seed(seed)
    (x, y), _ = digits_split()
    model = ResidualCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    torch.onnx.export(model, (xt[:1],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    return model
