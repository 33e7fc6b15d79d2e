"""Slice per-channel parameters: BatchNorm/InstanceNorm statistics and affine terms, PRelu slopes, constant operands of elementwise ops (bias Adds, scales)."""

from __future__ import annotations

import onnx

from onnxprune.passes.base import Pass, PassResult, PruneContext
from onnxprune.passes.slicing import slice_params


class SliceChannelParamsPass(Pass):
    consistent = False
    name = "slice_channel_params"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        return PassResult(model, slice_params(model, ctx, {"param"}))
