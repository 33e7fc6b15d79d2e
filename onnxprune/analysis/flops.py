"""Counting parameters and multiply-accumulates (MACs) of a model, per node.

MACs are counted for the ops that dominate cost: Conv, ConvTranspose, Gemm and
MatMul, and onnxruntime's quantized and fused matrix products (FLOPs ~= 2 x MACs); what each
costs is its spec in ``analysis.weighted_ops``. Symbolic dimensions (a dynamic batch) count as 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from onnxprune.analysis.weighted_ops import weighted_op
from onnxprune.graph import GraphIndex


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def node_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    """MACs of one node (0 for ops not counted): its spec's in ``analysis.weighted_ops``."""
    spec = weighted_op(node)
    return spec.macs(index, node) if spec is not None else 0


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
