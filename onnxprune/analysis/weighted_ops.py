"""What a weighted op is, once: one spec per op type whose cost is counted.

A spec says where the op's weight is (``weight_slot``), which axis of its output holds its
output channels (``output_axis``), how many multiply-accumulates one node costs (``macs``),
how recovery refits it (``refit``: the rows of ``recovery.layers.Layer``, 'conv', 'gemm'
or 'matmul'; None: not refitted) and whether similarity merging (Srinivas & Babu) may
merge its output units (``mergeable``). Readers: ``analysis.flops`` (MACs),
``analysis.build`` (the output channels of a node left alone), ``scoring.similarity`` and
``recovery.layers``. Adding one is one ``register_weighted_op`` call in this file; an op
type registered twice is refused.

Specs of the default domain are keyed by op type and also match an op of another domain
that reuses the name (``com.microsoft.nchwc::Conv`` counts as a Conv); a spec of another
domain (``com.microsoft::MatMulNBits``) matches that domain only.

MACs are counted for the ops that dominate cost; symbolic dimensions (a dynamic batch)
count as 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxprune.extend import Registry
from onnxprune.graph import Dim, GraphIndex, attr

MacsFn = Callable[[GraphIndex, onnx.NodeProto], int]
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class WeightedOp:
    """One op type's spec (see the module docstring)."""

    op_type: str
    macs: MacsFn
    domain: str = ""
    weight_slot: int | None = 1  # the input holding the weight (None: the op has none)
    output_axis: int | None = None  # the output channel axis of output 0 (negative: from the end)
    refit: str | None = None  # conv | gemm | matmul (recovery.layers); None: not refitted
    mergeable: bool = False  # similarity merging may merge its output units

    @property
    def key(self) -> str:
        return self.op_type if self.domain in DEFAULT_DOMAINS else f"{self.domain}::{self.op_type}"


WEIGHTED_OPS: Registry[WeightedOp] = Registry("weighted op")  # the built-ins are below


def register_weighted_op(spec: WeightedOp) -> WeightedOp:
    """Add ``spec``; a DuplicateRegistrationError if its op type (and domain) has one."""
    return WEIGHTED_OPS.register(spec.key, spec)


def weighted_op(node: onnx.NodeProto) -> WeightedOp | None:
    """The spec of ``node``'s op, or None when its cost is not counted."""
    if node.domain not in DEFAULT_DOMAINS:
        spec = WEIGHTED_OPS.get(f"{node.domain}::{node.op_type}")
        if spec is not None:
            return spec
    return WEIGHTED_OPS.get(node.op_type)


def refitted_ops() -> list[str]:
    """The op types recovery refits, in registration order."""
    return [s.op_type for s in WEIGHTED_OPS.values() if s.refit is not None]


# -- MACs ----------------------------------------------------------------------------------------------------
def _ints(dims: tuple[Dim, ...] | None) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in (dims or ())]


def is_weight(index: GraphIndex, name: str) -> bool:
    """A constant, or a constant dequantised by a DequantizeLinear (a QDQ weight)."""
    producer = index.producer.get(name)
    return index.is_const(name) or (producer is not None and producer.op_type == "DequantizeLinear"
                                    and index.is_const(producer.input[0]))


def _conv_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    if not is_weight(index, node.input[1]):
        return 0
    w = _ints(index.shape(node.input[1]))
    y = _ints(index.shape(node.output[0]))
    return math.prod(y) * math.prod(w[1:]) if y else 0


def _conv_transpose_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    if not is_weight(index, node.input[1]):
        return 0
    w = _ints(index.shape(node.input[1]))
    x = _ints(index.shape(node.input[0]))
    return math.prod(x) * math.prod(w[1:]) if x else 0


def _gemm_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    a, b = _ints(index.shape(node.input[0])), _ints(index.shape(node.input[1]))
    if len(a) != 2 or len(b) != 2:
        return 0
    m = a[1] if attr(node, "transA", 0) else a[0]
    k, n = (b[1], b[0]) if attr(node, "transB", 0) else (b[0], b[1])
    return m * k * n


def _matmul_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    a, y = _ints(index.shape(node.input[0])), _ints(index.shape(node.output[0]))
    if not a or not y:
        return 0
    b = index.shape(node.input[1]) or ()
    k = b[-2] if len(b) >= 2 else b[0] if len(b) == 1 else None  # the reduced size, from B when known
    return math.prod(y) * (k if isinstance(k, int) else a[-1])


def _matmul_nbits_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    """onnxruntime's 4-bit MatMul: |Y| x K (Y = A @ W[K, N]: from A's shape where onnx's
    inference left Y's unknown, as in a freshly pruned model)."""
    a = index.shape(node.input[0])
    y = _ints(index.shape(node.output[0]) or ((*a[:-1], int(attr(node, "N", 0))) if a else None))
    return math.prod(y) * int(attr(node, "K", 0)) if y else 0


def _fused_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    """onnxruntime's fused ops: FusedMatMul as MatMul; attention's Q K^T and P V (self-attention
    over the sequence), plus Attention's packed QKV projection."""
    y = _ints(index.shape(node.output[0]))
    x = _ints(index.shape(node.input[0]))
    if not y or not x:
        return 0
    if node.op_type == "FusedMatMul":
        return math.prod(y) * x[-1]
    if len(x) != 3:
        return 0
    batch, seq, dv = y[0], y[1], y[-1]
    if node.op_type == "Attention":
        w = _ints(index.shape(node.input[1]))
        dq = (w[1] - dv) // 2 if len(w) == 2 else dv
        projection = batch * seq * x[-1] * (w[1] if len(w) == 2 else 3 * dv)
        return projection + batch * seq * seq * (dq + dv)
    k = _ints(index.shape(node.input[1])) if len(node.input) > 1 and node.input[1] else x
    return batch * seq * (k[1] if len(k) == 3 else seq) * (x[-1] + dv)


# -- the built-in specs --------------------------------------------------------------------------------------
register_weighted_op(WeightedOp("Conv", _conv_macs, output_axis=1, refit="conv", mergeable=True))
register_weighted_op(WeightedOp("ConvTranspose", _conv_transpose_macs, output_axis=1))
register_weighted_op(WeightedOp("Gemm", _gemm_macs, output_axis=-1, refit="gemm", mergeable=True))
register_weighted_op(WeightedOp("MatMul", _matmul_macs, output_axis=-1, refit="matmul", mergeable=True))
register_weighted_op(WeightedOp("MatMulNBits", _matmul_nbits_macs, domain="com.microsoft"))
# onnxruntime's graph optimizer: Conv / Gemm + an activation (not refitted: the activation is inside)
register_weighted_op(WeightedOp("FusedConv", _conv_macs, domain="com.microsoft", output_axis=1))
register_weighted_op(WeightedOp("FusedGemm", _gemm_macs, domain="com.microsoft", output_axis=-1))
register_weighted_op(WeightedOp("FusedMatMul", _fused_macs, domain="com.microsoft", weight_slot=None))
register_weighted_op(WeightedOp("Attention", _fused_macs, domain="com.microsoft"))
register_weighted_op(WeightedOp("MultiHeadAttention", _fused_macs, domain="com.microsoft", weight_slot=None))
