"""Counting parameters and multiply-accumulates (MACs) of a model, per node.

MACs are counted for the ops that dominate cost: Conv, ConvTranspose, Gemm and
MatMul, and onnxruntime's quantized and fused matrix products (FLOPs ~= 2 x MACs); what each
costs is its spec in ``analysis.weighted_ops``. Symbolic dimensions (a dynamic batch) count as 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxprune.analysis.weighted_ops import weighted_op
from onnxprune.graph import GraphIndex, attr


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


#: inputs of quantized ops that hold quantization parameters (scales, zero points, g_idx), not weights
QUANT_PARAM_SLOTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "MatMulNBits": (2, 3, 4)}


def parameter_count(index: GraphIndex, name: str, dims: tuple[int, ...] | list[int] | None = None) -> int:
    """Parameters initializer ``name`` holds (with its shape cut to ``dims`` when given): float
    weights; the integer codes a DequantizeLinear reads (a QDQ weight or int32 bias, counted as
    the float weight they stand for); a MatMulNBits weight as K x N (its packed bytes
    ``[N, k_blocks, blob]`` unpacked, the last block's padding not counted). Scales and zero
    points of quantized ops, shape constants and indices: 0."""
    tensor = index.initializers[name]
    dims = tuple(tensor.dims) if dims is None else tuple(dims)
    users = index.users(name)
    weight_uses = [(n, s) for n, s in users if s not in QUANT_PARAM_SLOTS.get(n.op_type, ())]
    if not weight_uses:
        return 0
    if is_parameter(tensor):
        return math.prod(dims)
    for node, slot in weight_uses:
        if node.op_type == "DequantizeLinear" and slot == 0:
            return math.prod(dims)
        if node.op_type == "MatMulNBits" and slot == 1 and len(dims) == 3:
            k, bs = int(attr(node, "K", 0)), int(attr(node, "block_size", 0))
            blocks = int(tensor.dims[1]) if len(tensor.dims) == 3 else 0
            k_kept = k if dims[1] == blocks else dims[1] * bs  # whole blocks cut: K shrinks with them
            return dims[0] * min(k_kept, dims[1] * bs)
    return 0


def model_cost(model: onnx.ModelProto, index: GraphIndex | None = None) -> Cost:
    """Parameters (``parameter_count`` of every initializer nodes read) and MACs of a model with shapes."""
    index = index or GraphIndex(model)
    params = sum(parameter_count(index, t.name) for t in model.graph.initializer if index.uses.get(t.name))
    macs = sum(node_macs(index, n) for n in model.graph.node)
    return Cost(int(params), int(macs))


def cost_at(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None, cost: Cost | None = None) -> Cost:
    """``model_cost(model)`` (or ``cost``) with the MACs counted at the static input ``shapes``
    (``prepare.normalize.shaped_copy``: a model whose dynamic axes would count as 1)."""
    cost = cost if cost is not None else model_cost(model)
    if not shapes:
        return cost
    from onnxprune.analysis.rules.quant import analysis_index
    from onnxprune.prepare.normalize import shaped_copy

    index = analysis_index(shaped_copy(model, shapes, "the calibration data"))
    return Cost(cost.params, sum(node_macs(index, n) for n in model.graph.node))
