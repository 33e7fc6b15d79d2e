"""Run the full ONNX checker (never modifies the model; raises on an invalid one)."""

from __future__ import annotations

import onnx

from onnxprune.modelio import is_large
from onnxprune.passes.base import Pass, PassResult, PruneContext


class CheckModelPass(Pass):
    name = "check_model"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        if not is_large(model):  # a >2 GB model is checked from its file after saving
            onnx.checker.check_model(model, full_check=True)
        return PassResult(model, False)
