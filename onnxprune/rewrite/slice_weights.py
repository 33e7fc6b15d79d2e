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

import onnx

from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.rewrite.base import Pass, PassResult, PruneContext
from onnxprune.rewrite.slicing import slice_params


class SliceWeightsPass(Pass):
    consistent = False  # shape constants (Reshape, Split sizes) are rewritten by the next pass
    name = "slice_weights"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        modified = slice_params(model, ctx, {"producer", "param", "consumer"})
        index = GraphIndex(model)
        for fix in ctx.analysis.fixups:
            if fix.kind != "group_count":
                continue
            node = index.nodes[fix.node]
            groups = ctx.kept_count(fix.data["elems"])
            if int(attr(node, "group", 1)) != groups:
                set_attr(node, "group", groups)
                modified = True
        return PassResult(model, modified)
