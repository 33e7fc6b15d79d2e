"""Remove nodes whose outputs nothing reads (and that are not graph outputs), then
initializers no node reads (with their graph-input entries, in IR < 4 models)."""

from __future__ import annotations

import onnx

from onnxprune.graph import GraphIndex, drop_initializers
from onnxprune.rewrite.base import ModelPass, PassResult


class RemoveDeadNodesPass(ModelPass):
    name = "remove_dead_nodes"

    def call(self, model: onnx.ModelProto) -> PassResult:
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
        modified |= drop_initializers(g, set(index.uses) | set(index.graph_outputs))
        return PassResult(model, modified)
