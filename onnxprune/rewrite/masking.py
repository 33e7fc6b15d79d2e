"""The masked reference: the original model with the plan's removed channels zeroed
where consumers read them (a 0/1 Mul before each mixing input), not at producers, and
each removed residual block's branch multiplied by 0 where its Add reads it.

A pruned model must compute exactly what this model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis import Analysis
from onnxprune.analysis.blocks import ResidualBlock, blocks_by_name
from onnxprune.analysis.rules.quant import analysis_index, expand_weight_refs
from onnxprune.graph import GraphIndex, attr
from onnxprune.io.external import read_tensor
from onnxprune.analysis.removal import Removal
from onnxprune.plan import Plan


def masked_model(model: onnx.ModelProto, analysis: Analysis, plan: Plan, *,
                 quantized: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` with 0/1 masks inserted before every consumer of removed channels.

    ``quantized``: where a consumer's weight is dequantised from constants (QDQ), its
    removed input channels are zeroed in the quantized weight instead (code := zero point,
    which dequantises to exactly 0), so the reference stays a QDQ graph onnxruntime runs
    in integers the way it runs the pruned model."""
    removal = Removal(analysis, plan.removed_units(analysis))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    zeroed = _zero_quantized_inputs(out, analysis, removal, index) if quantized else set()
    blocks = blocks_by_name(out, plan.removed_blocks, index) if plan.removed_blocks else []
    inserts: dict[str, list[onnx.NodeProto]] = {}
    for k, ref in enumerate(analysis.consumers):
        keep = removal.kept(ref.elems)
        if keep.all() or ref.node in zeroed:
            continue
        node = index.nodes[ref.node]
        src = node.input[ref.slot]
        rank = len(index.shape(src) or ())
        shape = [1] * rank
        shape[ref.axis] = len(keep)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(index.elem_type(src) or onnx.TensorProto.FLOAT)
        mask_name, masked = f"__mask{k}", f"{src}__masked{k}"
        out.graph.initializer.append(numpy_helper.from_array(keep.astype(dtype).reshape(shape), mask_name))
        inserts.setdefault(node.name, []).append(
            onnx.helper.make_node("Mul", [src, mask_name], [masked], name=f"__mask_mul{k}"))
        node.input[ref.slot] = masked
    _mask_blocks(out, blocks, index, inserts)
    insert_before(out.graph, inserts)
    return out


def _zero_quantized_inputs(model: onnx.ModelProto, analysis: Analysis, removal: Removal,
                           index: GraphIndex) -> set[str]:
    """Zero the removed input channels of QDQ weights in their constants (quantized codes
    set to the zero point; a float weight under a QuantizeLinear set to 0); the names of
    the nodes reading those weights."""
    zeroed: set[str] = set()
    inits = {t.name: t for t in model.graph.initializer}
    for ref in expand_weight_refs(analysis.params, analysis_index(model)):
        node = index.nodes[ref.node]
        if ref.role != "consumer" or ref.slot != 0 or node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            continue
        drop = ~removal.kept(ref.elems)
        if not drop.any():
            continue
        codes = read_tensor(inits[node.input[0]], model).copy()  # a mapped weight too
        fill = np.zeros((), codes.dtype)
        if node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[2]:
            zp = read_tensor(inits[node.input[2]], model)
            shape = [1] * codes.ndim
            if zp.size > 1:
                shape[int(attr(node, "axis", 1)) % codes.ndim] = zp.size
            fill = np.broadcast_to(zp.reshape(shape if zp.size > 1 else ()), codes.shape)
        where = [slice(None)] * codes.ndim
        where[ref.axis] = np.flatnonzero(drop)
        codes[tuple(where)] = np.broadcast_to(fill, codes.shape)[tuple(where)]
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(codes, node.input[0]))
        out = node.output[0]
        while True:  # up the chain (Q -> DQ) to the node reading the weight
            users = index.users(out)
            if len(users) != 1 or users[0][0].op_type not in ("DequantizeLinear", "QuantizeLinear"):
                zeroed.update(user.name for user, _ in users)
                break
            out = users[0][0].output[0]
    return zeroed


def _mask_blocks(model: onnx.ModelProto, blocks: list[ResidualBlock], index: GraphIndex,
                 inserts: dict[str, list[onnx.NodeProto]]) -> None:
    """``Add(x, f(x))`` -> ``Add(x, 0 * f(x))`` for each removed block."""
    for k, block in enumerate(blocks):
        node = index.nodes[block.add]
        slot = 1 if node.input[0] == block.skip else 0
        src = node.input[slot]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(index.elem_type(block.branch) or onnx.TensorProto.FLOAT)
        zero, masked = f"__block_zero{k}", f"{src}__block_masked{k}"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=dtype), zero))
        inserts.setdefault(node.name, []).append(
            onnx.helper.make_node("Mul", [src, zero], [masked], name=f"__block_mask_mul{k}"))
        node.input[slot] = masked


def insert_before(graph: onnx.GraphProto, inserts: dict[str, list[onnx.NodeProto]]) -> None:
    """Put each list of ``inserts`` (consumer node name -> new nodes) right before its consumer."""
    nodes = []
    for node in graph.node:
        nodes.extend(inserts.get(node.name, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
