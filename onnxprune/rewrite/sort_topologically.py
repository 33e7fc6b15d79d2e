"""Order nodes so every input is produced before it is read (stable Kahn's algorithm)."""

from __future__ import annotations

import heapq

import onnx

from onnxprune.graph import GraphIndex
from onnxprune.rewrite.base import ModelPass, PassResult


class SortTopologicallyPass(ModelPass):
    name = "sort_topologically"

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        nodes = list(g.node)
        index = GraphIndex(model)
        position = {id(n): i for i, n in enumerate(nodes)}
        waiting = [0] * len(nodes)
        for i, n in enumerate(nodes):
            waiting[i] = len({index.producer[x].name for x in _inputs(n) if x in index.producer})
        ready = [i for i, w in enumerate(waiting) if w == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for out in nodes[i].output:
                for user in {id(u): u for u, _ in index.users(out)}.values():
                    j = position[id(user)]
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        heapq.heappush(ready, j)
        if len(order) != len(nodes):
            raise ValueError("graph has a cycle")
        if order == list(range(len(nodes))):
            return PassResult(model, False)
        del g.node[:]
        g.node.extend(nodes[i] for i in order)
        return PassResult(model, True)


    def ensures(self, model: onnx.ModelProto) -> None:
        """Every node input is a graph input, an initializer or an earlier node's output."""
        g = model.graph
        known = {x.name for x in g.input} | {t.name for t in g.initializer}
        for node in g.node:
            late = sorted(x for x in _inputs(node) if x not in known)
            if late:
                raise ValueError(f"node '{node.name}' reads '{late[0]}' before it is produced")
            known.update(node.output)


def _inputs(node: onnx.NodeProto) -> set[str]:
    return {x for x in node.input if x}
