"""Run the full ONNX checker (never modifies the model; raises on an invalid one)."""

from __future__ import annotations

import onnx

from onnxprune.modelio import TWO_GB
from onnxprune.passes.base import Pass, PassResult, PruneContext


class CheckModelPass(Pass):
    name = "check_model"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        if model.ByteSize() <= TWO_GB:
            onnx.checker.check_model(model, full_check=True)
        return PassResult(model, False)
