"""Run the full ONNX checker (never modifies the model; raises on an invalid one)."""

from __future__ import annotations

import onnx

from onnxprune.io.modelio import light_copy
from onnxprune.rewrite.base import Pass, PassResult, PruneContext


class CheckModelPass(Pass):
    name = "check_model"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        # on the light copy: the weights are not serialised, their sizes are checked by light_copy
        onnx.checker.check_model(light_copy(model, check_sizes=True), full_check=True)
        return PassResult(model, False)
