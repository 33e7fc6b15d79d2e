"""Drop every intermediate shape annotation and infer them again (no stale shapes)."""

from __future__ import annotations

import logging

import onnx

from onnxprune.io.modelio import ORT_DEFAULT_DOMAIN_OPS, light_copy
from onnxprune.rewrite.base import ModelPass, PassResult
from onnxprune.prepare.normalize import infer_shapes

log = logging.getLogger(__name__)


class RefreshShapesPass(ModelPass):
    name = "refresh_shapes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        before = [vi.SerializeToString(deterministic=True) for vi in model.graph.value_info]
        infer_shapes(model)
        _fill_fused_shapes(model)
        after = [vi.SerializeToString(deterministic=True) for vi in model.graph.value_info]
        return PassResult(model, before != after)


def _missing_fused_shapes(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(names listed with a shape, outputs of onnxruntime's ops without one)."""
    listed = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
              if vi.type.tensor_type.HasField("shape")}  # onnx's inference may list a type without a shape
    missing = {o for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type in ORT_DEFAULT_DOMAIN_OPS
               for o in n.output if o and o not in listed}
    return listed, missing


def _fill_fused_shapes(model: onnx.ModelProto) -> None:
    """Outputs of onnxruntime's fused ops (onnx's inference does not know them), and what
    follows them, get their shapes as ``load`` gives them (the shape probe: two onnxruntime
    runs), so that a pruned model is counted as it is after a reload; else from onnxruntime's
    symbolic shape inference (which does not know FusedConv, FusedGemm); best effort (left
    without shapes when both fail)."""
    if not _missing_fused_shapes(model)[1]:
        return
    from onnxprune.prepare.shape_probe import annotate, probe_shapes

    annotate(model, probe_shapes(model))
    listed, missing = _missing_fused_shapes(model)
    if not missing:
        return
    try:
        inferred = _symbolic_shapes(model)
    except Exception as exc:  # noqa: BLE001 - shapes of fused outputs are a nicety (cost accounting)
        log.info("no shapes for onnxruntime's fused ops: %s", exc)
        return
    # what follows them too (onnx's inference stopped there); shape-less entries are replaced
    filled = [vi for vi in inferred.graph.value_info if vi.name not in listed and vi.type.tensor_type.HasField("shape")]
    names = {vi.name for vi in filled}
    kept = [vi for vi in model.graph.value_info if vi.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept + filled)


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference, what it inferred even when incomplete (its
    ``infer_shapes`` would then write ``sym_shape_infer_temp.onnx`` into the working
    directory and raise): its own steps, run here."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    sym = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    sym._preprocess(light_copy(model))
    while sym.run_:
        sym._infer_impl()
    sym._update_output_from_vi()
    return sym.out_mp_
