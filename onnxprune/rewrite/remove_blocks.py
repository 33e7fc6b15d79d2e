"""Remove residual blocks (depth pruning): ``y = Add(x, f(x))`` becomes ``y = x``.

Every reader of the Add's output ``y`` reads the skip ``x`` instead; when ``y`` is a graph
output, the Add becomes ``Identity(x)`` so the output keeps its name. The Add and the
branch ``f`` are left unread, and ``remove_dead_nodes`` drops them with the weights only it
read; weights it shares with kept nodes (a tied embedding) stay as they are, never sliced
or copied. Which Adds qualify is ``analysis.blocks.find_blocks``'s decision, made on the
graph as this pass finds it (the first pass of the pipeline: the original graph).

Idempotent: an Add that nothing reads any more, or is gone, or became the Identity, is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from onnxprune.analysis.blocks import ResidualBlock, blocks_by_name
from onnxprune.analysis.removal import Removal
from onnxprune.graph import GraphIndex
from onnxprune.rewrite.base import Pass, PassResult


class RemoveBlocksPass(Pass):
    name = "remove_blocks"

    def __init__(self, blocks: Sequence[str]) -> None:
        self.blocks = tuple(blocks)

    def call(self, model: onnx.ModelProto, removal: Removal) -> PassResult:
        index = GraphIndex(model)
        outputs = set(index.graph_outputs)
        present = [name for name in self.blocks if name in index.nodes and index.nodes[name].op_type == "Add"
                   and _still_read(index, index.nodes[name].output[0], outputs)]  # bypassed already: nothing to do
        if not present:
            return PassResult(model, False)
        return PassResult(model, bypass_blocks(index, blocks_by_name(model, present, index)))


def bypass_blocks(index: GraphIndex, blocks: Sequence[ResidualBlock]) -> bool:
    """Rewire the readers of each block's output to its skip (an Add writing a graph output
    becomes ``Identity(skip)``); True when anything changed. ``index`` is of the graph edited."""
    outputs = set(index.graph_outputs)
    rename = {block.output: block.skip for block in blocks}  # nested: a skip may be a removed output
    modified = False
    for block in blocks:
        skip = _resolve(block.skip, rename)
        if block.output in outputs:
            node = index.nodes[block.add]
            node.op_type = "Identity"
            del node.input[:]
            node.input.append(skip)
            del node.attribute[:]
            modified = True
        for user, slot in index.users(block.output):
            user.input[slot] = skip
            modified = True
    return modified


def _resolve(name: str, rename: dict[str, str]) -> str:
    while name in rename:
        name = rename[name]
    return name


def _still_read(index: GraphIndex, tensor: str, outputs: set[str]) -> bool:
    """Whether ``tensor`` is a graph output or read by a node (a bypassed block's Add is not)."""
    return tensor in outputs or bool(index.users(tensor))
