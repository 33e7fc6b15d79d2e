"""Fold shape computations into constants where the shapes they read are static.

PyTorch's exporter turns ``x.size(0)``, ``x.chunk(2, 1)`` or ``x.view(b, -1, ...)`` into
Shape -> Gather -> Unsqueeze -> Concat chains feeding Reshape, Slice or Split. When the
tensor's shape is fully static these are constants in disguise; folding them lets the
analysis see constant split points and reshape targets (and rewrite them).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxprune.graph import GraphIndex, attr, drop_initializers

log = logging.getLogger(__name__)

FOLDABLE = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Mul", "Div", "Add", "Sub",
            "Reshape", "Identity", "Floor", "Ceil", "Neg", "Abs", "Min", "Max", "Equal", "Where",
            "ConstantOfShape", "Range", "Mod", "ReduceProd", "ReduceSum", "Expand",
            # index plumbing of exporters' padding arithmetic (HF's TF-style "same" padding builds
            # Pad amounts with Reshape / Slice / Transpose of constants)
            "Transpose", "Flatten", "Tile", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
            "Or", "ReduceMax", "ReduceMin", "Size"}
MAX_ELEMENTS = 1 << 16
# a weight stored in another dtype or layout (old exporters' Unsqueeze of a BatchNorm scale,
# Reshape of a classifier weight; TensorFlow's Transpose of a kernel): folded whatever its size
WEIGHT_VIEWS = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose"}


def fold_shape_computations(model: onnx.ModelProto) -> int:
    """Replace Shape of static tensors, and small computations on constants only (shape
    arithmetic, Paddle's Reshape of a bias to [1, C, 1, 1]), by initializers."""
    g = model.graph
    index = GraphIndex(model)
    outputs = set(index.graph_outputs)
    consts: dict[str, np.ndarray] = {}
    partial: dict[str, tuple] = {}  # Shape outputs with some dynamic entries
    folded: set[str] = set()
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or any(o in outputs for o in node.output):
            continue
        value = None
        if node.op_type == "Shape":
            value = _shape_value(index, node, partial)
        elif node.op_type == "Gather" and node.input[0] in partial:
            value = _gather_static_entries(index, node, partial[node.input[0]])
        elif node.op_type in FOLDABLE and len(node.output) == 1:
            value = _evaluate(index, node, consts)
        if value is not None:
            consts[node.output[0]] = value
            folded.add(node.name)
    if not folded:
        return 0
    keep = [n for n in g.node if n.name not in folded]
    del g.node[:]
    g.node.extend(keep)
    used = set(GraphIndex(model).uses) | outputs  # includes names read inside subgraphs
    for name, value in consts.items():
        if name in used:
            g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    drop_initializers(g, used)  # inputs of folded nodes nothing else reads
    log.debug("folded %d shape computations", len(folded))
    return len(folded)


def _shape_value(index: GraphIndex, node: onnx.NodeProto, partial: dict[str, tuple]) -> np.ndarray | None:
    shape = index.shape(node.input[0])
    if shape is None:
        return None
    start, end = attr(node, "start", 0), attr(node, "end")
    dims = shape[start:end]
    if all(isinstance(d, int) for d in dims):
        return np.array(dims, dtype=np.int64)
    partial[node.output[0]] = dims
    return None


def _gather_static_entries(index: GraphIndex, node: onnx.NodeProto, dims: tuple) -> np.ndarray | None:
    """Gather of static entries of a partly dynamic shape (e.g. the channel count)."""
    idx = index.const(node.input[1])
    if idx is None or int(attr(node, "axis", 0)) != 0:
        return None
    picked = [dims[int(i)] for i in np.asarray(idx).reshape(-1)]
    if not all(isinstance(d, int) for d in picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(np.asarray(idx).shape)


def _evaluate(index: GraphIndex, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    feeds = {}
    for name in node.input:
        if not name:
            continue
        value = consts.get(name)
        if value is None:
            value = index.const(name) if index.is_const(name) else None
        if value is None or (value.size > MAX_ELEMENTS and node.op_type not in WEIGHT_VIEWS):
            return None
        feeds[name] = value
    try:
        (out,) = ReferenceEvaluator(_one_node_model(node, index.model)).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - the reference evaluator raises many types; skip folding
        log.debug("could not fold %s '%s': %s", node.op_type, node.name, exc)
        return None
    out = np.asarray(out)
    return out if out.size <= MAX_ELEMENTS or node.op_type in WEIGHT_VIEWS else None


def _one_node_model(node: onnx.NodeProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """``node`` alone, under the model's opsets (a bare node would be run as the newest opset's
    op: opset 11's Unsqueeze with an ``axes`` attribute would fail)."""
    def info(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)

    graph = onnx.helper.make_graph([node], "fold", [info(n) for n in node.input if n], [info(n) for n in node.output])
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
