"""Remove nodes whose outputs nothing reads (and that are not graph outputs), then
initializers no node reads."""

from __future__ import annotations

import onnx

from onnxprune.graph import GraphIndex
from onnxprune.passes.base import Pass, PassResult, PruneContext


class RemoveDeadNodesPass(Pass):
    name = "remove_dead_nodes"

    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        g = model.graph
        modified = False
        while True:
            index = GraphIndex(model)
            outputs = set(index.graph_outputs)
            live = [n for n in g.node if any(o in outputs or index.users(o) for o in n.output if o)]
            if len(live) == len(g.node):
                break
            del g.node[:]
            g.node.extend(live)
            modified = True
        index = GraphIndex(model)
        used = set(index.uses) | set(index.graph_outputs)
        kept = [t for t in g.initializer if t.name in used]
        if len(kept) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(kept)
            modified = True
        return PassResult(model, modified)
