"""Run the full ONNX checker (never modifies the model; raises on an invalid one)."""

from __future__ import annotations

import onnx

from onnxprune.modelio import LIGHT_THRESHOLD, light_copy, weight_bytes
from onnxprune.passes.base import Pass, PassResult, PruneContext


class CheckModelPass(Pass):
    name = "check_model"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        big = weight_bytes(model) > LIGHT_THRESHOLD  # checked without serialising the weights
        onnx.checker.check_model(light_copy(model) if big else model, full_check=True)
        return PassResult(model, False)
