"""Slice every constant input along its channel axes in one pass: the output side of
weighted ops (Conv/ConvTranspose/Gemm/MatMul weight rows, biases), per-channel parameters
(BatchNorm/InstanceNorm statistics and affine terms, PRelu slopes, constant operands of
elementwise ops) and the input side (weight columns for removed input channels, including
the C*H*W blocks of a dense layer after Flatten); and set the group count of depthwise
convolutions to the number of channels they keep.

A weight read along several axes (a Conv's rows and columns) is read once and sliced
once, whatever roles its axes play.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx

from onnxprune.analysis.context import Fixup, GroupCount
from onnxprune.analysis.rules.fused import HeadAttrs
from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.analysis.removal import Removal
from onnxprune.rewrite.base import Pass, PassResult
from onnxprune.rewrite.slicing import slice_params
from onnxprune.rewrite.slice_nbits import MatMulNBitsCut, apply_nbits_fixup


class SliceWeightsPass(Pass):
    consistent = False  # shape constants (Reshape, Split sizes) are rewritten by the next pass
    name = "slice_weights"

    def call(self, model: onnx.ModelProto, removal: Removal) -> PassResult:
        modified = slice_params(model, removal, {"producer", "param", "consumer"})
        index = GraphIndex(model)
        for fix in removal.analysis.fixups:
            handler = self.fixup_handlers.get(type(fix))
            if handler is not None:  # a kind another pass handles (check_fixup_handlers)
                modified = handler(fix, removal, model, index) or modified
        return PassResult(model, modified)


def _group_count(fix: GroupCount, removal: Removal, model: onnx.ModelProto, index: GraphIndex) -> bool:
    """A depthwise convolution's group count becomes its kept channel count."""
    node = index.nodes[fix.node]
    groups = removal.kept_count(fix.elems)
    if int(attr(node, "group", 1)) == groups:
        return False
    set_attr(node, "group", groups)
    return True


def _head_attrs(fix: HeadAttrs, removal: Removal, model: onnx.ModelProto, index: GraphIndex) -> bool:
    """num_heads of onnxruntime's fused attention / rotary ops."""
    return set_head_attrs(index.nodes[fix.node], fix, removal)


def _matmul_nbits(fix: MatMulNBitsCut, removal: Removal, model: onnx.ModelProto, index: GraphIndex) -> bool:
    """Packed zero points, K and N of onnxruntime's 4-bit MatMul."""
    return apply_nbits_fixup(model, GraphIndex(model), fix, removal)


def set_head_attrs(node: onnx.NodeProto, fix: HeadAttrs, removal: Removal) -> bool:
    """num_heads / kv_num_heads / qkv_hidden_sizes become the kept head counts."""
    kept = removal.kept_count(fix.elems)
    wanted: dict[str, int | list[int]] = {name: kept * m for name, m in fix.attrs.items()}
    wanted.update({name: [kept * m for m in ms] for name, ms in fix.lists.items()})
    modified = False
    for name, value in wanted.items():
        old = attr(node, name)
        if (list(old) if isinstance(value, list) and old is not None else old) != value:
            set_attr(node, name, value)
            modified = True
    return modified


FIXUP_HANDLERS: dict[type[Fixup], Callable[[Any, Removal, onnx.ModelProto, GraphIndex], bool]] = {
    GroupCount: _group_count,
    HeadAttrs: _head_attrs,
    MatMulNBitsCut: _matmul_nbits,
}
SliceWeightsPass.fixup_handlers = FIXUP_HANDLERS
