"""The masked reference: the original model with the plan's removed channels zeroed
where consumers read them (a 0/1 Mul before each mixing input), not at producers.

A pruned model must compute exactly what this model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex
from onnxprune.rewrite import PruneContext
from onnxprune.plan import Plan


def masked_model(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    """A copy of ``model`` with 0/1 masks inserted before every consumer of removed channels."""
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    inserts: dict[str, list[onnx.NodeProto]] = {}
    for k, ref in enumerate(analysis.consumers):
        keep = ctx.kept(ref.elems)
        if keep.all():
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
    insert_before(out.graph, inserts)
    return out


def insert_before(graph: onnx.GraphProto, inserts: dict[str, list[onnx.NodeProto]]) -> None:
    """Put each list of ``inserts`` (consumer node name -> new nodes) right before its consumer."""
    nodes = []
    for node in graph.node:
        nodes.extend(inserts.get(node.name, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def random_masking_plan(analysis: Analysis, seed: int, max_ratio: float = 0.6) -> Plan:
    """A plan removing a random, non-empty subset (at least one unit kept) of every prunable group."""
    rng = np.random.default_rng(seed)
    keep, sizes = {}, {}
    for g in analysis.prunable_groups:
        n_keep = int(rng.integers(max(1, int(np.ceil(g.size * (1 - max_ratio)))), g.size))
        keep[g.id] = tuple(sorted(rng.choice(g.size, size=n_keep, replace=False).tolist()))
        sizes[g.id] = g.size
    return Plan(fingerprint=analysis.fingerprint, keep=keep, sizes=sizes, criterion="random-test")
