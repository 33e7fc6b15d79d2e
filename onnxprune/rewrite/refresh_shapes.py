"""Drop every intermediate shape annotation and infer them again (no stale shapes)."""

from __future__ import annotations

import onnx

from onnxprune.rewrite.base import Pass, PassResult, PruneContext
from onnxprune.prepare.normalize import infer_shapes


class RefreshShapesPass(Pass):
    name = "refresh_shapes"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        before = [vi.SerializeToString(deterministic=True) for vi in model.graph.value_info]
        infer_shapes(model)
        after = [vi.SerializeToString(deterministic=True) for vi in model.graph.value_info]
        return PassResult(model, before != after)
