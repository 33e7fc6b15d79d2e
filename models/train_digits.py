"""Train the tiny digits CNN shipped as package data in ``onnxprune/data/``.

Usage::

    python -m models.train_digits [--out DIR] [--epochs 30] [--seed 0]

Trains ``Conv(1,16)-BN-ReLU-Conv(16,32)-BN-ReLU-MaxPool-FC(512,64)-ReLU-FC(64,10)``
on scikit-learn's ``load_digits`` (8x8 images scaled to [0, 1]) with a fixed,
stratified 1,297 / 500 train/test split, then writes:

* ``digits_cnn.onnx``   - legacy exporter, opset 17, input ``input`` [N,1,8,8],
  output ``logits`` [N,10], dynamic batch axis, BatchNormalization nodes kept;
* ``digits_test.npz``   - ``input`` float32 [500,1,8,8], ``labels`` int64 [500];
* ``digits_train.npz``  - the 1,297 training samples, same keys (calibration).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import warnings

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "onnxprune" / "data"
TEST_SIZE = 500


class DigitsCNN(nn.Sequential):
    """Conv(1,16,3)-BN-ReLU-Conv(16,32,3)-BN-ReLU-MaxPool(2)-Flatten-Linear(512,64)-ReLU-Linear(64,10)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test): float32 [N,1,8,8] in [0,1] and int64 labels."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    return (np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr), np.ascontiguousarray(x_te),
            np.ascontiguousarray(y_te))


def train(x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0, lr: float = 1e-3,
          batch_size: int = 64) -> DigitsCNN:
    """Train a DigitsCNN with Adam; deterministic for a given seed. Returns the model in eval mode."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    return float((logits.argmax(1) == labels).mean())


def export(model: nn.Module, path: pathlib.Path) -> None:
    """Legacy ONNX export (opset 17, dynamic batch, BN nodes kept via TrainingMode.PRESERVE)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train and export the digits CNN.")
    ap.add_argument("--out", type=pathlib.Path, default=DATA_DIR)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # bit-for-bit reproducible training on CPU
    x_tr, y_tr, x_te, y_te = load_split(args.seed)
    print(f"train {len(x_tr)}  test {len(x_te)}")
    model = train(x_tr, y_tr, args.epochs, args.seed)
    with torch.no_grad():
        acc_tr = accuracy(model(torch.from_numpy(x_tr)).numpy(), y_tr)
        logits = model(torch.from_numpy(x_te)).numpy()
    acc = accuracy(logits, y_te)
    print(f"torch: train acc {acc_tr:.4f}  test acc {acc:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "digits_cnn.onnx"
    export(model, onnx_path)
    np.savez_compressed(args.out / "digits_test.npz", input=x_te, labels=y_te)
    np.savez_compressed(args.out / "digits_train.npz", input=x_tr, labels=y_tr)

    ort_logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x_te})[0]
    print(f"onnx:  test acc {accuracy(ort_logits, y_te):.4f}  max |onnx - torch| {np.abs(ort_logits - logits).max():.2e}")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1024:.1f} KiB), digits_test.npz, digits_train.npz")
    if acc < 0.95:
        raise SystemExit(f"test accuracy {acc:.4f} < 0.95")


if __name__ == "__main__":
    main()
