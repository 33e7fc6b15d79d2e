"""Export zoo models once per test session (torch needed; tests skip cleanly without it)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from models import ZOO, export_onnx  # noqa: E402

# Narrower variants keep the suite fast on 2 cores; structure is what matters here.
TEST_WIDTH = {"resnet50": 0.25, "densenet": 0.25, "resnext": 0.25, "unet": 0.25, "vgg": 0.25,
              "resnet18": 0.25, "yolo": 0.5}

_DIR = Path(tempfile.mkdtemp(prefix="onnxprune-zoo-"))


@functools.lru_cache(maxsize=None)
def zoo_path(name: str, dynamo: bool = False) -> Path:
    path = _DIR / f"{name}{'-dynamo' if dynamo else ''}.onnx"
    export_onnx(name, path, width=TEST_WIDTH.get(name, 0.5), dynamo=dynamo)
    return path


ZOO_NAMES = sorted(ZOO)
