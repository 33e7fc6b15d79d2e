"""Slice the output side of weighted ops: Conv/ConvTranspose/Gemm/MatMul weight rows and biases."""

from __future__ import annotations

import onnx

from onnxprune.passes.base import Pass, PassResult, PruneContext
from onnxprune.passes.slicing import slice_params


class SliceProducerWeightsPass(Pass):
    consistent = False
    name = "slice_producer_weights"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        return PassResult(model, slice_params(model, ctx, {"producer"}))
