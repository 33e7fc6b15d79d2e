"""Residual blocks: ``y = Add(x, f(x))`` whose branch ``f`` can go, leaving ``y = x``.

Depth pruning (ShortGPT, SLEB) removes whole residual branches: a decoder layer's attention
or MLP sub-block, a ResNet basic block. A branch is offered only when removing it is a local
edit that changes nothing else:

- the ``Add`` reads two computed float tensors, the skip ``x`` and the branch output ``f(x)``,
  and writes a tensor of the skip's shape (no broadcasting from the branch side);
- every node between ``x`` and ``f(x)`` (reads ``x`` directly or through other such nodes, and
  leads to ``f(x)``) is *exclusive* to the branch: nothing outside the branch reads its outputs
  and none is a graph output. Those nodes, and the side computations only they read (a shape
  of ``x``, a cast of a shared constant), are the branch: ``nodes``. Side inputs read by other
  nodes too (rotary cos / sin, the causal mask, a tied weight) stay;
- the branch holds no control flow (If / Loop / Scan) and does some work (parameters or MACs).

A block is named by its ``Add`` node. Removing it rewires the Add's readers to ``x``
(``rewrite.remove_blocks``) and dead-node removal drops the branch; a weight the branch
shares with kept nodes is never sliced or copied. ``params`` counts only the weights that
nothing outside the branch reads; ``macs`` the branch nodes' MACs (``analysis.flops``).

Nested blocks (a branch holding another block's Add) are both offered; their savings
overlap, so costs of a set of blocks are computed over the union of their nodes
(``removed_nodes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxprune.analysis.flops import FLOAT_TYPES, node_macs, parameter_count
from onnxprune.graph import GraphIndex, _has_subgraph, subgraph_inputs

if TYPE_CHECKING:
    from onnxprune.analysis.accounting import CostModel
    from onnxprune.analysis.result import Analysis


@dataclass(frozen=True)
class ResidualBlock:
    """One removable residual branch ``output = Add(skip, branch)``."""

    add: str  # the Add node's name: the block's id in plans
    skip: str  # the tensor that stays (x)
    branch: str  # the branch output f(x)
    output: str  # the Add's output y
    nodes: tuple[str, ...]  # the branch's nodes (removed with it), in graph order
    params: int  # parameters only the branch reads
    macs: int  # multiply-accumulates of the branch's nodes

    def to_dict(self) -> dict:
        return {"add": self.add, "skip": self.skip, "branch": self.branch, "nodes": len(self.nodes),
                "params": self.params, "macs": self.macs}


def find_blocks(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[ResidualBlock]:
    """Every removable residual branch of ``model`` (a prepared model with shapes), in graph order."""
    index = index or GraphIndex(model)
    order = {n.name: k for k, n in enumerate(model.graph.node)}
    outputs = set(index.graph_outputs)
    live = _live_nodes(model)  # an exporter may leave nodes nothing reads: they keep no branch alive
    blocks = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or node.name not in live:
            continue
        for slot in (0, 1):
            block = _block_at(index, node, slot, outputs, order, live)
            if block is not None:
                blocks.append(block)
                break
    return blocks


def _block_at(index: GraphIndex, add: onnx.NodeProto, skip_slot: int, outputs: set[str],
              order: dict[str, int], live: set[str]) -> ResidualBlock | None:
    """The block of ``add`` with input ``skip_slot`` as the skip, or None when it is not one."""
    skip, branch = add.input[skip_slot], add.input[1 - skip_slot]
    if not skip or not branch or skip == branch or index.is_const(skip) or index.is_const(branch):
        return None
    if branch not in index.producer or index.elem_type(skip) not in FLOAT_TYPES:
        return None
    x_shape, y_shape = index.shape(skip), index.shape(add.output[0])
    if x_shape is None or y_shape is None or x_shape != y_shape or None in x_shape:
        return None
    dead = _exclusive_nodes(index, branch, outputs, live)
    between = _between(index, skip, branch)
    if not between or not between <= dead:
        return None
    nodes = [index.nodes[name] for name in dead]
    if any(_has_subgraph(n) for n in nodes):
        return None
    params = _exclusive_params(index, dead)
    macs = sum(node_macs(index, n) for n in nodes)
    if not params and not macs:
        return None
    return ResidualBlock(add=add.name, skip=skip, branch=branch, output=add.output[0],
                         nodes=tuple(sorted(dead, key=order.__getitem__)), params=params, macs=macs)


def _exclusive_nodes(index: GraphIndex, branch: str, outputs: set[str], live: set[str]) -> set[str]:
    """The live nodes that become dead once the Add stops reading ``branch`` (one read less;
    readers that are not live do not count)."""

    def readers(tensor: str) -> int:
        return sum(1 for user, _ in index.users(tensor) if user.name in live)

    left: dict[str, int] = {branch: readers(branch) - 1}
    dead: set[str] = set()
    stack = [branch]
    while stack:
        tensor = stack.pop()
        producer = index.producer.get(tensor)
        if producer is None or producer.name in dead:
            continue
        if any(o and (o in outputs or left.setdefault(o, readers(o)) > 0) for o in producer.output):
            continue
        dead.add(producer.name)
        for name in producer.input:
            if name:
                left[name] = left.setdefault(name, readers(name)) - 1
                if left[name] == 0:
                    stack.append(name)
    return dead


def _between(index: GraphIndex, skip: str, branch: str) -> set[str]:
    """Nodes on a path from ``skip`` to ``branch`` (reading ``skip``, directly or not, and
    leading to ``branch``); empty when ``branch`` does not depend on ``skip``."""
    memo: dict[str, bool] = {}
    stack = [index.producer[branch]]
    while stack:  # iterative post-order: a node depends on skip when one of its inputs does
        node = stack[-1]
        if node.name in memo:
            stack.pop()
            continue
        pending = [index.producer[i] for i in node.input
                   if i and i != skip and i in index.producer and index.producer[i].name not in memo]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        memo[node.name] = any(i == skip or (i in index.producer and memo[index.producer[i].name])
                              for i in node.input if i)
    return {name for name, depends in memo.items() if depends}


def _exclusive_params(index: GraphIndex, nodes: set[str]) -> int:
    """Parameters of the initializers that only ``nodes`` read (``flops.parameter_count``: float
    weights, and quantized ones as the float weights they stand for)."""
    seen: set[str] = set()
    total = 0
    for name in nodes:
        for inp in index.nodes[name].input:
            if inp in seen or inp not in index.initializers:
                continue
            seen.add(inp)
            if all(u.name in nodes for u, _ in index.users(inp)):
                total += parameter_count(index, inp)
    return total


def removed_nodes(blocks: Iterable[ResidualBlock]) -> set[str]:
    """The nodes a set of blocks removes (their branches, and the Adds)."""
    out: set[str] = set()
    for b in blocks:
        out.update(b.nodes)
        out.add(b.add)
    return out


def blocks_by_name(model: onnx.ModelProto, names: Sequence[str],
                   index: GraphIndex | None = None) -> list[ResidualBlock]:
    """The offered blocks named ``names`` (Add nodes); a PlanError names one that is not."""
    from onnxprune.errors import PlanError

    offered = {b.add: b for b in find_blocks(model, index)}
    missing = [n for n in names if n not in offered]
    if missing:
        raise PlanError(f"node '{missing[0]}' is not a removable residual block (an Add of x and a branch "
                        "f(x) that nothing else reads; `onnxprune analyze --wide` lists them)")
    return [offered[n] for n in names]


def block_cost_model(model: onnx.ModelProto, analysis: Analysis, removed: Sequence[ResidualBlock]) -> CostModel:
    """``accounting.CostModel`` of the model with the ``removed`` blocks gone: their nodes, and
    what only they read (a rotary table once every attention block is gone), cost no MACs and
    no parameters; a weight also read by a kept node stays, whole. Channel removals are then
    costed on what is left, exactly as the rewrite leaves it."""
    from dataclasses import replace

    from onnxprune.analysis.accounting import CostModel
    from onnxprune.rewrite.remove_blocks import bypass_blocks

    stub = onnx.ModelProto()  # the structure, and weights as shapes only: the cost model reads no values
    stub.opset_import.extend(model.opset_import)
    g = stub.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    g.initializer.extend(onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
                         for t in model.graph.initializer)
    bypass_blocks(GraphIndex(stub), removed)
    live = _live_nodes(stub)
    kept = [n for n in g.node if n.name in live]
    del g.node[:]
    g.node.extend(kept)
    return CostModel(stub, replace(analysis, node_macs={k: v for k, v in analysis.node_macs.items() if k in live},
                                   params=[p for p in analysis.params if p.node in live]))


def _live_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes a graph output depends on (the legacy exporter leaves unused Shape
    nodes on attention tensors: they must not keep a branch alive)."""
    index = GraphIndex(model)
    live: set[str] = set()
    stack = [index.producer[o] for o in index.graph_outputs if o in index.producer]
    while stack:
        node = stack.pop()
        if node.name in live:
            continue
        live.add(node.name)
        reads = set(node.input) | (subgraph_inputs(node) if _has_subgraph(node) else set())
        stack.extend(index.producer[i] for i in reads if i in index.producer)
    return live
