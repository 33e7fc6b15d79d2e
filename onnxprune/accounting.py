"""What a plan will remove, computed from the analysis alone (no rewrite): the parameter
count after pruning, including the copies made when a shared weight is sliced two ways."""

from __future__ import annotations

import math
from collections import defaultdict

import onnx

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex
from onnxprune.passes import PruneContext
from onnxprune.plan import Plan


def predicted_params(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> int:
    """Parameters of the pruned model, predicted from the plan."""
    index = GraphIndex(model)
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    kept_dims: dict[tuple[str, int], dict[int, tuple[int, int]]] = defaultdict(dict)
    for ref in analysis.params:
        kept_dims[(ref.node, ref.slot)][ref.axis] = (len(ref.elems), ctx.kept_count(ref.elems))
    total = 0
    for name in index.initializers:
        users = index.users(name)
        if not users:
            continue
        shape = index.const_shape(name) or ()
        variants = set()
        for node, slot in users:
            dims = list(shape)
            for axis, (_, kept) in kept_dims.get((node.name, slot), {}).items():
                dims[axis] = kept
            variants.add(tuple(dims))
        total += sum(math.prod(v) for v in variants)
    return total
