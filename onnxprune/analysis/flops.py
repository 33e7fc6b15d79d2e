"""Counting parameters and multiply-accumulates (MACs) of a model, per node.

MACs are counted for the ops that dominate cost: Conv, ConvTranspose, Gemm and
MatMul (FLOPs ~= 2 x MACs). Symbolic dimensions (a dynamic batch) count as 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from onnxprune.graph import Dim, GraphIndex, attr


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _ints(dims: tuple[Dim, ...] | None) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in (dims or ())]


def node_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    """MACs of one node (0 for ops not counted)."""
    op = node.op_type
    if op == "Conv" and index.is_const(node.input[1]):
        w = _ints(index.shape(node.input[1]))
        y = _ints(index.shape(node.output[0]))
        return math.prod(y) * math.prod(w[1:]) if y else 0
    if op == "ConvTranspose" and index.is_const(node.input[1]):
        w = _ints(index.shape(node.input[1]))
        x = _ints(index.shape(node.input[0]))
        return math.prod(x) * math.prod(w[1:]) if x else 0
    if op == "Gemm":
        a, b = _ints(index.shape(node.input[0])), _ints(index.shape(node.input[1]))
        if len(a) != 2 or len(b) != 2:
            return 0
        m = a[1] if attr(node, "transA", 0) else a[0]
        k, n = (b[1], b[0]) if attr(node, "transB", 0) else (b[0], b[1])
        return m * k * n
    if op == "MatMul":
        a, y = _ints(index.shape(node.input[0])), _ints(index.shape(node.output[0]))
        if not a or not y:
            return 0
        b = index.shape(node.input[1]) or ()
        k = b[-2] if len(b) >= 2 else b[0] if len(b) == 1 else None  # the reduced size, from B when known
        return math.prod(y) * (k if isinstance(k, int) else a[-1])
    return 0


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE}


def is_parameter(t: onnx.TensorProto) -> bool:
    """Parameters are floating-point initializers (not shape constants or quantized codes' indices)."""
    return t.data_type in FLOAT_TYPES


def model_cost(model: onnx.ModelProto, index: GraphIndex | None = None) -> Cost:
    """Parameters (elements of float initializers that nodes read) and MACs of a model with shapes."""
    index = index or GraphIndex(model)
    used = set(index.uses)
    params = sum(math.prod(t.dims) for t in model.graph.initializer if t.name in used and is_parameter(t))
    macs = sum(node_macs(index, n) for n in model.graph.node)
    return Cost(int(params), int(macs))
