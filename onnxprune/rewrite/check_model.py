"""Run the full ONNX checker (never modifies the model; raises on an invalid one)."""

from __future__ import annotations

import onnx

from onnxprune.io.modelio import checker_view, light_copy
from onnxprune.rewrite.base import ModelPass, PassResult


class CheckModelPass(ModelPass):
    name = "check_model"

    def call(self, model: onnx.ModelProto) -> PassResult:
        # on the light copy: the weights are not serialised, their sizes are checked by light_copy
        # ops onnxruntime runs in the default domain (SimplifiedLayerNormalization) are left to it
        onnx.checker.check_model(checker_view(model, light_copy(model, check_sizes=True)), full_check=True)
        return PassResult(model, False)
