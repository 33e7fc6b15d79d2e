"""Slice the input side of weighted ops (weight columns for removed input channels,
including the C*H*W blocks of a dense layer after Flatten) and set the group count of
depthwise convolutions to the number of channels they keep.
"""

from __future__ import annotations

import onnx

from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.passes.base import Pass, PassResult, PruneContext
from onnxprune.passes.slicing import slice_params


class SliceConsumerInputsPass(Pass):
    consistent = False
    name = "slice_consumer_inputs"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        modified = slice_params(model, ctx, {"consumer"})
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
